"""Wait for a condition with a deadline instead of sleeping.

    obj = wait_for(lambda: read_job_if_complete(), timeout=30, what="job hello to complete")
    rows = await async_wait_for(fetch_rows, what="3 delivery rows")

The predicate is called every `interval` seconds until it returns a truthy value, which is returned.
At the deadline a WaitTimeout names `what`, the time waited and the last value seen. Exceptions raised
by the predicate propagate, except those listed in `ignore` (retried, and reported at the deadline).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold before the deadline."""


def _message(what: str, timeout: float, last: object, error: BaseException | None) -> str:
    text = f"timed out after {timeout:g}s waiting for {what}; last value: {last!r}"
    if error is not None:
        text += f"; last ignored error: {error!r}"
    return text


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 30,
    interval: float = 0.1,
    what: str = "the condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `predicate` until it returns something truthy; return that, or raise WaitTimeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except ignore as exc:
            error = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise WaitTimeout(_message(what, timeout, last, error))
        time.sleep(interval)


async def async_wait_for(
    predicate: Callable[[], T | Awaitable[T | None] | None],
    timeout: float = 30,  # noqa: ASYNC109 - same signature as wait_for; the deadline is ours
    interval: float = 0.1,
    what: str = "the condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Like wait_for, for event loops: `predicate` may be a plain function or a coroutine function."""
    deadline = time.monotonic() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            result = predicate()
            value: T | None = await result if inspect.isawaitable(result) else result
        except ignore as exc:
            error = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise WaitTimeout(_message(what, timeout, last, error))
        await asyncio.sleep(interval)
