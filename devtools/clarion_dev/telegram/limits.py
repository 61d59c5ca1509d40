"""Telegram's per-bot sending limits as token buckets, driven by an injectable clock.

Budgets (Bot FAQ, "My bot is hitting limits, how do I avoid this?"):
  overall ~30 messages/s, or up to 1000 messages/s for requests with allow_paid_broadcast (a
  separate budget); 1 message/s per private chat; 20 messages/min per group or supergroup.
Each budget is a token bucket: `rate` tokens per second, at most `burst` tokens banked.
Groups also get a hard cap: at most `group_window` messages in any window of
`group_window / group_rate` seconds (20 per 60 s at real rates), so the burst never lets more than
20 messages a minute through.
A refusal answers with `retry_after` whole seconds (at least 1) and opens a penalty window of that
length: overall refusals pause the whole bot, per-chat refusals pause that chat.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class RateLimits:
    """Rates in messages per second and bursts in messages, per bot."""

    global_rate: float = 30.0
    global_burst: float = 5.0
    paid_rate: float = 1000.0
    paid_burst: float = 50.0
    private_rate: float = 1.0
    private_burst: float = 3.0
    group_rate: float = 20.0 / 60.0
    group_burst: float = 3.0
    group_window: int = 20

    def __post_init__(self) -> None:
        for name in ("global", "paid", "private", "group"):
            if getattr(self, f"{name}_rate") <= 0:
                raise ValueError(f"{name}_rate must be positive")
            if getattr(self, f"{name}_burst") < 1:
                raise ValueError(f"{name}_burst must be at least 1 message")
        if self.group_window < 1:
            raise ValueError("group_window must be at least 1 message")

    def scaled(self, factor: float) -> RateLimits:
        """The same limits with every rate multiplied by `factor` (bursts unchanged)."""
        if factor <= 0:
            raise ValueError("scale must be positive")
        return replace(
            self,
            global_rate=self.global_rate * factor,
            paid_rate=self.paid_rate * factor,
            private_rate=self.private_rate * factor,
            group_rate=self.group_rate * factor,
        )


class Bucket:
    """A token bucket that starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def refill(self, now: float) -> float:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.tokens

    def retry_after(self, now: float) -> int:
        """Whole seconds until one token is available (at least 1)."""
        missing = 1.0 - self.refill(now)
        return max(1, math.ceil(missing / self.rate))


class Refused(Exception):
    """A send refused by a limit: `retry_after` seconds, `scope` is "bot" or "chat"."""

    def __init__(self, retry_after: int, scope: str, budget: str) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after
        self.scope = scope
        self.budget = budget


_PRUNE_AT = 200_000


class BotLimiter:
    """One bot's budgets. `check_*` raise Refused without spending; `commit` spends."""

    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits
        self._global: Bucket | None = None
        self._paid: Bucket | None = None
        self._chats: dict[int, Bucket] = {}
        self._penalty_until = 0.0
        self._chat_penalty: dict[int, float] = {}
        self._group_windows: dict[int, deque[float]] = {}

    def _bot_bucket(self, now: float, paid: bool) -> Bucket:
        if paid:
            if self._paid is None:
                self._paid = Bucket(self.limits.paid_rate, self.limits.paid_burst, now)
            return self._paid
        if self._global is None:
            self._global = Bucket(self.limits.global_rate, self.limits.global_burst, now)
        return self._global

    def check_bot(self, now: float, paid: bool) -> None:
        """Refuse when the bot is paused or its overall (or paid) budget is empty."""
        if now < self._penalty_until:
            raise Refused(max(1, math.ceil(self._penalty_until - now)), "bot", "penalty")
        bucket = self._bot_bucket(now, paid)
        if bucket.refill(now) < 1.0:
            retry = bucket.retry_after(now)
            self._penalty_until = now + retry
            raise Refused(retry, "bot", "paid" if paid else "global")

    def spend_bot(self, now: float, paid: bool) -> None:
        """Spend one overall token (also for sends that then fail on the chat)."""
        bucket = self._bot_bucket(now, paid)
        bucket.refill(now)
        bucket.tokens -= 1.0

    def check_chat(self, now: float, chat_id: int, is_group: bool) -> None:
        """Refuse when this chat is paused or its budget is empty."""
        until = self._chat_penalty.get(chat_id)
        if until is not None:
            if now < until:
                raise Refused(max(1, math.ceil(until - now)), "chat", "penalty")
            del self._chat_penalty[chat_id]
        bucket = self._chats.get(chat_id)
        if bucket is not None and bucket.refill(now) < 1.0:
            retry = bucket.retry_after(now)
            self._chat_penalty[chat_id] = now + retry
            raise Refused(retry, "chat", "group" if is_group else "private")
        window = self._group_windows.get(chat_id) if is_group else None
        if window is not None and len(window) >= self.limits.group_window:
            opens = window[0] + self.limits.group_window / self.limits.group_rate
            if now < opens:
                retry = max(1, math.ceil(opens - now))
                self._chat_penalty[chat_id] = now + retry
                raise Refused(retry, "chat", "group")

    def spend_chat(self, now: float, chat_id: int, is_group: bool) -> None:
        bucket = self._chats.get(chat_id)
        if bucket is None:
            if len(self._chats) >= _PRUNE_AT:
                self._prune(now)
            limits = self.limits
            bucket = (Bucket(limits.group_rate, limits.group_burst, now) if is_group
                      else Bucket(limits.private_rate, limits.private_burst, now))
            self._chats[chat_id] = bucket
        bucket.refill(now)
        bucket.tokens -= 1.0
        if is_group:
            window = self._group_windows.get(chat_id)
            if window is None:
                window = self._group_windows[chat_id] = deque(maxlen=self.limits.group_window)
            window.append(now)

    def _prune(self, now: float) -> None:
        """Forget chat buckets that are full again: they behave like new ones."""
        self._chats = {cid: b for cid, b in self._chats.items() if b.refill(now) < b.burst}
