"""How fast a channel's mail goes out: `Pacer`, one awaitable that returns when the next send may
start, and `TokenBucket`, the process-local one used unless another is plugged in (a pacer shared in
Redis by every worker of a channel implements the same protocol).

`TokenBucket` is a GCRA: send slots are `1 / rate` seconds apart, and up to `burst` sends may start
at once after a quiet spell (burst 1: strictly spaced). `reserve()` takes the next slot and says
how long to wait for it; it never blocks, so concurrent callers get distinct slots in call order.
A caller cancelled while waiting leaves its slot unused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol


class Pacer(Protocol):
    async def wait(self) -> None:
        """Return when the next send may start."""


class TokenBucket:
    """`rate` sends per second, bursts of up to `burst`, on this process's clock."""

    def __init__(self, rate: float, *, burst: int = 1, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.interval = 1.0 / rate
        self._tolerance = (burst - 1) * self.interval
        self._clock = clock
        self._sleep = sleep
        self._tat = float("-inf")  # theoretical arrival time of the next send

    def reserve(self) -> float:
        """Take the next slot; the seconds until it starts (0 when it is free now)."""
        now = self._clock()
        tat = max(self._tat, now)
        self._tat = tat + self.interval
        return max(0.0, tat - self._tolerance - now)

    async def wait(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await self._sleep(delay)
