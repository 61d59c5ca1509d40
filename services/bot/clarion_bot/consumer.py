"""Feed the dispatcher from the channel's update streams, partition by partition, in order.

A replica runs one worker per partition it leases (see leases.py). A worker first takes over every
pending entry of the partition (its own from before a restart, or a dead replica's) with XAUTOCLAIM,
handles them in id order, then reads new entries. Entries are acknowledged only after handling; a
handler that keeps failing sends its entry to `<stream>:dead`, acknowledged in the same transaction.

What a failure means is `failures.judge`'s table. An outage (Postgres unreachable, Telegram 5xx or
unreachable) leaves the entry pending and holds it back in memory with every later entry of its chat;
other chats' entries go on being handled (those whose handlers need no Postgres are answered). The
held-back chats are tried again, head first, with backoff, until their entries go through; a worker
holding `max_waiting` entries stops reading new ones until some went through.

A handler may take over an entry's acknowledgement (`Receipt.holder`): the group activity buffer does,
and acknowledges its entries after the flush that wrote them to Postgres (clarion_bot.activity).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
import structlog
from aiogram import Bot, Dispatcher
from aiogram.dispatcher.event.bases import UNHANDLED
from clarion.logging import bind_trace, get_logger
from clarion.metrics import counter, gauge, histogram
from clarion.streams import BOT_GROUP, UpdateEnvelope, attempts_key, dead_letter_stream, updates_stream
from clarion.telegram.errors import backoff_seconds
from redis.exceptions import RedisError, ResponseError

from clarion_bot.failures import Verdict, judge
from clarion_bot.leases import Leases, fair_share, preferred_order

UPDATES_HANDLED = counter("clarion_bot_updates_handled_total",
                          "Updates taken off the stream: handled, unhandled (no handler), dead_letter.",
                          ["result"])
HANDLING_SECONDS = histogram("clarion_bot_update_handling_seconds",
                             "Time to handle one update, retries included.")
STREAM_LAG = gauge("clarion_bot_stream_lag",
                   "Entries of a partition not yet acknowledged (never delivered plus pending).",
                   ["channel", "partition"])
DEAD_LETTERS = counter("clarion_bot_dead_letters_total",
                       "Entries sent to the dead-letter stream, by reason (failures.judge; unreadable, "
                       "too_many_deliveries).", ["reason"])
DEFERRED = counter("clarion_bot_updates_deferred_total",
                   "Handlings that ended in an outage and left their entry pending, by reason.", ["reason"])
WAITING = gauge("clarion_bot_updates_waiting",
                "Entries a replica holds back until an outage ends (theirs or an earlier one of their chat).",
                ["channel"])
PARTITIONS_HELD = gauge("clarion_bot_partitions_held", "Partitions this replica holds a lease on.",
                        ["channel"])

log = get_logger("clarion.bot")

_IDLE_CONSUMER_MS = 10 * 60 * 1000
_ATTEMPTS_TTL_MS = 7 * 24 * 3600 * 1000
_RETRY_AFTER_CAP_S = 60.0


class AckHolder(Protocol):
    def hold(self, receipt: Receipt) -> None:
        """Acknowledge the entry later (after its own durable write)."""


@dataclass
class Receipt:
    """The entry a handling is about, passed to handlers as `receipt`: a handler that sets `holder`
    acknowledges it itself; the consumer hands it over once the handling went through."""

    stream: str
    entry_id: bytes
    recovered: bool
    holder: AckHolder | None = None


async def ack_entries(redis: Any, receipts: Sequence[Receipt]) -> None:
    """XACK the entries (one transaction), forgetting the delivery counts of those taken over."""
    by_stream: dict[str, list[Receipt]] = {}
    for receipt in receipts:
        by_stream.setdefault(receipt.stream, []).append(receipt)
    async with redis.pipeline(transaction=True) as pipe:
        for stream, mine in by_stream.items():
            pipe.xack(stream, BOT_GROUP, *(r.entry_id for r in mine))
            recovered = [r.entry_id for r in mine if r.recovered]
            if recovered:
                pipe.hdel(attempts_key(stream), *recovered)
        await pipe.execute()


@dataclass
class Entry:
    entry_id: bytes
    fields: dict[bytes, bytes] | None
    recovered: bool


def _chat_of(fields: dict[bytes, bytes] | None) -> int | None:
    """The ordering id of an entry (None for one without a chat, or one that cannot be read)."""
    try:
        return UpdateEnvelope.from_fields(fields).chat_id if fields else None
    except ValueError:
        return None


class PartitionWorker:
    """Handles one leased partition until told to stop or until its lease can no longer be trusted."""

    def __init__(self, consumer: UpdateConsumer, partition: int, valid_until: float) -> None:
        self.consumer = consumer
        self.partition = partition
        self.stream = updates_stream(consumer.channel, partition)
        self.valid_until = valid_until
        self.stop_requested = asyncio.Event()
        self.waiting: dict[int | None, deque[Entry]] = {}  # chat → its entries held back, oldest first
        self.waiting_count = 0
        self.retry_round = 0
        self.retry_at = 0.0
        self._waiting_gauge = WAITING.labels(consumer.channel)
        self.task: asyncio.Task[None] = asyncio.create_task(self._run(), name=f"partition-{partition}")

    def request_stop(self) -> None:
        """Stop after the entry in hand (and promptly from a backoff wait)."""
        self.stop_requested.set()

    async def stop(self) -> None:
        """Finish the entry in hand, then return (whatever way the worker ended)."""
        self.request_stop()
        await asyncio.wait([self.task])

    def _may_continue(self) -> bool:
        return not self.stop_requested.is_set() and time.monotonic() < self.valid_until

    async def _pause(self, seconds: float) -> None:
        """Sleep up to `seconds` (at most 1 s, so the lease is checked), returning early when stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_requested.wait(), max(0.0, min(seconds, 1.0)))

    async def _run(self) -> None:
        c = self.consumer
        try:
            await c.redis.xgroup_create(self.stream, BOT_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        await self._claim_pending()
        try:
            await self._consume()
        finally:
            self._waiting_gauge.dec(self.waiting_count)  # still pending: the next holder handles them

    async def _consume(self) -> None:
        c = self.consumer
        after: bytes | str = "0"
        while self._may_continue():  # own pending list, oldest first, before anything new
            reply = await c.redis.xreadgroup(BOT_GROUP, c.replica_id, {self.stream: after},
                                             count=c.read_count)
            entries = reply[0][1] if reply else []
            if not entries:
                break
            for entry_id, fields in entries:
                if not self._may_continue():
                    return
                await self._take(Entry(entry_id, fields, recovered=True))
                after = entry_id
        while self._may_continue():
            if self.waiting and time.monotonic() >= self.retry_at:
                await self._retry_waiting()
                continue
            if self.waiting_count >= c.max_waiting:  # the partition pauses until some went through
                await self._pause(self.retry_at - time.monotonic())
                continue
            block_ms = c.block_ms
            if self.waiting:
                block_ms = max(1, min(block_ms, int((self.retry_at - time.monotonic()) * 1000)))
            reply = await c.redis.xreadgroup(BOT_GROUP, c.replica_id, {self.stream: ">"},
                                             count=c.read_count, block=block_ms)
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    if not self._may_continue():
                        return  # left pending: the next holder of the lease handles it
                    await self._take(Entry(entry_id, fields, recovered=False))

    async def _take(self, entry: Entry) -> None:
        """Handle `entry`, or hold it back behind an earlier entry of its chat that is waiting."""
        if self.waiting:
            queue = self.waiting.get(_chat_of(entry.fields))
            if queue is not None:
                queue.append(entry)
                self._count_waiting(1)
                return
        if not await self._handle(entry):
            if not self.waiting:
                self.retry_round = 0
                self._schedule_retry()
            self.waiting[_chat_of(entry.fields)] = deque([entry])
            self._count_waiting(1)

    async def _retry_waiting(self) -> None:
        """Try each waiting chat's oldest entry again; a chat whose entry went through goes on in order."""
        went_through = False
        for chat in list(self.waiting):
            queue = self.waiting[chat]
            while queue and self._may_continue():
                if not await self._handle(queue[0]):
                    break
                queue.popleft()
                self._count_waiting(-1)
                went_through = True
            if not queue:
                del self.waiting[chat]
            if not self._may_continue():
                return
        if self.waiting:
            self.retry_round = 1 if went_through else self.retry_round + 1
            self._schedule_retry()
            log.info("updates_waiting", partition=self.partition, entries=self.waiting_count,
                     chats=len(self.waiting), retry_in=round(self.retry_at - time.monotonic(), 2))

    def _schedule_retry(self) -> None:
        c = self.consumer
        delay = backoff_seconds(self.retry_round + 1, c.retry_base_s, cap=c.retry_max_s)
        self.retry_at = time.monotonic() + delay

    def _count_waiting(self, change: int) -> None:
        self.waiting_count += change
        self._waiting_gauge.inc(change)

    async def _handle(self, entry: Entry) -> bool:
        return await self.consumer.handle_entry(self.stream, entry.entry_id, entry.fields,
                                                recovered=entry.recovered, stop=self.stop_requested)

    async def _claim_pending(self) -> None:
        """Take over every pending entry of the group: holding the lease, nobody else works here."""
        c = self.consumer
        cursor: Any = "0-0"
        while True:
            reply = await c.redis.xautoclaim(self.stream, BOT_GROUP, c.replica_id, min_idle_time=0,
                                             start_id=cursor, count=500)
            cursor = reply[0]
            if cursor in (b"0-0", "0-0"):
                break
        for info in await c.redis.xinfo_consumers(self.stream, BOT_GROUP):
            name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
            if name != c.replica_id and info["pending"] == 0 and info["idle"] > _IDLE_CONSUMER_MS:
                await c.redis.xgroup_delconsumer(self.stream, BOT_GROUP, name)


class UpdateConsumer:
    """One bot replica's share of a channel's update streams."""

    def __init__(self, *, redis: aioredis.Redis, dispatcher: Dispatcher, bot: Bot, channel: str,
                 replica_id: str, partitions: int, lease_ttl_ms: int, read_count: int = 50,
                 max_attempts: int = 3, max_deliveries: int = 5, lag_report_seconds: float = 5.0,
                 max_waiting: int = 1000, retry_base_seconds: float = 0.5,
                 retry_max_seconds: float = 15.0,
                 before_release: Callable[[], Awaitable[None]] | None = None) -> None:
        """`before_release` runs after a partition's worker stopped and before its lease is given back
        (the activity buffer's flush: the entries it holds are acknowledged before another replica
        takes the partition over, so that it does not handle them again)."""
        self.redis: Any = redis  # redis-py's stream reply types are too loose to be useful
        self.dispatcher = dispatcher
        self.bot = bot
        self.channel = channel
        self.replica_id = replica_id
        self.partitions = partitions
        self.read_count = read_count
        self.max_attempts = max_attempts
        self.max_deliveries = max_deliveries
        self.lag_report_seconds = lag_report_seconds
        self.max_waiting = max_waiting
        self.retry_base_s = retry_base_seconds
        self.retry_max_s = retry_max_seconds
        self.before_release = before_release
        self.leases = Leases(redis, channel, replica_id, lease_ttl_ms)
        self.ttl_s = lease_ttl_ms / 1000
        self.tick_s = self.ttl_s / 3
        self.block_ms = max(50, min(1000, lease_ttl_ms // 4))
        self.workers: dict[int, PartitionWorker] = {}
        self._held = PARTITIONS_HELD.labels(channel)

    @property
    def held(self) -> list[int]:
        return sorted(self.workers)

    async def run(self, stop: asyncio.Event) -> None:
        """Lease, consume and rebalance until `stop` is set; then finish work in hand and give leases back."""
        reporter = asyncio.create_task(self._report_lag(stop, self.lag_report_seconds))
        try:
            while not stop.is_set():
                try:
                    await self._tick()
                except (RedisError, OSError) as exc:
                    log.warning("lease_tick_failed", error=repr(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.tick_s)
        finally:
            reporter.cancel()
            for worker in self.workers.values():
                worker.request_stop()
            await asyncio.gather(*(self._give_back(p) for p in list(self.workers)))
            with contextlib.suppress(RedisError, OSError):
                await self.leases.leave()

    async def _tick(self) -> None:
        started = time.monotonic()
        live = await self.leases.heartbeat()
        share = fair_share(self.partitions, live)
        for partition, worker in list(self.workers.items()):
            if worker.task.done():
                error = None if worker.task.cancelled() else worker.task.exception()
                if error is not None:
                    log.error("partition_worker_failed", partition=partition, error=repr(error))
                await self._give_back(partition)
            elif await self.leases.renew(partition):
                worker.valid_until = started + self.ttl_s * 0.9
            else:
                log.warning("lease_lost", partition=partition)
                worker.task.cancel()
                del self.workers[partition]
        extra = self.held[share:]
        for partition in extra:  # all at once: the wait must stay well inside the kept leases' TTL
            self.workers[partition].request_stop()
        await asyncio.gather(*(self._give_back(partition) for partition in extra))
        for partition in preferred_order(self.replica_id, self.partitions):
            if len(self.workers) >= share:
                break
            if partition not in self.workers and await self.leases.acquire(partition):
                self.workers[partition] = PartitionWorker(self, partition, started + self.ttl_s * 0.9)
                log.info("partition_acquired", partition=partition, live_replicas=live, share=share)
        self._held.set(len(self.workers))

    async def _give_back(self, partition: int) -> None:
        worker = self.workers.pop(partition)
        await worker.stop()
        if self.before_release is not None:
            await self.before_release()
        with contextlib.suppress(RedisError, OSError):
            await self.leases.release(partition)
        log.info("partition_released", partition=partition)

    async def handle_entry(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes] | None, *,
                           recovered: bool = False, stop: asyncio.Event | None = None) -> bool:
        """Handle one entry (retrying as `failures.judge` says), then acknowledge it or dead-letter it.

        Returns False when the entry was left pending: an outage (Postgres or Telegram unreachable), or
        `stop` set while waiting out a 429. A `recovered` entry (taken from a pending list) counts its
        handling starts in Redis, so an update that crashes every replica that handles it ends in the
        dead-letter stream; a handling that ends pending takes its count back (it did not crash).
        """
        started = time.perf_counter()
        structlog.contextvars.clear_contextvars()
        if not fields:  # trimmed away while pending: nothing left to handle
            await self._ack(stream, entry_id, recovered)
            return True
        try:
            envelope = UpdateEnvelope.from_fields(fields)
        except ValueError as exc:
            await self._dead_letter(stream, entry_id, fields, "unreadable", f"unreadable envelope: {exc}")
            return True
        bind_trace(envelope.trace_id, channel=self.channel, update_id=envelope.update_id)
        if recovered:
            tries = await self._count_attempt(stream, entry_id, 1)
            if tries > self.max_deliveries:
                await self._dead_letter(stream, entry_id, fields, "too_many_deliveries",
                                        f"handling started {tries} times")
                return True
        receipt = Receipt(stream, entry_id, recovered)
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await self.dispatcher.feed_raw_update(self.bot, envelope.update, receipt=receipt)
            except Exception as exc:
                failure = judge(exc)
                if failure.verdict is Verdict.WAIT:  # the whole bot is throttled: wait, do not count it
                    log.warning("telegram_retry_after", retry_after=failure.retry_after)
                    if await _stopped_within(stop, min(failure.retry_after, _RETRY_AFTER_CAP_S)):
                        return await self._leave_pending(stream, entry_id, recovered)
                    attempt -= 1
                    continue
                if failure.verdict is Verdict.OUTAGE:
                    DEFERRED.labels(failure.reason).inc()
                    log.warning("handling_deferred", reason=failure.reason, error=failure.error)
                    return await self._leave_pending(stream, entry_id, recovered)
                if failure.verdict is Verdict.ERROR and attempt < self.max_attempts:
                    log.warning("handler_failed", attempt=attempt, error=failure.error)
                    await asyncio.sleep(0.1 * 2 ** attempt)
                    continue
                log.error("handler_gave_up", attempts=attempt, reason=failure.reason, error=failure.error)
                await self._dead_letter(stream, entry_id, fields, failure.reason, failure.error)
                HANDLING_SECONDS.observe(time.perf_counter() - started)
                return True
            break
        if receipt.holder is not None:
            receipt.holder.hold(receipt)
        else:
            await self._ack(stream, entry_id, recovered)
        outcome = "unhandled" if result is UNHANDLED else "handled"
        UPDATES_HANDLED.labels(outcome).inc()
        HANDLING_SECONDS.observe(time.perf_counter() - started)
        log.debug("update_handled", result=outcome, seconds=round(time.perf_counter() - started, 4))
        return True

    async def _leave_pending(self, stream: str, entry_id: bytes, recovered: bool) -> bool:
        if recovered:
            await self._count_attempt(stream, entry_id, -1)
        return False

    async def _count_attempt(self, stream: str, entry_id: bytes, change: int) -> int:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(attempts_key(stream), entry_id, change)
            pipe.pexpire(attempts_key(stream), _ATTEMPTS_TTL_MS)
            tries, _ = await pipe.execute()
        return int(tries)

    async def _ack(self, stream: str, entry_id: bytes, recovered: bool) -> None:
        if not recovered:
            await self.redis.xack(stream, BOT_GROUP, entry_id)
            return
        await ack_entries(self.redis, [Receipt(stream, entry_id, recovered)])

    async def _dead_letter(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes],
                           reason: str, error: str) -> None:
        """Move the entry to `<stream>:dead` with `id`, `reason` (a metric label) and `error` (the text)."""
        dead = {**fields, b"id": entry_id, b"reason": reason.encode(), b"error": error.encode()}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(dead_letter_stream(stream), dead)
            pipe.xack(stream, BOT_GROUP, entry_id)
            pipe.hdel(attempts_key(stream), entry_id)
            await pipe.execute()
        UPDATES_HANDLED.labels("dead_letter").inc()
        DEAD_LETTERS.labels(reason).inc()
        log.error("update_dead_lettered", stream=stream, entry_id=entry_id.decode(), reason=reason,
                  error=error)

    async def _report_lag(self, stop: asyncio.Event, every: float) -> None:
        """Publish each held partition's lag and trim what every group has acknowledged."""
        while not stop.is_set():
            for partition in self.held:
                with contextlib.suppress(RedisError, OSError):
                    await self._observe_partition(partition)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    async def _observe_partition(self, partition: int) -> None:
        stream = updates_stream(self.channel, partition)
        keep_from: bytes | None = None
        for group in await self.redis.xinfo_groups(stream):
            name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
            if name == BOT_GROUP:
                lag = group.get("lag")
                if lag is None:  # Redis cannot tell after deletions: count what is left unread
                    start = _after(group["last-delivered-id"])
                    lag = len(await self.redis.xrange(stream, min=start, count=10_000))
                STREAM_LAG.labels(self.channel, str(partition)).set(int(lag) + int(group["pending"]))
            if group["pending"]:
                summary = await self.redis.xpending(stream, name)
                oldest = summary["min"]
            else:
                oldest = group["last-delivered-id"]
            if keep_from is None or _id_key(oldest) < _id_key(keep_from):
                keep_from = oldest
        if keep_from is not None and keep_from not in (b"0-0", "0-0"):
            await self.redis.xtrim(stream, minid=keep_from, approximate=False)


async def _stopped_within(stop: asyncio.Event | None, seconds: float) -> bool:
    """Sleep `seconds`, or less if `stop` is set meanwhile; True when it was."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


def _id_key(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _after(entry_id: bytes | str) -> str:
    ms, seq = _id_key(entry_id)
    return f"{ms}-{seq + 1}"
