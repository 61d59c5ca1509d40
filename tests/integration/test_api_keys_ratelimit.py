"""The Redis-shared rate limit of API keys (`clarion.ratelimit.SharedRateLimit`): one budget for every
replica."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis
from clarion.ratelimit import SharedRateLimit
from clarion.streams import api_key_rate_key
from clarion_dev.testing.waiting import async_wait_for

pytestmark = pytest.mark.integration


async def test_two_limiters_on_separate_connections_share_one_budget(redis_url: str) -> None:
    a_client, b_client = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
    try:
        a, b = SharedRateLimit(a_client), SharedRateLimit(b_client)
        key = api_key_rate_key(1)
        answers = [await (a if i % 2 else b).allow(key, 60, 5) for i in range(12)]
    finally:
        await a_client.aclose()
        await b_client.aclose()
    allowed = [ok for ok, _ in answers]
    assert allowed == [True] * 5 + [False] * 7  # the burst of 5 once, whichever replica asks
    assert all(wait == 0.0 for ok, wait in answers if ok)
    assert all(0 < wait <= 1.0 for ok, wait in answers if not ok)  # one request per second at 60/min


async def test_retry_after_is_the_time_until_the_next_request_is_allowed(redis: aioredis.Redis) -> None:
    limit = SharedRateLimit(redis)
    key = api_key_rate_key(2)
    started = time.monotonic()
    first = await limit.allow(key, 6, 1)  # one request per 10 s, no burst
    second = await limit.allow(key, 6, 1)
    elapsed = time.monotonic() - started
    assert first == (True, 0.0)
    assert second[0] is False
    assert 10.0 - elapsed - 0.001 <= second[1] <= 10.0
    third = await limit.allow(key, 6, 1)  # a refusal spends nothing: the wait only shrinks
    assert third[0] is False and third[1] <= second[1]


async def test_a_request_is_allowed_again_once_retry_after_has_passed(redis: aioredis.Redis) -> None:
    limit = SharedRateLimit(redis)
    key = api_key_rate_key(3)
    assert (await limit.allow(key, 1200, 1))[0]  # one per 50 ms
    allowed, wait = await limit.allow(key, 1200, 1)
    assert not allowed and 0 < wait <= 0.05

    async def allowed_now() -> bool:
        return (await limit.allow(key, 1200, 1))[0]

    granted: bool = await async_wait_for(allowed_now, timeout=5, interval=0.01, what="the next slot")
    assert granted


async def test_keys_are_independent_and_expire_when_idle(redis: aioredis.Redis) -> None:
    limit = SharedRateLimit(redis)
    assert (await limit.allow(api_key_rate_key(4), 6, 1))[0]
    assert not (await limit.allow(api_key_rate_key(4), 6, 1))[0]
    assert (await limit.allow(api_key_rate_key(5), 6, 1))[0]
    assert 0 < await redis.pttl(api_key_rate_key(4)) <= 10_001


async def test_nonsense_limits_are_refused(redis: aioredis.Redis) -> None:
    limit = SharedRateLimit(redis)
    with pytest.raises(ValueError, match="rate_per_minute"):
        await limit.allow("k", 0, 1)
    with pytest.raises(ValueError, match="burst"):
        await limit.allow("k", 10, 0)


async def test_window_allows_at_most_the_limit_in_any_window_and_frees_as_the_oldest_ages_out(
        redis_url: str) -> None:
    a_client, b_client = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
    try:
        a, b = SharedRateLimit(a_client), SharedRateLimit(b_client)
        key = "tg:rl:1:group-removals:-100"
        answers = [await (a if i % 2 else b).allow_in_window(key, 3, 1.0) for i in range(6)]
        assert [ok for ok, _ in answers] == [True] * 3 + [False] * 3  # however many replicas ask
        assert all(0 < wait <= 1.0 for ok, wait in answers if not ok)
        assert 0 < await a_client.pttl(key) <= 2000  # the record goes with the window

        async def allowed_now() -> bool:
            return (await a.allow_in_window(key, 3, 1.0))[0]

        freed: bool = await async_wait_for(allowed_now, timeout=5, interval=0.01, what="a slot freed")
        assert freed
        assert not (await b.allow_in_window(key, 1, 1.0))[0]  # a smaller limit sees the same record
    finally:
        await a_client.aclose()
        await b_client.aclose()
