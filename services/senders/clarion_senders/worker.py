"""`clarion-worker`: sends one channel's transactional notifications (docs/notifications.md).

It reads the channel's lane streams (`notify:<channel>:instant`, `notify:<channel>:bulk`, and for a
telegram channel's ManagedGroup posts `notify:<channel>:group-posts`, ADR 0010) through the consumer
group `workers`; instant entries are always read before the others. For each entry:

1. claim the row in Postgres (`queued` → `sending`, with a lease). A duplicate entry, or one for a row
   that is settled or not due, claims nothing and is acknowledged;
2. send it through the channel's transport (Telegram through the bot's shared limiter, or SMTP);
3. write the outcome to Postgres, then XACK, then publish the outcome on the channel's status stream.

Failure paths (GC Notify's three, and ours):
- a temporary failure (Telegram 5xx or network, SMTP 4xx or a lost connection) goes back to `queued`
  off the stream, due after exponential backoff with jitter; the replayer enqueues it when due. After
  `max_attempts` it is `failed` and dead-lettered (`<stream>:dead`) with the reason;
- a worker that dies mid-send leaves its entries pending: another worker reclaims them (XAUTOCLAIM)
  once idle for the lease, and its claim of the row succeeds once the row's lease has run out. A row
  waiting for the rate limiter (a group's posts wait their turn, 20 a minute) is no dead worker's:
  its worker renews the row's lease and the entry's idle time meanwhile;
- Redis losing an entry (or everything): the replayer finds rows that should be on a stream
  (`created`/`queued` and due, not enqueued for `replay_after` seconds, or `sending` with a lapsed
  lease) and enqueues them again;
- Postgres or Redis away: every call waits it out (`clarion.outages.ride_out`).
Duplicates are limited to the sends in flight when a worker dies.

Stopping (SIGTERM: a scale-down, a rollout) never loses or strands work:
1. it reads nothing more;
2. sends under way finish and are recorded, for up to `stop_grace_seconds` (less than the pod's grace
   period, so they are not killed mid-send);
3. entries still waiting for the right to send after that (the rate limiter: nothing was sent), and
   any that comes to wait for it later (it was still being claimed), are given back: the row goes
   back to `queued`, a new entry goes on the stream and the old one is acknowledged, so another
   worker (or the next pod, since the entry counts in the lane's backlog) sends them at once instead
   of after the lease;
4. with nothing left pending, the worker removes its consumer from the group, so scale-downs leave no
   consumer behind. The reclaimer also removes consumers idle for `stale_consumer_seconds` with
   nothing pending: those of pods killed before they could.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import asyncpg
import redis.asyncio as aioredis
import structlog
from clarion.db import notifications as q
from clarion.metrics import counter, histogram
from clarion.outages import ride_out
from clarion.streams import (
    LANES,
    WORKER_GROUP,
    NotificationEvent,
    NotificationTask,
    add_tasks,
    dead_letter_stream,
    notification_status_stream,
    notify_stream,
)
from clarion.telegram.errors import backoff_seconds

from clarion_senders.consumer_groups import ensure_group, forget_departed, keep_pending, leave_group, text

log = structlog.get_logger("clarion.worker")

SENT = counter("clarion_notifications_sent_total", "Notification send outcomes of workers.",
               ["channel", "lane", "result"])
SEND_SECONDS = histogram("clarion_notification_send_seconds", "Round trip of one notification send.",
                         ["channel"])
DELIVERY_SECONDS = histogram("clarion_notification_delivery_seconds",
                             "From accept (or the scheduled time) to the provider's acceptance of a sent "
                             "notification, retries included.", ["channel", "lane"],
                             buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900))
RETRIES = counter("clarion_notification_retries_total",
                  "Failed attempts scheduled to be tried again (temporary failures, before max attempts).",
                  ["channel", "lane"])
DEAD_LETTERS = counter("clarion_notification_dead_letters_total",
                       "Notifications that ended failed and were dead-lettered, by reason.",
                       ["channel", "reason"])
REPLAYED = counter("clarion_notifications_replayed_total",
                   "Notifications put on a stream by the replayer (scheduled, retried, or lost by Redis).",
                   ["channel"])

T = TypeVar("T")
STATUS_MAXLEN = 100_000
DEAD_MAXLEN = 100_000


class Outcome:
    SENT = "sent"
    BLOCKED = "blocked"
    FAILED = "failed"
    RETRY = "retry"
    RATE_LIMITED = "rate_limited"
    FATAL = "fatal"


@dataclass(frozen=True)
class SendResult:
    """What one send did: an `Outcome`, the error text, the provider's message id, a wait (429)."""

    outcome: str
    error: str | None = None
    provider_message_id: str | None = None
    retry_after: float = 0.0


class Transport(Protocol):
    """Sends one notification; never raises for a send that failed (it returns the outcome)."""

    async def admit(self, row: q.Row) -> None:
        """Wait until `row` may be sent (rate limits). Nothing is sent yet, so a stopping worker may
        cancel this wait and give the row back."""

    async def send(self, row: q.Row) -> SendResult: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class WorkerOptions:
    lanes: tuple[str, ...] = ("instant", "bulk")
    concurrency: int = 32
    lease_seconds: float = 30.0
    replay_after_seconds: float = 30.0
    replay_interval_seconds: float = 1.0
    retry_backoff_seconds: float = 2.0
    outage_tolerance: float = 300.0
    block_ms: int = 1000
    stop_grace_seconds: float = 40.0
    stale_consumer_seconds: float = 600.0


class FatalWorkerError(RuntimeError):
    """Nothing can be sent until the channel's credentials are fixed."""


class NotificationWorker:
    """One channel's worker; see the module doc."""

    def __init__(self, *, pool: asyncpg.Pool, redis: aioredis.Redis, channel_id: int, channel_key: str,
                 transport: Transport, consumer: str, options: WorkerOptions) -> None:
        self.pool, self.redis, self.transport = pool, redis, transport
        self.channel_id, self.channel_key = channel_id, channel_key
        self.consumer, self.options = consumer, options
        self.streams = {lane: notify_stream(channel_key, lane) for lane in options.lanes}
        self._slots = asyncio.Semaphore(options.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._admitting: set[asyncio.Task[Any]] = set()  # claimed, waiting for the right to send
        self._in_flight: set[tuple[str, bytes]] = set()  # (stream, entry id) being handled here
        self._stopping = asyncio.Event()
        self._grace_over = False  # stopping, and the grace ended: rows reaching admission are given back
        self._fatal: str | None = None

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Work until stopped; in-flight sends finish and are recorded before it returns."""
        for stream in self.streams.values():
            await self._redis("xgroup_create", functools.partial(self._create_group, stream))
        log.info("worker.start", channel=self.channel_key, lanes=list(self.streams), consumer=self.consumer)
        helpers = [asyncio.create_task(self._replay_loop(), name="replayer"),
                   asyncio.create_task(self._reclaim_loop(), name="reclaimer")]
        try:
            await self._own_pending()
            await self._read_loop()
        finally:
            for task in helpers:
                task.cancel()
            for task in helpers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._tasks:
                await self._finish_in_flight()
            await self._leave_group()
            log.info("worker.stop", channel=self.channel_key, fatal=self._fatal)
        if self._fatal is not None:
            raise FatalWorkerError(self._fatal)

    async def _finish_in_flight(self) -> None:
        """Let sends under way finish for `stop_grace_seconds`; then give back the entries still waiting
        for the right to send, and wait for the rest."""
        _, left = await asyncio.wait(set(self._tasks), timeout=self.options.stop_grace_seconds)
        self._grace_over = True
        waiting = [task for task in left if task in self._admitting]
        for task in waiting:
            task.cancel()
        if waiting:
            log.info("worker.giving_back", count=len(waiting))
        if left:
            await asyncio.gather(*left, return_exceptions=True)

    async def _leave_group(self) -> None:
        """Remove this worker's consumer from each lane's group when it holds no entry there."""
        for stream in self.streams.values():
            await leave_group(self.redis, stream, self.consumer)

    # --- Postgres and Redis, waiting out outages -------------------------------------------------------

    async def _db(self, what: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async def once() -> T:
            async with self.pool.acquire() as conn:
                return await work(conn)

        return await ride_out(what, once, tolerance=self.options.outage_tolerance)

    async def _redis(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        return await ride_out(what, call, tolerance=self.options.outage_tolerance)

    async def _create_group(self, stream: str) -> None:
        await ensure_group(self.redis, stream)

    # --- reading --------------------------------------------------------------------------------------

    async def _own_pending(self) -> None:
        """Entries this consumer read before a restart and never acknowledged: handle them first."""
        for stream in self.streams.values():
            reply = await self._redis("xreadgroup", functools.partial(
                self.redis.xreadgroup, WORKER_GROUP, self.consumer, {stream: "0"}, count=1000))
            await self._dispatch(reply)

    async def _read_loop(self) -> None:
        instant = {lane: s for lane, s in self.streams.items() if lane == "instant"}
        while not self._stopping.is_set():
            await self._slots.acquire()  # at least one slot free before reading
            self._slots.release()
            free = self.options.concurrency - len(self._tasks)  # sends that may start now
            reply: Any = []
            if instant:  # instant first, without waiting
                reply = await self._read(dict.fromkeys(instant.values(), ">"), free, block=None)
            if not reply:
                reply = await self._read(dict.fromkeys(self.streams.values(), ">"), free,
                                         block=self.options.block_ms)
            await self._dispatch(reply)

    async def _read(self, streams: dict[str, str], count: int, block: int | None) -> Any:
        try:
            return await self._redis("xreadgroup", lambda: self.redis.xreadgroup(
                WORKER_GROUP, self.consumer, streams, count=max(1, count), block=block))  # type: ignore[arg-type]
        except aioredis.ResponseError as exc:
            if "NOGROUP" not in str(exc):  # Redis lost its data: the groups are gone
                raise
            for stream in self.streams.values():
                await self._create_group(stream)
            return []

    async def _dispatch(self, reply: Any) -> None:
        for stream, entries in reply or []:
            name = stream.decode() if isinstance(stream, bytes) else stream
            for entry_id, fields in entries:
                if not fields:  # trimmed away while pending
                    await self._ack(name, entry_id)
                    continue
                if (name, entry_id) in self._in_flight:  # reclaimed while this worker still handles it
                    continue
                await self._slots.acquire()
                self._in_flight.add((name, entry_id))
                task = asyncio.create_task(self._handle(name, entry_id, fields))
                task.add_done_callback(functools.partial(self._done, (name, entry_id)))
                self._tasks.add(task)

    def _done(self, entry: tuple[str, bytes], task: asyncio.Task[None]) -> None:
        self._in_flight.discard(entry)
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("worker.entry_failed", error=repr(task.exception())[:500])

    # --- one entry ------------------------------------------------------------------------------------

    async def _handle(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        task = NotificationTask.from_fields(fields)
        ident = uuid.UUID(task.notification_id)
        structlog.contextvars.bind_contextvars(notification_id=task.notification_id, trace_id=task.trace_id)
        lease = self.options.lease_seconds
        row = await self._db("claim", lambda conn: q.claim(conn, ident, self.consumer, lease))
        if row is None:  # settled, held by a live worker, or not due: this entry has nothing to do
            await self._ack(stream, entry_id)
            return
        if not await self._admitted(row, stream, entry_id):
            return
        started = time.monotonic()
        result = await self.transport.send(row)
        SEND_SECONDS.labels(self.channel_key).observe(time.monotonic() - started)
        SENT.labels(self.channel_key, row.lane, result.outcome).inc()
        event = await self._record(row, stream, result)
        if event is None:
            await self._ack(stream, entry_id)
            return

        async def publish_and_ack() -> None:  # the outcome is in Postgres: one round trip for both
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(notification_status_stream(self.channel_key), event.to_fields(),  # type: ignore[arg-type]
                          maxlen=STATUS_MAXLEN, approximate=True)
                pipe.xack(stream, WORKER_GROUP, entry_id)
                await pipe.execute()

        await self._redis("status_event", publish_and_ack)
        log.info("notification.settled", status=event.status, attempts=event.attempts, error=event.error)

    async def _admitted(self, row: q.Row, stream: str, entry_id: bytes) -> bool:
        """Wait for the transport's go-ahead; False when the worker stopped first and gave the row back
        (see the module doc, "Stopping")."""
        me = asyncio.current_task()
        assert me is not None
        self._admitting.add(me)
        keeper = asyncio.create_task(self._keep_claim(row, stream, entry_id), name="keep-claim")
        try:
            if not self._grace_over:
                await self.transport.admit(row)
                return True
        except asyncio.CancelledError:
            if not self._stopping.is_set():
                raise
            me.uncancel()
        finally:
            self._admitting.discard(me)
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await keeper
        if await self._db("release", lambda conn: q.release(conn, row.id, self.consumer)):
            async def requeue() -> None:  # the new entry and the old one's ack in one MULTI
                new_stream, task = row.entry()
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.xadd(new_stream, task.to_fields())  # type: ignore[arg-type]
                    pipe.xack(stream, WORKER_GROUP, entry_id)
                    await pipe.execute()

            await self._redis("give_back", requeue)
        else:  # the lease ran out and another worker holds it: the entry is nothing of ours any more
            await self._ack(stream, entry_id)
        return False

    async def _keep_claim(self, row: q.Row, stream: str, entry_id: bytes) -> None:
        """While the row waits for the right to send (a group's posts wait minutes for their turn, 20 a
        minute), renew its lease and its entry's idle time every third of the lease, so that neither this
        worker's nor another's reclaimer takes it over as the entry of a dead worker."""
        lease, me = self.options.lease_seconds, self.consumer
        while True:
            await asyncio.sleep(lease / 3)
            try:
                await self._db("extend_lease", lambda conn: q.extend_lease(conn, row.id, me, lease))
                await keep_pending(self.redis, stream, self.consumer, [entry_id])
            except Exception as exc:  # the next round tries again; the lease outlives two misses
                log.warning("worker.keep_claim_failed", error=repr(exc)[:300])

    async def _record(self, row: q.Row, stream: str, result: SendResult) -> NotificationEvent | None:
        """Write the outcome to Postgres; the status event of a final outcome to publish, else None."""
        opts, ident, worker = self.options, row.id, self.consumer
        error = result.error
        if result.outcome == Outcome.RATE_LIMITED:
            await self._db("retry_later", lambda conn: q.retry_later(
                conn, ident, worker, error or "429", result.retry_after, count_attempt=False))
            return None
        if result.outcome == Outcome.FATAL:
            await self._db("retry_later", lambda conn: q.retry_later(
                conn, ident, worker, error or "credentials refused", 30.0, count_attempt=False))
            self._fatal = error or "credentials refused"
            self.stop()
            return None
        attempt = row.attempts + 1
        if result.outcome == Outcome.RETRY and attempt < row.max_attempts:
            wait = backoff_seconds(attempt, opts.retry_backoff_seconds)
            if await self._db("schedule_retry", lambda conn: q.schedule_retry(
                    conn, ident, worker, error or "", wait, attempt=attempt)):
                RETRIES.labels(self.channel_key, row.lane).inc()
            log.info("notification.retry", attempts=attempt, wait=round(wait, 3), error=error)
            return None
        status = {Outcome.SENT: "sent", Outcome.BLOCKED: "blocked"}.get(result.outcome, "failed")
        reason = "attempts_exhausted" if result.outcome == Outcome.RETRY else "permanent"
        if status == "failed":
            held = await self._db("dead_letter", lambda conn: q.dead_letter(
                conn, ident, worker, error=error, reason=reason, attempts=attempt))
        else:
            held = await self._db("settle", lambda conn: q.settle(
                conn, ident, worker, status, error=error, provider_message_id=result.provider_message_id))
        if not held:  # another worker took it over after our lease ran out; it records its own outcome
            log.warning("notification.lease_lost", status=status)
            return None
        if status == "sent":
            since = (row.scheduled_for or row.created_at).timestamp()
            DELIVERY_SECONDS.labels(self.channel_key, row.lane).observe(max(0.0, time.time() - since))
        if status == "failed":
            DEAD_LETTERS.labels(self.channel_key, reason).inc()
            entry = {"notification_id": str(ident), "channel": self.channel_key, "reason": reason,
                     "error": (error or "")[:1000], "attempts": str(attempt),
                     "trace_id": row.trace_id}
            await self._redis("dead_letter", lambda: self.redis.xadd(
                dead_letter_stream(stream), entry, maxlen=DEAD_MAXLEN, approximate=True))  # type: ignore[arg-type]
        return NotificationEvent(notification_id=str(ident), status=status, channel=self.channel_key,
                                 reference=row.reference, error=error, attempts=attempt,
                                 provider_message_id=result.provider_message_id, trace_id=row.trace_id)

    async def _ack(self, stream: str, entry_id: bytes) -> None:
        await self._redis("xack", lambda: self.redis.xack(stream, WORKER_GROUP, entry_id))

    # --- background loops -----------------------------------------------------------------------------

    async def _replay_loop(self) -> None:
        """Enqueue what should be on a stream and is not: due scheduled and retried rows, rows whose
        entry Redis lost, rows whose sender died (see `q.due_for_enqueue`); then trim what was read."""
        while not self._stopping.is_set():
            try:
                groups = await self._redis("xinfo_groups", self._worker_groups)
                replay = functools.partial(self._replay_once, lost_before=self._lost_before(groups))
                count = await self._db("replay", replay)
                if count:
                    REPLAYED.labels(self.channel_key).inc(count)
                    log.info("worker.replayed", count=count)
                await self._trim_read_entries(groups)
            except Exception as exc:  # the loop outlives any one failure
                log.warning("worker.replay_failed", error=repr(exc)[:300])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.options.replay_interval_seconds)

    async def _worker_groups(self) -> dict[str, dict[str, Any] | None]:
        """Per lane, the group `workers` as XINFO GROUPS shows it; None when the stream or the group is
        missing (Redis lost its data, or nothing was ever put there)."""
        found: dict[str, dict[str, Any] | None] = {}
        for lane in LANES:
            try:
                groups: Any = await self.redis.xinfo_groups(notify_stream(self.channel_key, lane))
            except aioredis.ResponseError:  # no such stream
                groups = []
            found[lane] = next((g for g in groups if text(g.get("name")) == WORKER_GROUP), None)
        return found

    def _lost_before(self, groups: dict[str, dict[str, Any] | None]) -> dict[str, datetime]:
        """Per lane, the time before which a row put on the lane's stream and still `queued` lost its
        entry. Entries wait in order, so while the group has unread entries only a row older than
        the newest one it has read (less `replay_after`, for clocks and the read-to-claim step) can
        have been lost; a row behind a backlog is waiting, not lost, and is not added again. With
        nothing unread (or no stream or group: Redis lost its data) any row put there more than
        `replay_after` ago was lost."""
        margin = timedelta(seconds=self.options.replay_after_seconds)
        now = datetime.now(UTC)
        found: dict[str, datetime] = {}
        for lane in LANES:
            before = now - margin
            group = groups.get(lane)
            if group is not None and group.get("lag") != 0:
                last_read_ms = int(text(group.get("last-delivered-id")).partition("-")[0] or 0)
                before = min(before, datetime.fromtimestamp(last_read_ms / 1000, UTC) - margin)
            found[lane] = before
        return found

    async def _trim_read_entries(self, groups: dict[str, dict[str, Any] | None]) -> None:
        """Drop the entries of this worker's streams that the group has read and acknowledged (older
        than both its last read entry and its oldest pending one): the rows in Postgres are the
        record, and a stream that kept every entry would grow with every notification ever sent."""
        for lane, stream in self.streams.items():
            group = groups.get(lane)
            last = text(group.get("last-delivered-id")) if group is not None else ""
            if not last or last == "0-0":
                continue
            pending: Any = await self.redis.xpending(stream, WORKER_GROUP)
            oldest = text(pending.get("min")) if pending.get("pending") else None
            keep_from = min(last, oldest, key=_entry_order) if oldest else last
            await self.redis.xtrim(stream, minid=keep_from, approximate=False)

    async def _replay_once(self, conn: asyncpg.Connection, lost_before: dict[str, datetime]) -> int:
        async with conn.transaction():
            rows = await q.due_for_enqueue(conn, self.channel_id, lost_before, 500)
            if not rows:
                return 0
            await add_tasks(self.redis, [row.entry() for row in rows])
            await q.mark_enqueued(conn, [row.id for row in rows])
        return len(rows)

    async def _reclaim_loop(self) -> None:
        """Take over entries a dead worker read and never acknowledged, once idle for the lease."""
        idle_ms = int(self.options.lease_seconds * 1000)
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.options.lease_seconds / 3)
            if self._stopping.is_set():
                return
            for stream in self.streams.values():
                try:
                    reply = await self.redis.xautoclaim(stream, WORKER_GROUP, self.consumer, idle_ms,
                                                        start_id="0-0", count=500)
                except Exception as exc:
                    log.warning("worker.reclaim_failed", stream=stream, error=repr(exc)[:300])
                    continue
                claimed = reply[1] if len(reply) > 1 else []
                if claimed:
                    log.info("worker.reclaimed", stream=stream, count=len(claimed))
                    await self._dispatch([(stream, claimed)])
                await self._forget_departed(stream)

    async def _forget_departed(self, stream: str) -> None:
        await forget_departed(self.redis, stream, self.consumer, self.options.stale_consumer_seconds)


def _entry_order(entry_id: str) -> tuple[int, int]:
    """A stream entry id (`<ms>-<seq>`) in the order Redis gives ids."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
