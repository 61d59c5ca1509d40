"""The group-maintenance worker lane (ADR 0010): `GroupLaneConsumer` reads `GroupTask` entries of one
channel's `notify:<channel>:group-maintenance` through the consumer group `workers` and hands each to
a handler (`GroupTaskHandler`: `async def handle(task)`; the ManagedGroup maintenance itself).

For each entry:

1. its attempt is counted first (`<stream>:attempts`, a hash by entry id, shared by every consumer),
   so an entry that kills its consumer every time is dead-lettered too instead of looping for ever;
2. the handler runs; while it does, the entry's idle time is reset every third of the lease, so a
   long sweep is not taken over by another consumer;
3. it returned: XACK (and the attempt count is dropped). It raised: tried again after a backoff in
   the same consumer, up to `max_attempts` in all, then the entry goes to `<stream>:dead` with the
   error and is acknowledged. An entry that is no GroupTask is dead-lettered at once.

A consumer that dies leaves its entries pending: the others take them over (XAUTOCLAIM) once idle
for the lease, and go on counting their attempts.

Stopping (SIGTERM), as the notification worker does: it reads nothing more; handlers under way get
`stop_grace_seconds` to finish (and are acknowledged); the ones still running after that are
cancelled and stay pending (their attempt uncounted) for another consumer; with nothing pending the
consumer leaves the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
import structlog
from clarion.metrics import counter
from clarion.outages import ride_out
from clarion.streams import WORKER_GROUP, GroupTask, attempts_key, dead_letter_stream
from clarion.telegram.errors import backoff_seconds
from pydantic import ValidationError

from clarion_senders.consumer_groups import ensure_group, forget_departed, keep_pending, leave_group

log = structlog.get_logger("clarion.worker.group_lanes")

T = TypeVar("T")
DEAD_MAXLEN = 100_000

HANDLED = counter("clarion_group_tasks_total", "Group-maintenance entries finished by workers, by kind and "
                  "result (done, retried, dead_lettered).", ["channel", "kind", "result"])


class GroupTaskHandler(Protocol):
    """Does one unit of group maintenance; raises when it could not (the entry is tried again)."""

    async def handle(self, task: GroupTask) -> None: ...


@dataclass(frozen=True)
class GroupLaneOptions:
    concurrency: int = 4
    lease_seconds: float = 30.0
    """An entry pending this long on a consumer that stopped touching it is taken over."""
    max_attempts: int = 3
    retry_backoff_seconds: float = 2.0
    block_ms: int = 1000
    stop_grace_seconds: float = 40.0
    stale_consumer_seconds: float = 600.0
    outage_tolerance: float = 300.0


class GroupLaneConsumer:
    """One consumer of one channel's group-maintenance stream; see the module doc."""

    def __init__(self, *, redis: aioredis.Redis, channel_key: str, stream: str, handler: GroupTaskHandler,
                 consumer: str, options: GroupLaneOptions) -> None:
        self.redis, self.channel_key, self.stream = redis, channel_key, stream
        self.handler, self.consumer, self.options = handler, consumer, options
        self._attempts = attempts_key(stream)
        self._slots = asyncio.Semaphore(options.concurrency)
        self._tasks: dict[bytes, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Work until stopped; see the module doc for what a stop finishes."""
        await self._redis("xgroup_create", functools.partial(ensure_group, self.redis, self.stream))
        log.info("group_lane.start", channel=self.channel_key, stream=self.stream, consumer=self.consumer)
        helpers = [asyncio.create_task(self._reclaim_loop(), name="reclaimer"),
                   asyncio.create_task(self._keep_loop(), name="keeper")]
        try:
            await self._dispatch(await self._redis("xreadgroup", functools.partial(
                self.redis.xreadgroup, WORKER_GROUP, self.consumer, {self.stream: "0"}, count=1000)))
            await self._read_loop()
        finally:
            if self._tasks:
                await self._finish_in_flight()
            for task in helpers:
                task.cancel()
            for task in helpers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await leave_group(self.redis, self.stream, self.consumer)
            log.info("group_lane.stop", channel=self.channel_key, consumer=self.consumer)

    async def _redis(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        return await ride_out(what, call, tolerance=self.options.outage_tolerance)

    async def _finish_in_flight(self) -> None:
        _, left = await asyncio.wait(set(self._tasks.values()), timeout=self.options.stop_grace_seconds)
        for task in left:
            task.cancel()
        if left:
            log.info("group_lane.leaving_pending", count=len(left))
            await asyncio.gather(*left, return_exceptions=True)

    # --- reading --------------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while not self._stopping.is_set():
            await self._slots.acquire()  # at least one slot free before reading
            self._slots.release()
            read = functools.partial(self.redis.xreadgroup, WORKER_GROUP, self.consumer, {self.stream: ">"},
                                     count=max(1, self.options.concurrency - len(self._tasks)),
                                     block=self.options.block_ms)
            try:
                reply = await self._redis("xreadgroup", read)
            except aioredis.ResponseError as exc:
                if "NOGROUP" not in str(exc):  # Redis lost its data: the group is gone
                    raise
                await ensure_group(self.redis, self.stream)
                continue
            await self._dispatch(reply)

    async def _dispatch(self, reply: Any) -> None:
        for _, entries in reply or []:
            for entry_id, fields in entries:
                if entry_id in self._tasks:  # reclaimed while this consumer still handles it
                    continue
                if not fields:  # trimmed away while pending
                    await self._finish(entry_id)
                    continue
                await self._slots.acquire()
                task = asyncio.create_task(self._handle(entry_id, fields))
                self._tasks[entry_id] = task
                task.add_done_callback(functools.partial(self._done, entry_id))

    def _done(self, entry_id: bytes, task: asyncio.Task[None]) -> None:
        self._tasks.pop(entry_id, None)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("group_lane.entry_failed", error=repr(task.exception())[:500])

    # --- one entry ------------------------------------------------------------------------------------

    async def _handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            task = GroupTask.from_fields(fields)
        except (KeyError, ValidationError) as exc:
            await self._dead_letter(entry_id, fields, None, "invalid", repr(exc)[:1000], 0)
            return
        structlog.contextvars.bind_contextvars(trace_id=task.trace_id, group_id=task.group_id,
                                               kind=str(task.kind))
        error = "the consumer handling it stopped or died"
        while True:
            attempt = int(await self._redis("hincrby", lambda: self.redis.hincrby(
                self._attempts, entry_id.decode(), 1)))
            if attempt > self.options.max_attempts:
                await self._dead_letter(entry_id, fields, task, "attempts_exhausted", error, attempt - 1)
                return
            try:
                await self.handler.handle(task)
            except asyncio.CancelledError:  # stopping: the entry stays pending, this attempt uncounted
                with contextlib.suppress(Exception):
                    await self.redis.hincrby(self._attempts, entry_id.decode(), -1)
                raise
            except Exception as exc:
                error = repr(exc)[:1000]
                log.warning("group_task.failed", attempt=attempt, error=error)
                if attempt >= self.options.max_attempts:
                    await self._dead_letter(entry_id, fields, task, "attempts_exhausted", error, attempt)
                    return
                HANDLED.labels(self.channel_key, task.kind, "retried").inc()
                await asyncio.sleep(backoff_seconds(attempt, self.options.retry_backoff_seconds))
                continue
            await self._finish(entry_id)
            HANDLED.labels(self.channel_key, task.kind, "done").inc()
            log.info("group_task.done", attempt=attempt)
            return

    async def _finish(self, entry_id: bytes) -> None:
        """XACK the entry and drop its attempt count, in one round trip."""
        async def ack() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(self.stream, WORKER_GROUP, entry_id)
                pipe.hdel(self._attempts, entry_id.decode())
                await pipe.execute()

        await self._redis("xack", ack)

    async def _dead_letter(self, entry_id: bytes, fields: dict[bytes, bytes], task: GroupTask | None,
                           reason: str, error: str, attempts: int) -> None:
        """The entry to `<stream>:dead` with why, acknowledged, its count dropped: in one MULTI."""
        letter = {"entry_id": entry_id, "channel": self.channel_key, "reason": reason, "error": error,
                  "attempts": str(attempts), "task": fields.get(b"e", b""),
                  "trace_id": task.trace_id if task is not None else ""}

        async def move() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(dead_letter_stream(self.stream), letter,  # type: ignore[arg-type]
                          maxlen=DEAD_MAXLEN, approximate=True)
                pipe.xack(self.stream, WORKER_GROUP, entry_id)
                pipe.hdel(self._attempts, entry_id.decode())
                await pipe.execute()

        await self._redis("dead_letter", move)
        HANDLED.labels(self.channel_key, task.kind if task is not None else "invalid", "dead_lettered").inc()
        log.error("group_task.dead_lettered", reason=reason, attempts=attempts, error=error)

    # --- background loops -----------------------------------------------------------------------------

    async def _pause(self, seconds: float) -> bool:
        """Wait `seconds` or until stopped; True when stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    async def _keep_loop(self) -> None:
        """Every third of the lease, reset the idle time of the entries being handled here. It runs
        through the stop, until the handlers still running have finished or been cancelled."""
        while True:
            await asyncio.sleep(self.options.lease_seconds / 3)
            try:
                await keep_pending(self.redis, self.stream, self.consumer, list(self._tasks))
            except Exception as exc:
                log.warning("group_lane.keep_failed", error=repr(exc)[:300])

    async def _reclaim_loop(self) -> None:
        """Take over entries a dead consumer read and never acknowledged, once idle for the lease; remove
        consumers long gone."""
        idle_ms = int(self.options.lease_seconds * 1000)
        while not await self._pause(self.options.lease_seconds / 3):
            try:
                reply = await self.redis.xautoclaim(self.stream, WORKER_GROUP, self.consumer, idle_ms,
                                                    start_id="0-0", count=100)
            except Exception as exc:
                log.warning("group_lane.reclaim_failed", error=repr(exc)[:300])
                continue
            claimed = reply[1] if len(reply) > 1 else []
            if claimed:
                log.info("group_lane.reclaimed", count=len(claimed))
                await self._dispatch([(self.stream, claimed)])
            await forget_departed(self.redis, self.stream, self.consumer, self.options.stale_consumer_seconds)
