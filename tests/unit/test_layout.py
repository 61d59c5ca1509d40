"""Repository rules that keep the import path sane."""

from __future__ import annotations

import operator
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def test_stdlib_operator_is_not_shadowed() -> None:
    assert Path(operator.__file__).parent == Path(sysconfig.get_paths()["stdlib"])


def test_no_import_path_entry_contains_a_directory_named_operator() -> None:
    for entry in sys.path:
        if entry and Path(entry).is_dir():
            assert not (Path(entry) / "operator").is_dir(), f"{entry}/operator shadows the stdlib"
