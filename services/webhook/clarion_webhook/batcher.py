"""Group commit for the accept path: notifications that arrive while a write is under way are stored
together by the next one, in one INSERT, and put on their streams in one Redis round trip.

Each accepted notification costs Postgres a transaction and Redis a command; at thousands a second
the round trips, not the work, are what the API process spends its time on. An accept never waits for
a batch to fill: with a writer free it is written at once, alone; only while all `writers` are busy do
the ones that arrive meanwhile queue, and the next free writer takes up to `max_batch` of them. So a
quiet API answers as fast as before and a busy one does a fraction of the round trips.

Every caller still gets its own outcome: its row, or the exception the write raised (the caller turns
an outage into its own answer). A batch refused for what is in it rather than for an outage (a
constraint, say) is written again one row at a time, so one bad row fails only its own request.
"""

from __future__ import annotations

import asyncio
from collections import deque

import asyncpg
import redis.asyncio as aioredis
from clarion.db import notifications as q
from clarion.logging import get_logger
from clarion.metrics import counter
from clarion.streams import add_tasks

log = get_logger("clarion.webhook.batcher")

WRITES = counter("clarion_api_accept_writes_total",
                 "INSERTs of the accept path's group commit (accepted / writes = the batch size).")

_Waiter = tuple[q.NewNotification, "asyncio.Future[q.Row]"]


class AcceptBatcher:
    """Stores `NewNotification`s by group commit and enqueues the queued ones; see the module doc."""

    def __init__(self, db: asyncpg.Pool, redis: aioredis.Redis, *, writers: int = 4,
                 max_batch: int = 256) -> None:
        self._db, self._redis = db, redis
        self._writers, self._max_batch = writers, max_batch
        self._busy = 0
        self._pending: deque[_Waiter] = deque()
        self._tasks: set[asyncio.Task[None]] = set()

    async def accept(self, new: q.NewNotification) -> q.Row:
        """Store `new` (queued on its stream unless scheduled); raises what its write raised."""
        future: asyncio.Future[q.Row] = asyncio.get_running_loop().create_future()
        self._pending.append((new, future))
        if self._busy < self._writers:
            self._busy += 1
            task = asyncio.create_task(self._write())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _write(self) -> None:
        try:
            while self._pending:
                batch = [self._pending.popleft() for _ in range(min(self._max_batch, len(self._pending)))]
                await self._store(batch)
        finally:
            self._busy -= 1

    async def _store(self, batch: list[_Waiter]) -> None:
        WRITES.inc()
        try:
            async with self._db.acquire() as conn:
                rows = await q.accept_many(conn, [new for new, _ in batch])
        except asyncpg.IntegrityConstraintViolationError as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            for waiter in batch:  # one row at a time: only a bad row's own request fails
                await self._store([waiter])
            return
        except BaseException as exc:
            _fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        queued = [row for row in rows if row.status == "queued"]
        if queued:
            await self._enqueue(queued)
        for (_, future), row in zip(batch, rows, strict=True):
            if not future.done():
                future.set_result(row)

    async def _enqueue(self, rows: list[q.Row]) -> None:
        """Each row's id on its lane's stream, one round trip; on failure the replayer does it later."""
        try:
            await add_tasks(self._redis, [row.entry() for row in rows])
        except Exception as exc:  # the rows are stored: a 2xx is still the truth
            log.warning("notification_enqueue_failed", count=len(rows), error=type(exc).__name__)

    async def close(self) -> None:
        """Wait for the writes under way (their callers are owed an answer)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _fail(batch: list[_Waiter], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
