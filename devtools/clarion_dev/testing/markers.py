"""What a test's marker asks of a fixture (not a pytest plugin itself: the plugins import it)."""

from __future__ import annotations

from typing import Any

import pytest


def marker_kwargs(request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    """The keyword arguments of the test's `@pytest.mark.<name>(...)`, or {} without one: what a
    server fixture passes to its server."""
    marker = request.node.get_closest_marker(name)
    return dict(marker.kwargs) if marker is not None else {}
