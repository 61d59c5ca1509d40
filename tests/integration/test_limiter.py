"""The shared Redis rate limiter against a real Redis: slots, per-chat budgets, pauses."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
import redis.asyncio as aioredis
from clarion.streams import bot_pause_key
from clarion.telegram.limiter import RateLimiter, RateLimits

pytestmark = pytest.mark.integration

BOT = 4242


async def test_two_processes_share_one_overall_budget_with_no_window_over_the_limit(
        redis: aioredis.Redis) -> None:
    limits = RateLimits.from_config({"rateLimits": {"globalPerSecond": 100}})
    first = RateLimiter(redis, BOT, limits, margin=0.01)
    second = RateLimiter(redis, BOT, limits, margin=0.01)
    slots: list[float] = []
    for round_ in range(10):
        limiter = first if round_ % 2 else second
        grants = await limiter.reserve(list(range(round_ * 30 + 1, round_ * 30 + 31)))
        assert all(g.granted for g in grants)
        slots.extend(g.at for g in grants)
    assert slots == sorted(slots)
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert min(gaps) >= 0.0101 - 1e-6
    # 300 slots at 100/s: no 1-second window holds more than 100 of them (checked at every slot).
    assert max(sum(1 for t in slots if start <= t < start + 1.0) for start in slots) <= 100


async def test_paid_broadcast_has_its_own_budget(redis: aioredis.Redis) -> None:
    limits = RateLimits.from_config({"rateLimits": {"globalPerSecond": 1, "paidBroadcastPerSecond": 1000}})
    limiter = RateLimiter(redis, BOT, limits)
    free = await limiter.reserve([1, 2, 3])
    paid = await limiter.reserve([4, 5, 6], paid=True)
    assert [round(g.delay) for g in free] == [0, 1, 2]
    assert max(g.delay for g in paid) < 0.01


async def test_a_chat_gets_no_slot_before_its_own_budget_allows(redis: aioredis.Redis) -> None:
    limits = RateLimits.from_config(
        {"rateLimits": {"globalPerSecond": 1000, "perChatPerSecond": 1, "perGroupPerMinute": 20}})
    limiter = RateLimiter(redis, BOT, limits)
    first, again, group, group_again = await limiter.reserve([7, 7, -100, -100])
    assert first.granted and first.delay < 0.01
    assert not again.granted and 0.9 < again.delay <= 1.02
    assert group.granted
    assert not group_again.granted and 2.9 < group_again.delay <= 3.1


async def test_a_pause_stops_every_process_until_it_ends(redis: aioredis.Redis) -> None:
    limits = RateLimits.from_config(None)
    here = RateLimiter(redis, BOT, limits)
    there = RateLimiter(redis, BOT, limits)
    await there.start()
    try:
        await here.pause(2.0)
        grants = await there.reserve([1, 2])
        assert [g.granted for g in grants] == [False, False]
        assert all(1.5 < g.delay <= 2.0 for g in grants)
        deadline = time.monotonic() + 5
        while there.paused_for() == 0:  # the announcement arrives over pub/sub
            assert time.monotonic() < deadline, "the pause was never announced"
            await asyncio.sleep(0.01)
        assert 1.5 < there.paused_for() <= 2.0
        await here.pause(0.5)  # a shorter pause never shortens a longer one
        assert await redis.pttl(bot_pause_key(BOT)) > 1000
    finally:
        await there.close()


async def test_acquire_waits_out_the_pause(redis: aioredis.Redis) -> None:
    limiter = RateLimiter(redis, BOT, RateLimits.from_config(None))
    await limiter.pause(0.3)
    waited = await limiter.acquire(5)
    assert waited >= 0.25
    assert await redis.pttl(bot_pause_key(BOT)) < 0
