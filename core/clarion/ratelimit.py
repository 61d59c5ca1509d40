"""A rate limit shared by every process through Redis: one GCRA decision in one Lua script.

GCRA (the generic cell rate algorithm) keeps one number per limited thing, its theoretical arrival
time (TAT): when the next request would be due if requests came exactly at the rate. A request is
allowed when it does not come more than `burst - 1` intervals before that time; allowing it moves the
TAT one interval on. So `burst` requests may come at once, and after that one per `60 / rate` seconds.
A refused request changes nothing and learns when the next one will be allowed.

The clock is Redis's (`TIME`), so every replica decides against the same clock and the same state,
and the decision is atomic: two webhook replicas share one budget exactly. The key expires when the
TAT has passed, so an idle limit costs no memory. One round trip per decision, no retry loop.

`allow_in_window` is the strict cousin for slow, audited actions (a group's inactivity removals): at
most `limit` in any `window` seconds, kept as a sorted set of the allowed moments (Redis's clock),
pruned on each call and expiring one window after the last. GCRA would let up to 2·limit - 1 through in
one window after an idle spell; this never lets more than `limit`.
"""

from __future__ import annotations

import math
import secrets

import redis.asyncio as aioredis

_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local allow_at = tat - (burst - 1) * interval
if now < allow_at then return {0, allow_at - now} end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.floor((next_tat - now) / 1000) + 1)
return {1, 0}
"""


_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(oldest[2]) + window - now}
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.floor(window / 1000) + 1)
return {1, 0}
"""


class SharedRateLimit:
    """`allow(key, rate_per_minute, burst)` against state in Redis; safe to share by every task."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._gcra = redis.register_script(_GCRA)
        self._window = redis.register_script(_WINDOW)

    async def allow(self, key: str, rate_per_minute: float, burst: int) -> tuple[bool, float]:
        """(allowed, retry_after_seconds): whether one request under `key` may go now, and if not, how
        long until one will be allowed (0.0 when allowed). Raises redis errors as they come."""
        if not rate_per_minute > 0 or math.isinf(rate_per_minute):
            raise ValueError(f"rate_per_minute must be a positive number, got {rate_per_minute!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        interval_us = max(1, round(60e6 / rate_per_minute))
        allowed, wait_us = await self._gcra(keys=[key], args=[interval_us, burst])
        return bool(int(allowed)), int(wait_us) / 1e6

    async def allow_in_window(self, key: str, limit: int, window_seconds: float) -> tuple[bool, float]:
        """(allowed, retry_after_seconds): whether one more action under `key` keeps it at most `limit`
        in any `window_seconds`; an allowed one is counted. Raises redis errors as they come."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        if not window_seconds > 0 or math.isinf(window_seconds):
            raise ValueError(f"window_seconds must be a positive number, got {window_seconds!r}")
        allowed, wait_us = await self._window(keys=[key], args=[max(1, round(window_seconds * 1e6)), limit,
                                                                secrets.token_hex(8)])
        return bool(int(allowed)), int(wait_us) / 1e6
