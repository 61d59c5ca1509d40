"""The Telegram rate limiter every pod of a bot shares: one Redis Lua script, reserve-style.

One call reserves send slots for a batch of chats atomically:

- the bot's overall budget (`globalPerSecond`, or `paidBroadcastPerSecond` for paid broadcasts, its
  own budget) is a GCRA with no burst: consecutive slots are `interval = (1 + margin) / rate`
  seconds apart on Redis's clock, so no one-second window ever holds more than `rate` sends even
  when the arrival times jitter by up to `margin` seconds;
- optionally a cap of the caller's own on top (a campaign's `ratePerSecond`, scope `campaign:<id>`);
- each private chat (positive id) gets `perChatPerSecond`, each group (negative id)
  `perGroupPerMinute` (with `GROUP_ARRIVAL_JITTER` seconds of slack per minute), also as GCRAs; a
  chat whose own budget is not yet free is not given a slot (and takes nothing from the overall
  budget): the caller asks again after the returned delay;
- while the bot's pause key exists (set for `retry_after` seconds after a 429) nothing is granted;
- two priority classes share the overall budget: `INSTANT` (the notification instant lane) and
  `NORMAL` (campaign senders, the bulk lane, bot replies). A normal reservation is refused ("busy")
  once its slot would lie more than `horizon` seconds ahead of now, so normal callers never hold the
  bot's slots further ahead than that; an instant one is never refused for that reason and takes the
  next slot after them. However many senders keep the bot busy, an instant send waits at most
  `horizon` plus one slot (plus the instant sends ahead of it, and its own chat's budget), and normal
  callers yield: each instant slot pushes their next one back. Paid broadcasts have their own
  budget, which instant sends do not use: no horizon there.

The caller sleeps the returned delay and then sends: there is no retry storm, and a busy limiter
costs one script call per batch, not per message. `pause()` also publishes on the pause key's
name (a pub/sub channel), so that every process drops the slots it reserved before the 429 and
asks again once the pause is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis

from clarion.models.channel import TelegramRateLimits
from clarion.outages import redis_unavailable
from clarion.streams import bot_pause_key, rate_key

_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pttl = redis.call('PTTL', KEYS[1])
if pttl > 0 then return {1, pttl} end
local interval = tonumber(ARGV[1])
local cap = tonumber(ARGV[4])
local horizon = tonumber(ARGV[5])
local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
if tat < now then tat = now end
local ctat = 0
if cap > 0 then ctat = tonumber(redis.call('GET', KEYS[3]) or '0') end
local out = {0, now, 0}
for i = 4, #KEYS do
  local slot = math.max(tat, ctat)
  if horizon >= 0 and slot - now > horizon then
    out[3] = slot - now - horizon
    break
  end
  local ci = tonumber(ARGV[2])
  if ARGV[i + 2] == 'g' then ci = tonumber(ARGV[3]) end
  local chat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if chat > slot then
    out[#out + 1] = now - chat
  else
    out[#out + 1] = slot - now
    local free = slot + ci
    redis.call('SET', KEYS[i], string.format('%.0f', free), 'PX', math.floor((free - now) / 1000) + 1)
    tat = slot + interval
    if cap > 0 then ctat = slot + cap end
  end
end
redis.call('SET', KEYS[2], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
if cap > 0 then
  redis.call('SET', KEYS[3], string.format('%.0f', ctat), 'PX', math.floor((ctat - now) / 1000) + 1000)
end
return out
"""

_RESUBSCRIBE_FIRST = 0.2
_RESUBSCRIBE_MAX = 5.0

_PAUSE = """
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
  redis.call('PUBLISH', KEYS[1], ARGV[1])
end
return redis.call('PTTL', KEYS[1])
"""


@dataclass(frozen=True)
class RateLimits:
    """A channel's Telegram limits (the channel spec's `rateLimits`, defaults from its model)."""

    global_per_second: float
    per_chat_per_second: float
    per_group_per_minute: float
    paid_broadcast_per_second: float

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> RateLimits:
        """Read `rateLimits` from a channel's stored config (camelCase keys, each optional).

        Values beyond Telegram's published limits are taken as they are: benchmarks run a channel
        with its limits lifted.
        """
        raw = dict((config or {}).get("rateLimits") or {})
        default = TelegramRateLimits()
        limits = cls(
            global_per_second=float(raw.get("globalPerSecond", default.global_per_second)),
            per_chat_per_second=float(raw.get("perChatPerSecond", default.per_chat_per_second)),
            per_group_per_minute=float(raw.get("perGroupPerMinute", default.per_group_per_minute)),
            paid_broadcast_per_second=float(
                raw.get("paidBroadcastPerSecond", default.paid_broadcast_per_second)),
        )
        for name, value in vars(limits).items():
            if not value > 0 or math.isinf(value):
                raise ValueError(f"rateLimits: {name} must be a positive number, got {value!r}")
        return limits


class Priority(StrEnum):
    """Who gets the bot's slots first when it is busy (see the module doc)."""

    INSTANT = "instant"
    NORMAL = "normal"


DEFAULT_HORIZON = 0.5  # seconds: how far ahead normal callers may hold the bot's slots
#: Seconds of arrival jitter a group's budget absorbs. Telegram counts a group's messages in any 60 s
#: when they arrive, not when they were granted: with slots exactly `60 / perGroupPerMinute` apart, a
#: message held up 0.6 s longer than the one 20 slots after it (a busy process, the network) makes 21
#: in a minute and a 429. Slots are `(60 + this) / perGroupPerMinute` apart instead (3.15 s at 20 a
#: minute: 19 a minute), so no 60 s ever holds more than the limit while arrivals jitter by up to this.
GROUP_ARRIVAL_JITTER = 3.0


@dataclass(frozen=True)
class Grant:
    """The limiter's answer for one chat: sleep `delay` seconds, then send if `granted`, else ask again.

    `at` is the moment the answer refers to on Redis's clock (seconds), the same for every process.
    `busy`: refused because normal callers already hold the bot's slots up to the horizon (not because
    of this chat); every later chat of the same call is refused alike, with the same delay.
    """

    delay: float
    granted: bool
    at: float = 0.0
    busy: bool = False


class RateLimiter:
    """Reserves send slots for one bot in Redis; safe to share by every task of a process."""

    def __init__(self, redis: aioredis.Redis, bot_id: int, limits: RateLimits, *, margin: float = 0.01,
                 cap_scope: str | None = None, cap_per_second: float | None = None,
                 horizon: float | None = DEFAULT_HORIZON) -> None:
        """`horizon`: how far ahead (seconds) this limiter's normal reservations may hold the bot's
        slots; None takes the instant lane's priority away (normal callers reserve as far ahead as
        they like, and an instant send queues behind them)."""
        if not 0 <= margin < 1:
            raise ValueError(f"margin must be in [0, 1), got {margin!r}")
        if horizon is not None and not 0 < horizon < math.inf:
            raise ValueError(f"horizon must be a positive number of seconds or None, got {horizon!r}")
        bad_cap = cap_per_second is not None and not cap_per_second > 0
        if (cap_scope is None) != (cap_per_second is None) or bad_cap:
            raise ValueError("cap_scope and a positive cap_per_second go together")
        self._redis = redis
        self.limits = limits
        self._pause_key = bot_pause_key(bot_id)
        self._global_key = rate_key(bot_id, "global")
        self._paid_key = rate_key(bot_id, "paid")
        self._chat_prefix = rate_key(bot_id, "chat:")
        self._cap_key = rate_key(bot_id, cap_scope or "cap")
        stretch = 1.0 + margin
        self._global_us = _us(stretch / limits.global_per_second)
        self._paid_us = _us(stretch / limits.paid_broadcast_per_second)
        self._private_us = _us(stretch / limits.per_chat_per_second)
        self._group_us = _us(stretch * (60.0 + GROUP_ARRIVAL_JITTER) / limits.per_group_per_minute)
        self._cap_us = _us(stretch / cap_per_second) if cap_per_second else 0
        self.horizon = horizon
        self._horizon_us = -1 if horizon is None else _us(horizon)
        self._reserve = redis.register_script(_RESERVE)
        self._pause = redis.register_script(_PAUSE)
        self._paused_until = 0.0
        self._listener: asyncio.Task[None] | None = None
        self._pubsub: Any = None

    async def start(self) -> None:
        """Listen for pauses other processes announce (call once, before sending)."""
        await self._subscribe()
        self._listener = asyncio.create_task(self._listen(), name="limiter-pause-listener")

    async def _subscribe(self) -> None:
        """Subscribe to the pause channel, then read the pause in force (announced before we listened)."""
        self._pubsub = self._redis.pubsub()
        await self._pubsub.subscribe(self._pause_key)
        remaining = await self._redis.pttl(self._pause_key)
        if remaining > 0:
            self._note_pause(remaining / 1000.0)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pubsub is not None:
            await self._pubsub.aclose()
            self._pubsub = None

    async def _listen(self) -> None:
        """Follow pause announcements; when Redis goes away, subscribe again once it is back."""
        wait = _RESUBSCRIBE_FIRST
        while True:
            try:
                if self._pubsub is None:
                    await self._subscribe()
                    wait = _RESUBSCRIBE_FIRST
                assert self._pubsub is not None
                async for message in self._pubsub.listen():
                    if message.get("type") == "message":
                        self._note_pause(int(message["data"]) / 1000.0)
            except Exception as exc:
                if not redis_unavailable(exc):
                    raise
                pubsub, self._pubsub = self._pubsub, None
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                await asyncio.sleep(wait)
                wait = min(_RESUBSCRIBE_MAX, wait * 2)

    def _note_pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    def paused_for(self) -> float:
        """Seconds this process knows the bot is still paused for (0 when it is not)."""
        return max(0.0, self._paused_until - time.monotonic())

    async def pause(self, seconds: float) -> None:
        """Pause the bot in every process for `seconds` (never shortening a longer pause)."""
        ms = max(1, math.ceil(seconds * 1000))
        self._note_pause(ms / 1000.0)
        remaining = int(await self._pause(keys=[self._pause_key], args=[ms]))
        if remaining > 0:
            self._note_pause(remaining / 1000.0)

    async def reserve(self, chat_ids: Sequence[int], *, paid: bool = False,
                      priority: Priority = Priority.NORMAL) -> list[Grant]:
        """Reserve one send slot per chat, in order; one Redis round trip for the whole batch."""
        if not chat_ids:
            return []
        keys = [self._pause_key, self._paid_key if paid else self._global_key, self._cap_key]
        keys.extend(f"{self._chat_prefix}{chat_id}" for chat_id in chat_ids)
        horizon = -1 if paid or priority is Priority.INSTANT else self._horizon_us
        args: list[str | int] = [self._paid_us if paid else self._global_us, self._private_us, self._group_us,
                                 self._cap_us, horizon]
        args.extend("g" if chat_id < 0 else "p" for chat_id in chat_ids)
        reply = await self._reserve(keys=keys, args=args)
        if int(reply[0]) == 1:
            wait = int(reply[1]) / 1000.0
            self._note_pause(wait)
            return [Grant(wait, False)] * len(chat_ids)
        now, busy = int(reply[1]), int(reply[2])
        grants = [Grant(abs(int(v)) / 1e6, int(v) >= 0, (now + abs(int(v))) / 1e6) for v in reply[3:]]
        refused = len(chat_ids) - len(grants)
        grants.extend([Grant(busy / 1e6, False, (now + busy) / 1e6, busy=True)] * refused)
        return grants

    async def acquire(self, chat_id: int, *, paid: bool = False,
                      priority: Priority = Priority.NORMAL) -> float:
        """Wait until a message to `chat_id` may be sent; return the seconds waited.

        Refused as busy, it asks again after the delay plus up to half the horizon (jitter), so that
        many waiting callers do not all ask at the same moment; the bot's slots stay reserved up to
        at least half the horizon ahead meanwhile, so none is left unused.
        """
        started = time.monotonic()
        while True:
            grant = (await self.reserve([chat_id], paid=paid, priority=priority))[0]
            delay = grant.delay
            if grant.busy and self.horizon is not None:
                delay += random.uniform(0, self.horizon / 2)
            if delay > 0:
                await asyncio.sleep(delay)
            if grant.granted and self.paused_for() == 0:
                return time.monotonic() - started
            if grant.granted:
                await asyncio.sleep(self.paused_for())


def _us(seconds: float) -> int:
    return max(1, round(seconds * 1e6))
