"""The campaign sender: one shard of one campaign, run by one pod of the indexed sender Job.

Pipeline (all in one event loop):

- at start the sender takes back what earlier senders of its shard index held (a killed pod's
  replacement does not wait out its predecessor's lease: the Job runs one pod per index at a time);
- the claimer claims the shard's due pending deliveries `batchSize` at a time into a local queue,
  releases rows whose lease ran out, renews our own lease, and reads the campaign phase between
  batches. When its own shard has nothing due it helps with the other shards (their pending rows
  and lapsed leases), and it exits only when the whole campaign is settled. The limiter is shared
  in Redis, so helping changes who sends, not how fast;
- the dispatcher takes as many queued deliveries as the concurrency window has room for, reserves
  their send slots from the shared Redis limiter in one call, and starts one task per delivery that
  sleeps until its slot and sends. A task that wakes up more than `late_slot_seconds` after its slot
  (the process stalled; 5 slots' worth, at least 20 ms) gives the slot back and asks again (at most
  3 times), so a stall does not turn into a burst. When the limiter answers "busy" (the bot's slots
  are held up to the priority horizon, docs/sender.md), the rest of the chunk goes back to the front
  of the queue and the dispatcher asks again when the next slot enters the horizon. The window
  (sends reserved or in flight) is sized so that rate x round trip is covered: at 1000 msg/s and
  50 ms, 50 requests are in the air at any moment;
- results go to a buffer that the flusher writes in one transaction every `batchSize` results or
  100 ms. A delivery is `sent` only after Telegram answered ok.

A 429 pauses the whole bot in Redis (every pod waits, reserved slots are dropped and asked for
again), and the delivery goes back to the queue without counting an attempt.

A Postgres or Redis outage (a restart, a failover, Redis losing its data and with it the namespace's
ACL user until the operator restores it) stops no one: each database call and limiter call waits for
its server (`clarion.outages.ride_out`, up to `outage_tolerance` seconds) and goes on. Requests in the
air finish, and their results stay in memory until Postgres takes them. An outage longer than the
claim lease must not turn into duplicates, so:
- the sender sends only while its lease is surely its own (renewed less than half a lease ago); during
  a longer outage it holds back what it has queued;
- once Postgres answers again, a sender whose lease may have run out drops what it has queued and
  gives its claims back (after recording what it sent), instead of sending rows another sender may
  have claimed meanwhile;
- for `RELEASE_AFTER_OUTAGE` seconds after it got through an outage, a sender returns no one else's
  lapsed rows: their holder came back at the same moment and first records what it sent. When the phase is no
longer Sending, or on SIGTERM, the sender stops claiming, drops the slots it has not used yet,
lets requests in the air finish, records them, and releases what it still holds back to pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import asyncpg
import redis.asyncio as aioredis
import structlog
from clarion.db import campaigns as q
from clarion.metrics import counter, gauge, histogram
from clarion.models import Delivery, Message
from clarion.outages import redis_unavailable, ride_out
from clarion.streams import CAMPAIGN_DELIVERIES_STREAM, dead_letter_stream
from clarion.telegram.botapi import BotApi
from clarion.telegram.errors import Outcome, backoff_seconds, classify
from clarion.telegram.limiter import RateLimiter

from clarion_senders.render import MessageRenderer

log = structlog.get_logger("clarion.sender")

MESSAGES = counter("clarion_messages_sent_total", "Bot API send results of campaign senders.",
                   ["channel", "result"])
SEND_LATENCY = histogram("clarion_send_latency_seconds", "Round trip of one Bot API send call.", ["channel"])
LIMITER_WAIT = histogram("clarion_limiter_wait_seconds", "Time a send waited for its rate-limit slot.",
                         ["channel"],
                         buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0))
DELIVERIES = gauge("clarion_campaign_deliveries",
                   "Deliveries of the shard this sender runs, by status (sum over pods per campaign).",
                   ["campaign", "status"])

FLUSH_INTERVAL = 0.1
PHASE_CHECK_INTERVAL = 0.5
GAUGE_REFRESH = 5.0  # an idle sender re-reads its shard's counts at most this often
IDLE_POLL = 0.5
DEAD_LETTER_MAXLEN = 100_000
CHUNK_LINGER = 0.002
MAX_FORFEITS = 3
RELEASE_AFTER_OUTAGE = 15.0  # seconds: longer than ride_out's largest wait (5 s) plus a flush

T = TypeVar("T")


class FatalSendError(RuntimeError):
    """Sending cannot go on (the bot token is refused)."""


@dataclass(frozen=True)
class SenderOptions:
    """How one sender works: from the campaign's spec.delivery and the pod's settings."""

    batch_size: int
    max_attempts: int
    retry_backoff_seconds: float
    paid_broadcast: bool
    concurrency: int
    lease_seconds: float
    request_timeout: float
    late_slot_seconds: float
    outage_tolerance: float = 300.0

    @classmethod
    def from_delivery(cls, delivery: Delivery, *, rate: float, concurrency: int = 0,
                      lease_seconds: float = 15.0, request_timeout: float = 30.0,
                      outage_tolerance: float = 300.0) -> SenderOptions:
        """`concurrency` 0: rate x 0.5 s, at least 4 and at most 2000 (covers round trips up to ~0.5 s)."""
        window = concurrency or min(2000, max(4, math.ceil(rate * 0.5)))
        # A send may lag its slot by the time Telegram's burst allowance (about 5 messages) covers;
        # above 1000/s there is no Telegram limit to protect, and giving slots back would only churn.
        late = max(0.02, 5 / rate) if rate <= 1000 else math.inf
        return cls(
            batch_size=delivery.batch_size,
            max_attempts=delivery.max_attempts,
            retry_backoff_seconds=float(delivery.retry_backoff_seconds),
            paid_broadcast=delivery.paid_broadcast,
            concurrency=window,
            lease_seconds=lease_seconds,
            request_timeout=request_timeout,
            late_slot_seconds=late,
            outage_tolerance=outage_tolerance,
        )


@dataclass
class _Item:
    chat_id: int
    language: str | None
    attempts: int
    shard: int  # the row's shard: ours, or one we help with
    target: int = 0  # the chat the message goes to (differs after a group migration)
    forfeits: int = 0  # slots given back because this process woke up too late for them
    generation: int = 0  # the claims it came with; items of an older generation were given back

    def __post_init__(self) -> None:
        if not self.target:
            self.target = self.chat_id


@dataclass
class _Shard:
    """What the sender knows about its shard's rows, for the progress gauge: read from Postgres at
    start, when idle (other shards' senders may have helped) and at stop; moved along as it works."""

    shard: int
    by_status: dict[str, int] = field(default_factory=dict)
    read_at: float = 0.0

    def read(self, counts: q.CampaignCounts) -> None:
        self.by_status = {s: counts.of(s) for s in q.DELIVERY_STATUSES}
        self.read_at = time.monotonic()

    def move(self, item: _Item, source: str, target: str) -> None:
        if item.shard == self.shard:
            self.by_status[source] = self.by_status.get(source, 0) - 1
            self.by_status[target] = self.by_status.get(target, 0) + 1


class _Window:
    """Room for sends reserved or in flight; taken in chunks, given back one at a time."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._freed = asyncio.Event()

    def release(self, n: int = 1) -> None:
        self.free += n
        self._freed.set()

    async def take(self, want: int, at_least: int, linger: float) -> int:
        """Take up to `want` (>= 1) permits once one is free, waiting up to `linger` for `at_least`."""
        while self.free < 1:
            self._freed.clear()
            await self._freed.wait()
        if self.free < min(want, at_least):
            deadline = time.monotonic() + linger
            while self.free < min(want, at_least) and (left := deadline - time.monotonic()) > 0:
                self._freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._freed.wait(), timeout=left)
        taken = min(max(want, 1), self.free)
        self.free -= taken
        return taken


class CampaignSender:
    """Sends one shard of one campaign, then helps with the others, until the campaign is settled,
    paused, cancelled or the sender is stopped."""

    def __init__(self, *, pool: asyncpg.Pool, redis: aioredis.Redis, api: BotApi, campaign: q.CampaignRow,
                 channel: q.SendingChannel, message: Message, shard: int, worker: str, limiter: RateLimiter,
                 options: SenderOptions) -> None:
        self.pool = pool
        self.redis = redis
        self.api = api
        self.campaign = campaign
        self.channel = channel
        self.shard = shard
        self.worker = worker
        self.limiter = limiter
        self.options = options
        self.renderer = MessageRenderer(message, paid_broadcast=options.paid_broadcast)
        self._queue: deque[_Item] = deque()
        self._room = _Window(options.concurrency)
        self._work = asyncio.Event()  # the queue got deliveries, or a stop was requested
        self._need = asyncio.Event()  # the queue fell below one batch
        self._stopping = asyncio.Event()
        self._chunk = max(1, options.concurrency // 8) if options.concurrency >= 64 else 1
        self._waiting: set[asyncio.Task[None]] = set()
        self._sending: set[asyncio.Task[None]] = set()
        self._held = 0  # claimed and not yet recorded
        self._results = q.Results()
        self._dead: list[dict[str, str]] = []
        self._flushed = asyncio.Event()
        self._fatal: BaseException | None = None
        self._stop_reason = ""
        self._messages = {o: MESSAGES.labels(channel.name, o)
                          for o in ("sent", "blocked", "failed", "retry", "rate_limited", "migrated")}
        self._latency = SEND_LATENCY.labels(channel.name)
        self._wait = LIMITER_WAIT.labels(channel.name)
        self._shard_state = _Shard(shard)
        self._renewed_at = time.monotonic()  # when the lease on everything we hold was last renewed
        self._generation = 0  # bumped when everything held was given back after a lapsed lease
        self._recovered_at = -math.inf  # when a database call last got through after an outage

    def stop(self, reason: str = "signal") -> None:
        """Stop claiming; let requests in the air finish; release the rest (idempotent)."""
        if not self._stopping.is_set():
            self._stop_reason = reason
            self._stopping.set()
            self._work.set()
            self._need.set()

    async def run(self) -> str:
        """Send until done; return why it stopped: "settled", or the phase / signal that stopped it."""
        c = self.campaign
        structlog.contextvars.bind_contextvars(campaign=c.key, campaign_id=c.id, shard=self.shard)
        taken_over = await self._db("take_over",
                                    lambda conn: q.take_over(conn, c.id, self.shard, self.worker))
        counts = await self._db("shard_counts", lambda conn: q.shard_counts(conn, c.id, self.shard))
        self._shard_state.read(counts)
        log.info("sender.start", total=counts.total, pending=counts.pending, taken_over=taken_over,
                 concurrency=self.options.concurrency, paid=self.options.paid_broadcast)
        started, cpu = time.monotonic(), time.process_time()
        dispatcher = asyncio.create_task(self._dispatch(), name="dispatcher")
        flusher = asyncio.create_task(self._flush_loop(), name="flusher")
        for task in (dispatcher, flusher):
            task.add_done_callback(self._helper_ended)
        try:
            reason = await self._claim_loop()
        finally:
            self.stop(self._stop_reason or "error")
            await _finish(dispatcher)
            await self._drain()
            await _finish(flusher)
            await self._flush()
            released = await self._db("release_claims",
                                      lambda conn: q.release_claims(conn, c.id, self.worker))
            self._shard_state.read(await self._db("shard_counts",
                                                  lambda conn: q.shard_counts(conn, c.id, self.shard)))
            self._publish_gauges()
            log.info("sender.stop", reason=self._stop_reason, released=released,
                     seconds=round(time.monotonic() - started, 3),
                     cpu_seconds=round(time.process_time() - cpu, 3), **self._shard_state.by_status)
        if self._fatal is not None:
            raise FatalSendError(str(self._fatal)) from self._fatal
        return reason

    async def _db(self, what: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """`work` on a pooled connection, waiting out a Postgres outage (each call is idempotent)."""
        tries = 0

        async def once() -> T:
            nonlocal tries
            tries += 1
            async with self.pool.acquire() as conn:
                return await work(conn)

        result = await ride_out(what, once, tolerance=self.options.outage_tolerance)
        if tries > 1:
            self._recovered_at = time.monotonic()
        return result

    def _lease_sure(self) -> bool:
        """Our claims cannot have lapsed yet: the lease was renewed less than half a lease ago."""
        return time.monotonic() - self._renewed_at < self.options.lease_seconds / 2

    async def _renew(self) -> None:
        """Renew the lease on what we hold; if it may have lapsed meanwhile (an outage), give it all back."""
        c, opts = self.campaign, self.options
        asked = time.monotonic()
        lapsed = asked - self._renewed_at >= opts.lease_seconds
        if not lapsed:
            await self._db("extend_claims", lambda conn: q.extend_claims(conn, c.id, self.worker,
                                                                          opts.lease_seconds))
            self._renewed_at = asked
            return
        # Another sender may have returned and claimed our rows: send none of what is queued.
        await self._drain()
        await self._flush()
        dropped = len(self._queue)
        self._queue.clear()
        self._generation += 1  # slots still waiting for a requeue are dropped when they fire
        self._held = 0
        released = await self._db("release_claims", lambda conn: q.release_claims(conn, c.id, self.worker))
        self._renewed_at = time.monotonic()
        log.warning("sender.lease_lapsed", dropped=dropped, released=released)

    def _helper_ended(self, task: asyncio.Task[None]) -> None:
        """The dispatcher or the flusher must not die alone: the claim loop would wait for it forever."""
        exc = None if task.cancelled() else task.exception()
        if exc is None:
            return
        log.error("sender.task_failed", task=task.get_name(), error=repr(exc)[:500])
        if self._fatal is None:
            self._fatal = exc
        self.stop("error")

    # --- claiming ---------------------------------------------------------------------------------

    async def _claim_loop(self) -> str:
        c, opts = self.campaign, self.options
        last_phase_check = 0.0
        last_lease = time.monotonic()
        while not self._stopping.is_set():
            now = time.monotonic()
            if now - last_phase_check >= PHASE_CHECK_INTERVAL:
                last_phase_check = now
                phase = await self._db("campaign_phase", lambda conn: q.campaign_phase(conn, c.id))
                if phase != "Sending":
                    self.stop(f"phase {phase}")
                    return self._stop_reason
            if now - last_lease >= opts.lease_seconds / 3 or not self._lease_sure():
                last_lease = now
                await self._renew()
            if len(self._queue) < opts.batch_size:
                claimed = await self._claim()
                if claimed:
                    self._held += len(claimed)
                    for d in claimed:
                        item = _Item(d.chat_id, d.language, d.attempts, d.shard, generation=self._generation)
                        self._shard_state.move(item, "pending", "sending")
                        self._queue.append(item)
                    self._work.set()
                    continue
                if self._held == 0 and not self._queue:
                    if await self._db("is_settled", lambda conn: q.is_settled(conn, c.id)):
                        self.stop("settled")
                        return "settled"
                    if time.monotonic() - self._shard_state.read_at >= GAUGE_REFRESH:
                        self._shard_state.read(await self._db(
                            "shard_counts", lambda conn: q.shard_counts(conn, c.id, self.shard)))
                    due = await self._db("next_attempt_at", lambda conn: q.next_attempt_at(conn, c.id))
                    pause = IDLE_POLL
                    if due is not None:
                        pause = min(IDLE_POLL, max(0.0, (due - datetime.now(UTC)).total_seconds()))
                    await self._sleep(pause)
                    continue
            self._need.clear()
            if len(self._queue) >= opts.batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._need.wait(), timeout=PHASE_CHECK_INTERVAL)
            else:
                await self._sleep(IDLE_POLL / 10)
        return self._stop_reason

    async def _claim(self) -> list[q.Claimed]:
        """Due rows of our shard; when it has none, of the others (after returning lapsed claims)."""
        c, opts = self.campaign, self.options

        tries = 0

        async def claim(conn: asyncpg.Connection) -> list[q.Claimed]:
            nonlocal tries
            tries += 1
            # Right after an outage the holders of lapsed rows are back too, recording what they sent.
            release = tries == 1 and time.monotonic() - self._recovered_at >= RELEASE_AFTER_OUTAGE
            if release:
                await q.release_expired(conn, c.id, self.shard)
            claimed = await q.claim(conn, c.id, self.shard, opts.batch_size, self.worker, opts.lease_seconds)
            if claimed:
                return claimed
            if release:
                await q.release_expired(conn, c.id)
            return await q.claim(conn, c.id, self.shard, opts.batch_size, self.worker, opts.lease_seconds,
                                 other_shards=True)

        return await self._db("claim", claim)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early when a stop is requested."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    # --- dispatching --------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while not self._stopping.is_set():
            if not self._queue:
                self._work.clear()
                await self._work.wait()
                continue
            paused = self.limiter.paused_for()
            if paused > 0:
                await self._sleep(paused)
                continue
            if not self._lease_sure():  # Postgres has not renewed our claims: send none of them
                await self._sleep(0.05)
                continue
            # One limiter call per chunk of free window, not per message: wait a moment for a few
            # permits when only one is free (at high rates only; at 30/s the chunk is one).
            taken = await self._room.take(min(len(self._queue), 256), self._chunk, CHUNK_LINGER)
            batch = [self._queue.popleft() for _ in range(min(taken, len(self._queue)))]
            if len(batch) < taken:
                self._room.release(taken - len(batch))
            if not batch:
                continue
            if len(self._queue) < self.options.batch_size:
                self._need.set()
            try:
                grants = await ride_out("limiter.reserve", functools.partial(
                    self.limiter.reserve, [i.target for i in batch], paid=self.options.paid_broadcast),
                    tolerance=self.options.outage_tolerance)
            except BaseException:
                self._queue.extendleft(reversed(batch))
                self._room.release(len(batch))
                raise
            asked = time.monotonic()
            busy: list[_Item] = []
            for item, grant in zip(batch, grants, strict=True):
                if grant.granted:
                    task = asyncio.create_task(self._send_at(item, asked + grant.delay, asked))
                    self._waiting.add(task)
                    task.add_done_callback(self._waiting.discard)
                elif grant.busy:
                    busy.append(item)
                else:
                    self._room.release()
                    asyncio.get_running_loop().call_later(grant.delay, self._requeue, item)
            if busy:  # the bot's slots are held up to the horizon: ask again once the next one is in it
                self._queue.extendleft(reversed(busy))
                self._room.release(len(busy))
                await self._sleep(grants[-1].delay)

    def _requeue(self, item: _Item) -> None:
        if item.generation != self._generation:
            return  # given back with everything we held (a lapsed lease): another sender has it
        self._queue.appendleft(item)
        self._work.set()

    async def _send_at(self, item: _Item, at: float, asked: float) -> None:
        try:
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.limiter.paused_for() > 0 or self._stopping.is_set() or not self._lease_sure():
                self._requeue(item)  # reserved before a pause, a stop or an outage: ask again
                return
            if time.monotonic() - at > self.options.late_slot_seconds and item.forfeits < MAX_FORFEITS:
                item.forfeits += 1  # sending now would bunch up with the sends after this slot
                self._requeue(item)
                return
            self._wait.observe(time.monotonic() - asked)
            task = asyncio.current_task()
            assert task is not None
            self._waiting.discard(task)
            self._sending.add(task)
            try:
                await self._send(item)
            finally:
                self._sending.discard(task)
        except asyncio.CancelledError:
            self._requeue(item)
            raise
        finally:
            self._room.release()

    async def _send(self, item: _Item) -> None:
        rendered = self.renderer.for_language(item.language)
        started = time.monotonic()
        try:
            result = await self.api.call_json(rendered.method, rendered.body(item.target))
        except Exception as exc:  # every failure is classified; nothing escapes the task
            self._latency.observe(time.monotonic() - started)
            await self._failed(item, exc)
            return
        self._latency.observe(time.monotonic() - started)
        self._messages["sent"].inc()
        delivered = item.target if item.target != item.chat_id else None
        message_id = result.get("message_id") if isinstance(result, dict) else None
        self._results.sent.append((item.chat_id, message_id, datetime.now(UTC), delivered))
        self._shard_state.move(item, "sending", "sent")
        self._recorded()

    async def _failed(self, item: _Item, exc: BaseException) -> None:
        found = classify(exc)
        outcome = found.outcome
        if outcome is Outcome.RATE_LIMITED:
            self._messages["rate_limited"].inc()
            log.warning("sender.rate_limited", retry_after=found.retry_after)
            try:
                await self.limiter.pause(found.retry_after)
            except Exception as pause_error:  # this process pauses anyway; the others see their own 429
                if not redis_unavailable(pause_error):
                    raise
                log.warning("sender.pause_not_shared", error=repr(pause_error)[:300])
            self._requeue(item)
            return
        first_move = item.target == item.chat_id
        if outcome is Outcome.MIGRATED and found.migrate_to_chat_id is not None and first_move:
            self._messages["migrated"].inc()
            self._results.migrated.append((item.chat_id, found.migrate_to_chat_id))
            item.target = found.migrate_to_chat_id
            self._requeue(item)
            return
        if outcome is Outcome.FATAL:
            self._fatal = exc
            self._requeue(item)
            self.stop("fatal")
            return
        if outcome is Outcome.BLOCKED:
            self._messages["blocked"].inc()
            self._results.blocked.append((item.chat_id, found.reason or "forbidden", found.error))
            self._shard_state.move(item, "sending", "blocked")
        elif outcome is Outcome.RETRY and item.attempts + 1 < self.options.max_attempts:
            self._messages["retry"].inc()
            wait = backoff_seconds(item.attempts + 1, self.options.retry_backoff_seconds)
            due = datetime.now(UTC) + timedelta(seconds=wait)
            self._results.retry.append((item.chat_id, found.error, due))
            self._shard_state.move(item, "sending", "pending")
        else:
            self._messages["failed"].inc()
            self._results.failed.append((item.chat_id, found.error))
            self._shard_state.move(item, "sending", "failed")
            if outcome is Outcome.RETRY or outcome is Outcome.MIGRATED:
                self._dead.append({"campaign_id": str(self.campaign.id), "campaign": self.campaign.key,
                                   "chat_id": str(item.chat_id), "attempts": str(item.attempts + 1),
                                   "error": found.error})
        self._recorded()

    def _recorded(self) -> None:
        self._held -= 1
        if len(self._results) >= self.options.batch_size:
            self._flushed.set()

    async def _drain(self) -> None:
        """Drop unused slots (their deliveries go back to the queue) and wait for requests in the air."""
        for task in list(self._waiting):
            task.cancel()
        await asyncio.gather(*self._waiting, *self._sending, return_exceptions=True)

    # --- recording --------------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flushed.wait(), timeout=FLUSH_INTERVAL)
            self._flushed.clear()
            await self._flush()

    async def _flush(self) -> None:
        results, self._results = self._results, q.Results()
        dead, self._dead = self._dead, []
        if len(results) or results.migrated:
            c = self.campaign
            try:
                await self._db("record_results",
                               lambda conn: q.record_results(conn, c.id, c.channel_id, self.worker, results))
            except BaseException:
                self._results = _merge(results, self._results)
                self._dead = dead + self._dead
                raise
        if dead:
            await ride_out("dead_letters", functools.partial(self._dead_letter, dead),
                           tolerance=self.options.outage_tolerance)
        self._publish_gauges()

    async def _dead_letter(self, dead: list[dict[str, str]]) -> None:
        stream = dead_letter_stream(CAMPAIGN_DELIVERIES_STREAM)
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry in dead:
                pipe.xadd(stream, entry, maxlen=DEAD_LETTER_MAXLEN, approximate=True)  # type: ignore[arg-type]
            await pipe.execute()

    def _publish_gauges(self) -> None:
        for status, n in self._shard_state.by_status.items():
            DELIVERIES.labels(self.campaign.key, status).set(n)


async def _finish(task: asyncio.Task[None]) -> None:
    """Cancel a helper task and wait for it; its failure was already taken by `_helper_ended`."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def _merge(first: q.Results, second: q.Results) -> q.Results:
    return q.Results(sent=first.sent + second.sent, blocked=first.blocked + second.blocked,
                     failed=first.failed + second.failed, retry=first.retry + second.retry,
                     migrated=first.migrated + second.migrated)
