"""Managed groups' member activity: last-seen times kept in memory and written in batches.

Every message a member writes in a managed group is an update; writing each one would make 1,000 group
messages/s 1,000 Postgres writes/s. Instead `ActivityMiddleware` (an outer middleware of `message`, so
it sees every group message, commands included, before any handler) records (group, user) → the
latest message time in the replica's `ActivityBuffer`, and takes the entry's acknowledgement over
(`Receipt.holder`). The buffer is flushed every `flush_seconds`, or sooner once it holds
`flush_entries` members or entries: one statement (`clarion.db.group_activity.record_seen`, INSERT …
SELECT FROM unnest … ON CONFLICT DO UPDATE … GREATEST) for every member it holds, then one XACK
transaction for every entry it covers.

What a crash loses: nothing. An entry is acknowledged only after the flush that wrote its time, so a
replica killed with times still in memory leaves their entries pending, and the next holder of the
partition handles them again (the write is idempotent: GREATEST). A partition given back (a graceful
stop, a rebalance) is flushed first (`UpdateConsumer.before_release`), so that its next holder does not
handle its entries again; if Postgres is away then, they stay pending the same way.

Postgres away: a flush rides the outage out (`clarion.outages.ride_out`); a flush that gives up puts its
times and entries back into the buffer (nothing is dropped) and the next round tries again. New messages
keep being recorded meanwhile; once `max_held` entries wait for a flush, recording raises
`ActivityBacklog`, which the consumer treats as an outage (the entry stays pending, its chat is held
back with backoff), so memory stays bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import Message, TelegramObject
from clarion.db import group_activity
from clarion.logging import get_logger
from clarion.metrics import counter
from clarion.outages import ride_out

from clarion_bot.consumer import Receipt, ack_entries
from clarion_bot.context import ChannelHolder
from clarion_bot.failures import ActivityBacklog

log = get_logger("clarion.bot")

UPDATES = counter("clarion_group_activity_updates_total",
                  "Member messages of managed groups recorded in the activity buffer.")
FLUSHES = counter("clarion_group_activity_flushes_total",
                  "Statements that wrote buffered last-seen times to Postgres (one per flush).")
FLUSH_FAILURES = counter("clarion_group_activity_flush_failures_total",
                         "Flushes that gave up (Postgres away longer than the tolerance, an error); "
                         "their times and entries went back into the buffer.")

GROUP_CHATS = frozenset({"group", "supergroup"})


class ActivityBuffer:
    """(group, user) → latest time seen, and the stream entries that flushing acknowledges."""

    def __init__(self, *, db: Any, redis: Any, flush_seconds: float = 1.0, flush_entries: int = 2000,
                 max_held: int = 50_000, outage_tolerance: float = 30.0) -> None:
        self.db = db
        self.redis = redis
        self.flush_seconds = flush_seconds
        self.flush_entries = flush_entries
        self.max_held = max_held
        self.outage_tolerance = outage_tolerance
        self.seen: dict[tuple[int, int], datetime] = {}
        self.held: list[Receipt] = []
        self._full = asyncio.Event()
        self._flushing = asyncio.Lock()

    def record(self, group_id: int, user_id: int, at: datetime) -> None:
        if len(self.held) >= self.max_held:
            raise ActivityBacklog(f"{len(self.held)} entries wait for a group activity flush")
        key = (group_id, user_id)
        known = self.seen.get(key)
        if known is None or at > known:
            self.seen[key] = at
        UPDATES.inc()
        if len(self.seen) >= self.flush_entries:
            self._full.set()

    def hold(self, receipt: Receipt) -> None:
        self.held.append(receipt)
        if len(self.held) >= self.flush_entries:
            self._full.set()

    async def flush(self, tolerance: float | None = None) -> None:
        """Write every time held, then acknowledge every entry held; on failure both go back."""
        async with self._flushing:
            seen, held = self.seen, self.held
            if not seen and not held:
                return
            self.seen, self.held = {}, []
            wait = self.outage_tolerance if tolerance is None else tolerance
            try:
                if seen:
                    keys = list(seen)
                    await ride_out("group_activity_flush", lambda: group_activity.record_seen(
                        self.db, [g for g, _ in keys], [u for _, u in keys], [seen[k] for k in keys]),
                        tolerance=wait)
                    FLUSHES.inc()
                if held:
                    await ride_out("group_activity_ack", lambda: ack_entries(self.redis, held),
                                   tolerance=wait)
            except BaseException:
                FLUSH_FAILURES.inc()
                for key, at in seen.items():
                    known = self.seen.get(key)
                    if known is None or at > known:
                        self.seen[key] = at
                self.held[:0] = held
                raise

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every `flush_seconds` (sooner when full) until `stop`; `close` flushes the rest."""
        while not stop.is_set():
            waiters = [asyncio.ensure_future(self._full.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waiters, timeout=self.flush_seconds, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            self._full.clear()
            if stop.is_set():
                return
            try:
                await self.flush()
            except Exception as exc:  # kept in the buffer: the next round tries again
                log.warning("group_activity_flush_failed", members=len(self.seen), entries=len(self.held),
                            error=repr(exc)[:300])

    async def close(self, tolerance: float = 10.0) -> None:
        """Flush what is held, giving up (entries left pending) after `tolerance` s of outage: before a
        partition is given back, and the last one at a graceful stop."""
        try:
            await self.flush(tolerance)
        except Exception as exc:  # the entries stay pending: the partition's next holder handles them
            log.warning("group_activity_not_flushed", members=len(self.seen), entries=len(self.held),
                        error=repr(exc)[:300])


class ActivityMiddleware(BaseMiddleware):
    """Outer middleware of `message`: a member's message in a managed group is recorded in the buffer
    (and the entry acknowledged by the flush), whatever handler, if any, then takes the message. Bots'
    messages and messages sent on behalf of a chat (an anonymous admin, a linked channel) are not a
    member's."""

    def __init__(self, holder: ChannelHolder, buffer: ActivityBuffer) -> None:
        self.holder = holder
        self.buffer = buffer

    async def __call__(self, handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
                       event: TelegramObject, data: dict[str, Any]) -> Any:
        if isinstance(event, Message) and event.chat.type in GROUP_CHATS:
            user = event.from_user
            if user is not None and not user.is_bot and event.sender_chat is None:  # not on a chat's behalf
                group = await data["group_cache"].get(data["db"], self.holder.current.id, event.chat.id)
                if group is not None:
                    self.buffer.record(group.id, user.id, event.date)
                    receipt: Receipt | None = data.get("receipt")
                    if receipt is not None:
                        receipt.holder = self.buffer
        return await handler(event, data)

