"""The webhook service's background loops (bulk expansion, event callbacks): stopping one gracefully."""

from __future__ import annotations

import asyncio
import contextlib


async def stop_within(task: asyncio.Task[None] | None, timeout: float) -> None:  # noqa: ASYNC109
    """Let `task` finish what it is doing for up to `timeout` seconds (its loop was told to stop); past
    that, cancel it and wait for the cancellation to land."""
    if task is None:
        return
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
