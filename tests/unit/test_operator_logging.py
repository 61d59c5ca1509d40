"""The operator's log keeps what a reader needs: kopf's per-tick timer successes are dropped."""

from __future__ import annotations

import logging

import pytest
from clarion_operator.startup import QuietTimers

pytestmark = pytest.mark.unit


def _record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("kopf.objects", level, __file__, 1, message, None, None)


def test_timer_successes_are_dropped_and_everything_else_passes() -> None:
    quiet = QuietTimers()
    assert not quiet.filter(_record(logging.INFO, "Timer 'scale_workers' succeeded."))
    assert quiet.filter(_record(logging.INFO, "Handler 'create_channel' succeeded."))
    assert quiet.filter(_record(logging.ERROR, "Timer 'scale_workers' failed with an exception. Will retry."))
    assert quiet.filter(_record(logging.WARNING, "Timer 'scale_workers' succeeded."))
