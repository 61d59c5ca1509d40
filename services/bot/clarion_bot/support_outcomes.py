"""The support follower: settles support threads from the status streams and edits their admin posts.

Every bot replica runs one next to its update consumer. It reads, through the consumer group
`support:<channel>` (`clarion.streams.support_group`; the replicas share the entries), the channel's own
status stream and, when `support.replyEmailChannel` is set, that email channel's. Of the events it takes
only those whose reference names a support thread (`clarion.db.support.parse_reference`):

- `support-post:<id>`, sent: the api request's admin post is in the chat; its message id (the event's
  `provider_message_id`) is recorded (`set_admin_message`);
- `support-reply:<id>`: the reply's outcome (`finish_reply`: replied when sent, failed with the error
  otherwise; only the reply the thread waits for counts, so a repeated or stale event changes nothing).

Then the post is edited if it owes an edit (`support_posts.show_outcome`), and the entry acknowledged.
An entry whose handling failed (Postgres unreachable) stays pending; any replica claims it (XAUTOCLAIM)
once it has been idle `claim_idle_ms`, a dead replica's too. Every `sweep_seconds` one replica (a Redis
key held for the period) sweeps Postgres for what the streams no longer hold (a bot away longer than a
stream keeps, `STATUS_MAXLEN` entries): settled replies still `replying`, sent posts whose message id is
unknown, and posts owing an edit (one that was deferred, or a replica that died between the two).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from aiogram import Bot
from clarion.db import support
from clarion.keys import channel_key
from clarion.logging import get_logger
from clarion.metrics import counter
from clarion.streams import NotificationEvent, notification_status_stream, support_group, support_sweep_key
from pydantic import ValidationError
from redis.exceptions import ResponseError

from clarion_bot.context import ChannelHolder
from clarion_bot.support_posts import show_outcome

log = get_logger("clarion.bot")

SUPPORT_EVENTS = counter(
    "clarion_bot_support_events_total",
    "Status events of support notifications the follower handled, by kind (post, reply) and source "
    "(stream; sweep: found in Postgres after the stream no longer had it).", ["kind", "source"])
SUPPORT_FOLLOWER_ERRORS = counter(
    "clarion_bot_support_follower_errors_total",
    "Failures of the support follower (Postgres or Redis unreachable): the entry stays pending.")

_SETTLED = ("sent", "failed", "blocked")


class SupportOutcomes:
    """One replica's share of the channel's support events, and the sweep."""

    def __init__(self, *, redis: aioredis.Redis, db: Any, bot: Bot, holder: ChannelHolder, replica_id: str,
                 claim_idle_ms: int = 30_000, sweep_seconds: float = 30.0, block_ms: int = 1000,
                 read_count: int = 100) -> None:
        self.redis: Any = redis  # redis-py's stream reply types are too loose to be useful
        self.db = db
        self.bot = bot
        self.holder = holder
        self.replica_id = replica_id
        self.claim_idle_ms = claim_idle_ms
        self.sweep_seconds = sweep_seconds
        self.block_ms = block_ms
        self.read_count = read_count
        self.group = support_group(holder.current.key)
        self._joined: set[str] = set()

    def streams(self) -> list[str]:
        """The channel's status stream and its reply email channel's (the channel row is re-read)."""
        channel = self.holder.current
        out = [notification_status_stream(channel.key)]
        email = channel.support.reply_email_channel
        if email:
            namespace = channel.key.partition(".")[0]  # a namespace has no dot
            out.append(notification_status_stream(channel_key(namespace, email)))
        return out

    async def run(self, stop: asyncio.Event) -> None:
        next_sweep = 0.0
        next_claim = time.monotonic() + self.claim_idle_ms / 1000
        failures = 0
        while not stop.is_set():
            try:
                for stream in self.streams():
                    if stream not in self._joined:
                        await self._join(stream)
                if time.monotonic() >= next_claim:
                    await self._claim_stale()
                    next_claim = time.monotonic() + self.claim_idle_ms / 2000
                if time.monotonic() >= next_sweep:
                    await self.sweep()
                    next_sweep = time.monotonic() + self.sweep_seconds
                reply = await self._read_new(stop)
                for stream, entries in reply or ():
                    for entry_id, fields in entries:
                        await self._take(stream.decode(), entry_id, fields)
                failures = 0
            except Exception as exc:  # Postgres or Redis away: what was not acknowledged stays pending
                SUPPORT_FOLLOWER_ERRORS.inc()
                failures += 1
                log.warning("support_follower_failed", error=repr(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(0.5 * 2 ** failures, 15.0))

    async def _read_new(self, stop: asyncio.Event) -> Any:
        """New entries of the joined streams, waiting up to `block_ms`; None at once when `stop` is set (an
        entry Redis delivered meanwhile stays in this replica's pending list: handled at its next start,
        or claimed by another replica)."""
        read = asyncio.ensure_future(self.redis.xreadgroup(
            self.group, self.replica_id, dict.fromkeys(self._joined, ">"), count=self.read_count,
            block=self.block_ms))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not read.done():
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await read
            return None
        return read.result()

    async def _join(self, stream: str) -> None:
        """Create the group (from the stream's start: nothing already there is missed), then handle this
        replica's own pending entries (from before a restart)."""
        try:
            await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._joined.add(stream)
        after: bytes | str = "0"
        while True:
            reply = await self.redis.xreadgroup(self.group, self.replica_id, {stream: after},
                                                count=self.read_count)
            entries = reply[0][1] if reply else []
            if not entries:
                return
            for entry_id, fields in entries:
                await self._take(stream, entry_id, fields)
                after = entry_id

    async def _claim_stale(self) -> None:
        """Take over entries another replica (or this one) left pending longer than `claim_idle_ms`."""
        for stream in list(self._joined):
            cursor: Any = "0-0"
            while True:
                cursor, entries, *_ = await self.redis.xautoclaim(
                    stream, self.group, self.replica_id, min_idle_time=self.claim_idle_ms, start_id=cursor,
                    count=self.read_count)
                for entry_id, fields in entries:
                    await self._take(stream, entry_id, fields)
                if cursor in (b"0-0", "0-0"):
                    break

    async def _take(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes] | None) -> None:
        """Handle one entry and acknowledge it; an exception leaves it pending (claimed again later)."""
        if fields:  # an entry trimmed away while pending has none: nothing left to do
            try:
                event = NotificationEvent.from_fields(fields)
            except (KeyError, ValueError, ValidationError):
                event = None
            if event is not None:
                await self.handle(event, source="stream")
        await self.redis.xack(stream, self.group, entry_id)

    async def handle(self, event: NotificationEvent, *, source: str) -> None:
        """Record what a support notification's event says, then edit the post if that is owed."""
        reference = support.parse_reference(event.reference)
        if reference is None or event.status not in _SETTLED:
            return
        kind, thread_id = reference
        try:
            notification_id = uuid.UUID(event.notification_id)
        except ValueError:
            return
        channel = self.holder.current
        thread = await support.get_request(self.db, thread_id)
        if thread is None or thread.channel_id != channel.id:
            return  # another bot's thread (a reply email channel several bots share)
        SUPPORT_EVENTS.labels(kind, source).inc()
        if kind == "post":
            message_id = event.provider_message_id
            if event.status == "sent" and message_id is not None and message_id.isdigit():
                await support.set_admin_message(self.db, thread_id, notification_id, int(message_id))
        else:
            error = None if event.status == "sent" else (event.error or event.status)
            await support.finish_reply(self.db, thread_id, replied=event.status == "sent", error=error,
                                       notification_id=notification_id)
        current = await support.get_request(self.db, thread_id)
        if current is not None:
            await show_outcome(self.bot, self.db, channel, current)

    async def sweep(self) -> None:
        """Settle from Postgres what the streams no longer hold; one replica per period does it."""
        channel = self.holder.current
        key = support_sweep_key(channel.key)
        period_ms = max(1, int(self.sweep_seconds * 900))
        if not await self.redis.set(key, self.replica_id, nx=True, px=period_ms):
            if await self.redis.get(key) != self.replica_id.encode():
                return  # another replica's period
            await self.redis.pexpire(key, period_ms)
        for thread_id, notification_id, status, error in await support.replies_settled_unseen(
                self.db, channel.id):
            SUPPORT_EVENTS.labels("reply", "sweep").inc()
            await support.finish_reply(self.db, thread_id, replied=status == "sent",
                                       error=None if status == "sent" else (error or status),
                                       notification_id=notification_id)
        for thread_id, notification_id, message_id in await support.posts_sent_unseen(self.db, channel.id):
            SUPPORT_EVENTS.labels("post", "sweep").inc()
            await support.set_admin_message(self.db, thread_id, notification_id, message_id)
        for thread in await support.posts_owed(self.db, channel.id):
            await show_outcome(self.bot, self.db, channel, thread)
