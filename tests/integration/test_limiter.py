"""The shared Redis rate limiter against a real Redis: slots, per-chat budgets, pauses, the instant
lane's priority."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
import redis.asyncio as aioredis
from clarion.streams import bot_pause_key
from clarion.telegram.limiter import Grant, Priority, RateLimiter, RateLimits

pytestmark = pytest.mark.integration

BOT = 4242


async def test_two_processes_share_one_overall_budget_with_no_window_over_the_limit(
        redis: aioredis.Redis) -> None:
    limits = RateLimits.from_config({"rateLimits": {"globalPerSecond": 100}})
    # no horizon: each reserves 30 slots at once, 300 in all, up to 3 s ahead
    first = RateLimiter(redis, BOT, limits, margin=0.01, horizon=None)
    second = RateLimiter(redis, BOT, limits, margin=0.01, horizon=None)
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
    limiter = RateLimiter(redis, BOT, limits, horizon=None)  # free slots 1 s apart, reserved 2 s ahead
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
    assert not group_again.granted and 3.1 < group_again.delay <= 3.2  # (60 + 3) s / 20, 1% margin


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


# --- the instant lane's priority ------------------------------------------------------------------------

FAST = RateLimits.from_config({"rateLimits": {"globalPerSecond": 100}})
HORIZON = 0.1  # seconds: about 10 slots at 100/s
SLOT = 1.01 / 100  # one slot of FAST with the default margin


def _within(delay: float, seconds: float) -> bool:
    """`delay` is at most `seconds`, to the microsecond the limiter counts in."""
    return delay <= seconds + 1e-6


async def test_normal_sends_hold_slots_at_most_the_horizon_ahead_and_an_instant_send_comes_next(
        redis: aioredis.Redis) -> None:
    limiter = RateLimiter(redis, BOT, FAST, horizon=HORIZON)
    campaign = await limiter.reserve(list(range(1, 101)))
    granted = [g for g in campaign if g.granted]
    busy = campaign[len(granted):]
    assert 0 < len(granted) < 100
    assert all(_within(g.delay, HORIZON) for g in granted)
    assert busy and all(g.busy and not g.granted for g in busy)
    # "busy" says when to ask again: the moment the next slot is exactly the horizon ahead
    assert abs(busy[0].at + HORIZON - (granted[-1].at + SLOT)) < 1e-5

    instant = (await limiter.reserve([1000], priority=Priority.INSTANT))[0]
    assert instant.granted and not instant.busy
    assert _within(instant.delay, HORIZON + SLOT)
    assert abs(instant.at - (granted[-1].at + SLOT)) < 1e-5  # the very next slot after the campaign's

    # the campaign yields: its next slot comes after the instant one
    again = await limiter.reserve([101])
    assert again[0].busy or again[0].at >= instant.at + SLOT - 1e-6


async def test_without_priority_an_instant_send_queues_behind_every_slot_reserved_ahead(
        redis: aioredis.Redis) -> None:
    limiter = RateLimiter(redis, BOT, FAST, horizon=None)
    campaign = await limiter.reserve(list(range(1, 101)))
    assert all(g.granted for g in campaign)
    instant = (await limiter.reserve([1000], priority=Priority.INSTANT))[0]
    assert instant.granted
    assert instant.delay >= 99 * SLOT  # behind all 100 campaign slots: about a second at 100/s


async def test_paid_broadcasts_have_no_horizon_on_their_own_budget(redis: aioredis.Redis) -> None:
    limiter = RateLimiter(redis, BOT, FAST, horizon=HORIZON)
    paid = await limiter.reserve(list(range(1, 201)), paid=True)
    assert all(g.granted for g in paid)


async def test_a_chats_own_budget_holds_across_classes(redis: aioredis.Redis) -> None:
    limits = RateLimits.from_config(
        {"rateLimits": {"globalPerSecond": 1000, "perChatPerSecond": 1, "perGroupPerMinute": 20}})
    campaign = RateLimiter(redis, BOT, limits)
    worker = RateLimiter(redis, BOT, limits)
    assert all(g.granted for g in await campaign.reserve([7, -100]))
    private, group = await worker.reserve([7, -100], priority=Priority.INSTANT)
    assert not private.granted and not private.busy and 0.9 < private.delay <= 1.02
    assert not group.granted and not group.busy and 3.1 < group.delay <= 3.2


async def test_a_bot_kept_busy_by_several_processes_gives_each_instant_send_a_slot_within_the_horizon(
        redis_url: str) -> None:
    """Three campaign processes keep asking for slots; a fourth process asks for instant ones. Every
    process has its own connection, as separate pods would. Bounds are in the limiter's own time."""
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(4)]
    campaigns = [RateLimiter(c, BOT, FAST, horizon=HORIZON) for c in clients[:3]]
    worker = RateLimiter(clients[3], BOT, FAST, horizon=HORIZON)
    normal_slots: list[float] = []
    instant: list[Grant] = []
    stop = asyncio.Event()
    chats = itertools.count(1)

    async def saturate(limiter: RateLimiter) -> None:
        while not stop.is_set():
            grants = await limiter.reserve([next(chats) for _ in range(8)])
            normal_slots.extend(g.at for g in grants if g.granted)
            if grants[-1].busy:
                await asyncio.sleep(grants[-1].delay)

    try:
        senders = [asyncio.create_task(saturate(limiter)) for limiter in campaigns]
        while len(normal_slots) < 30:  # the horizon is full
            await asyncio.sleep(0.01)
        for n in range(40):
            instant.append((await worker.reserve([1_000_000 + n], priority=Priority.INSTANT))[0])
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.gather(*senders)
    finally:
        for client in clients:
            await client.aclose()

    assert all(g.granted for g in instant)
    assert all(_within(g.delay, HORIZON + SLOT) for g in instant)
    assert max(g.delay for g in instant) > HORIZON / 2  # they did arrive at a busy bot
    slots = sorted([*normal_slots, *(g.at for g in instant)])
    assert min(b - a for a, b in itertools.pairwise(slots)) >= SLOT - 1e-6
    assert max(sum(1 for t in slots if start <= t < start + 1.0) for start in slots) <= 100
