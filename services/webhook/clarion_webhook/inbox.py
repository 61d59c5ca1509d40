"""The API's Redis inbox: notifications accepted while Postgres is away, drained into it once it is back.

GC Notify's "a failed database save goes back to the inbox" (docs/notifications.md, "Durability").

Accepting (`Inbox.accept`, called by `POST /api/v1/notifications`):

- Postgres first, within `inbox_db_timeout_seconds`. When it cannot take the row because it is away
  (`clarion.outages.database_unavailable`: refused, reset, timeouts, asyncpg's connection errors; not
  a constraint or data error, which stays a 503), the circuit opens: further accepts go straight to
  the inbox, without waiting on Postgres, until the drainer's probe reaches Postgres again.
- Into the inbox, in one Lua script (atomic): the full record (`InboxEntry`: the row to be, the
  Idempotency-Key record and the answer the client gets) in the hash `api:inbox:entries`, its id on
  the stream `api:inbox`, the key in `api:inbox:idempotency`. The client gets the usual 202, status
  `created`. Bounded: past `inbox_max_entries`, or once the oldest entry is `inbox_max_age_seconds`
  old, 503 with Retry-After and nothing stored. Redis failing too: 503, nothing stored.
- Idempotency-Key: a key already in the inbox replays (or 422s) from there, in the same script, and
  is checked before Postgres too, so a replay after Postgres is back but before the drain does not
  create a second notification. A key first used before the outage lives only in Postgres: its replay
  during the outage is accepted into the inbox, and the drain keeps only the first (see below).

Draining (`InboxDrainer`, one task in every webhook replica): the stream's consumer group `drainers`.
A drainer takes entries (its own pending ones first, then those of a drainer idle for
`inbox_claim_idle_seconds` by XAUTOCLAIM, then new ones), stores a batch in one transaction with
`accept_drained` (idempotent by id), puts queued rows on their lane streams (`enqueue`), then removes
the entries (XACK, XDEL, HDEL in one script). A replica killed anywhere in that leaves its entries
pending; another replica (or its restart) claims them and stores them again, which reads back the
rows already there. Two drainers on one entry (a slow one claimed from) likewise store it once; at
worst its stream entry is written twice, which costs one skipped claim in the worker.

Drain outcomes: `stored`; `duplicate` (its Idempotency-Key was taken in Postgres by another
notification with the same request: the first one stands, this one is dropped, logged); `dead` (Postgres
refused the row itself, e.g. its channel row is gone: kept on `api:inbox:dead` with the error, logged).
An entry whose key was taken with another request is stored without the key's record.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import redis.asyncio as aioredis
from clarion.db import notifications as q
from clarion.logging import get_logger
from clarion.metrics import counter, gauge
from clarion.outages import database_unavailable
from clarion.streams import add_tasks, dead_letter_stream
from pydantic import BaseModel, ConfigDict
from redis.exceptions import RedisError, ResponseError

from clarion_webhook.errors import DATABASE_ERRORS, Refused
from clarion_webhook.settings import WebhookSettings

log = get_logger("clarion.webhook.inbox")

INBOX_STREAM = "api:inbox"
INBOX_ENTRIES = "api:inbox:entries"
INBOX_IDEMPOTENCY = "api:inbox:idempotency"
INBOX_DEAD = dead_letter_stream(INBOX_STREAM)
DRAIN_GROUP = "drainers"
#: A drain batch's transaction (Postgres is back, but may be slow to take a large backlog).
DRAIN_TIMEOUT_SECONDS = 30.0

DEPTH = gauge("clarion_api_inbox_entries", "Notifications in the API's Redis inbox (all replicas).")
OLDEST = gauge("clarion_api_inbox_oldest_seconds",
               "Age of the oldest entry of the API's Redis inbox; 0 when it is empty.")
CIRCUIT = gauge("clarion_api_inbox_circuit_open",
                "1 while this replica sends accepts straight to the inbox (Postgres away), else 0.")
DRAINED = counter("clarion_api_inbox_drained_total",
                  "Inbox entries drained into Postgres, by result (stored, duplicate, dead).", ["result"])

# KEYS: stream, entries, idempotency. ARGV: id, entry, idempotency field ('' for none), max entries,
# max age (ms). {'stored'}, {'replay', the entry holding the key}, or {'full', why}.
_PUT = """
if ARGV[3] ~= '' then
  local holder = redis.call('HGET', KEYS[3], ARGV[3])
  if holder then
    local entry = redis.call('HGET', KEYS[2], holder)
    if entry then return {'replay', entry} end
  end
end
local depth = redis.call('XLEN', KEYS[1])
if depth >= tonumber(ARGV[4]) then return {'full', 'entries'} end
if depth > 0 then
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1][1]
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now - tonumber(string.match(first, '^(%d+)')) > tonumber(ARGV[5]) then return {'full', 'age'} end
end
redis.call('XADD', KEYS[1], '*', 'n', ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[3], ARGV[3], ARGV[1]) end
return {'stored', ''}
"""

# KEYS: stream, entries, idempotency. ARGV: group, then (stream id, notification id, idempotency field)
# per entry. The key is released only while it still names this entry.
_REMOVE = """
for i = 2, #ARGV, 3 do
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  redis.call('XDEL', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i + 1])
  if ARGV[i + 2] ~= '' and redis.call('HGET', KEYS[3], ARGV[i + 2]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[3], ARGV[i + 2])
  end
end
return 1
"""


class InboxEntry(BaseModel):
    """One accepted notification while Postgres was away: `q.NewNotification`, where it goes, when it
    was accepted, and its Idempotency-Key record with the answer the client got."""

    model_config = ConfigDict(extra="forbid")

    notification: q.NewNotification
    channel_key: str
    accepted_at: datetime
    idempotency_key: str | None = None
    request_sha256: str | None = None
    status_code: int | None = None
    response: dict[str, Any] | None = None
    location: str | None = None

    def idempotency(self) -> q.Idempotency | None:
        if self.idempotency_key is None or self.request_sha256 is None:
            return None
        return q.Idempotency(self.idempotency_key, self.request_sha256, self.status_code, self.response,
                             self.location)

    def row(self) -> q.Row:
        """The notification as the API shows it while it waits here: `created`, no attempt yet."""
        return pending_row(self.notification, self.channel_key, self.accepted_at)

    def idempotency_field(self) -> str:
        if self.idempotency_key is None:
            return ""
        return idempotency_field(self.notification.api_key_id, self.idempotency_key)


def pending_row(new: q.NewNotification, channel_key: str, accepted_at: datetime) -> q.Row:
    return q.Row(id=new.id, channel_id=new.channel_id, channel_key=channel_key, lane=new.lane,
                 recipient=new.recipient, content=new.content, reference=new.reference, status="created",
                 attempts=0, max_attempts=new.max_attempts, last_error=None, provider_message_id=None,
                 trace_id=new.trace_id, scheduled_for=new.scheduled_for, created_at=accepted_at,
                 updated_at=accepted_at, sent_at=None)


def idempotency_field(api_key_id: int | None, key: str) -> str:
    return f"{api_key_id}:{hashlib.sha256(key.encode()).hexdigest()}"


T = TypeVar("T")


class PostgresAway(Exception):
    """Postgres could not be reached in time (the cause is chained); the inbox's circuit is open."""


def postgres_away(exc: BaseException) -> bool:
    """Postgres cannot take a row now (unreachable, dropped us, or slower than our timeout)."""
    return isinstance(exc, TimeoutError) or database_unavailable(exc)


async def enqueue(redis: aioredis.Redis, row: q.Row) -> None:
    """Put the row's id on its lane's stream; on failure the replayer does it later."""
    try:
        await add_tasks(redis, [row.entry()])
    except Exception as exc:  # the row is stored: a 2xx is still the truth
        log.warning("notification_enqueue_failed", notification_id=str(row.id), error=type(exc).__name__)


#: The API's Postgres write of one accept: (row, None) stored, or (None, the key's existing record).
Store = Callable[[], Awaitable[tuple[q.Row | None, q.Idempotency | None]]]


@dataclass(frozen=True)
class Accepted:
    """What became of an accept: the row (stored, or `inboxed`), or the key's existing record."""

    row: q.Row | None
    existing: q.Idempotency | None = None
    inboxed: bool = False


class Inbox:
    """Accepts and reads that go to Postgres, or to the Redis inbox while it is away; the circuit."""

    def __init__(self, db: asyncpg.Pool, redis: aioredis.Redis, settings: WebhookSettings) -> None:
        self.db, self.redis, self.settings = db, redis, settings
        self._put = redis.register_script(_PUT)
        self._open_since: float | None = None
        self.depth: int | None = None  # last seen by the drainer
        CIRCUIT.set_function(lambda: 1.0 if self.circuit_open else 0.0)

    # -- the circuit ------------------------------------------------------------------------------

    @property
    def circuit_open(self) -> bool:
        return self._open_since is not None

    def trip(self, exc: BaseException) -> None:
        if self._open_since is None:
            self._open_since = asyncio.get_running_loop().time()
            log.warning("inbox_circuit_open", error=type(exc).__name__, detail=str(exc)[:200])

    async def _in_postgres(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """`work(conn)` within the Postgres timeout. An error that says Postgres is away trips the circuit
        and is raised as `PostgresAway`; any other is raised as it is."""
        try:
            async with asyncio.timeout(self.settings.inbox_db_timeout_seconds), self.db.acquire() as conn:
                return await work(conn)
        except DATABASE_ERRORS as exc:
            if not postgres_away(exc):
                raise
            self.trip(exc)
            raise PostgresAway from exc

    async def probe(self) -> bool:
        """Close the circuit if Postgres answers now."""
        try:
            async with asyncio.timeout(self.settings.inbox_db_timeout_seconds):
                await self.db.fetchval("SELECT 1")
        except Exception as exc:
            if not postgres_away(exc):
                raise
            return False
        if self._open_since is not None:
            log.info("inbox_circuit_closed",
                     open_seconds=round(asyncio.get_running_loop().time() - self._open_since, 3))
            self._open_since = None
        return True

    # -- accepting --------------------------------------------------------------------------------

    async def accept(self, new: q.NewNotification, channel_key: str, idempotency: q.Idempotency | None,
                     answer: q.Answer, store: Store) -> Accepted:
        """Store `new` in Postgres with `store()` (the API's write: `q.accept` or its batcher), or in the
        inbox while Postgres is away; see the module doc.

        Raises `Refused` 503 when neither can take it, or the inbox is full."""
        if idempotency is not None:
            inboxed = await self._inboxed_idempotency(new.api_key_id, idempotency.key)
            if inboxed is not None:
                return Accepted(None, inboxed)
        if not self.circuit_open:
            try:
                async with asyncio.timeout(self.settings.inbox_db_timeout_seconds):
                    row, existing = await store()
                return Accepted(row, existing)
            except DATABASE_ERRORS as exc:
                if not postgres_away(exc):
                    raise Refused(503, "unavailable", "notifications cannot be stored right now; try again",
                                  headers={"Retry-After": "1"}) from exc
                self.trip(exc)
        return await self._into_inbox(new, channel_key, idempotency, answer)

    async def _into_inbox(self, new: q.NewNotification, channel_key: str, idempotency: q.Idempotency | None,
                          answer: q.Answer) -> Accepted:
        row = pending_row(new, channel_key, datetime.now(UTC))
        entry = InboxEntry(notification=new, channel_key=channel_key, accepted_at=row.created_at)
        if idempotency is not None:
            status_code, body, location = answer(row)
            entry = entry.model_copy(update={
                "idempotency_key": idempotency.key, "request_sha256": idempotency.request_sha256,
                "status_code": status_code, "response": body, "location": location})
        try:
            outcome, payload = await self._put(
                keys=[INBOX_STREAM, INBOX_ENTRIES, INBOX_IDEMPOTENCY],
                args=[str(new.id), entry.model_dump_json(), entry.idempotency_field(),
                      self.settings.inbox_max_entries, int(self.settings.inbox_max_age_seconds * 1000)])
        except (RedisError, OSError) as exc:
            log.warning("inbox_unavailable", error=type(exc).__name__)
            raise Refused(503, "unavailable", "neither the database nor the inbox can take notifications "
                                              "right now; try again", headers={"Retry-After": "1"}) from exc
        if outcome == b"replay":
            existing = InboxEntry.model_validate_json(payload).idempotency()
            assert existing is not None
            return Accepted(None, existing)
        if outcome == b"full":
            log.warning("inbox_full", why=payload.decode())
            raise Refused(503, "inbox_full", "the database is away and the inbox is full; try again later",
                          headers={"Retry-After": str(self.settings.inbox_retry_after_seconds)})
        return Accepted(row, inboxed=True)

    async def _inboxed_idempotency(self, api_key_id: int | None, key: str) -> q.Idempotency | None:
        """The record of this Idempotency-Key if its notification waits in the inbox (Redis errors: None;
        Postgres decides then)."""
        try:
            holder = await self.redis.hget(INBOX_IDEMPOTENCY, idempotency_field(api_key_id, key))
            raw = None if holder is None else await self.redis.hget(INBOX_ENTRIES, holder)
        except (RedisError, OSError) as exc:
            log.warning("inbox_unavailable", error=type(exc).__name__)
            return None
        return None if raw is None else InboxEntry.model_validate_json(raw).idempotency()

    async def find_idempotency(self, api_key_id: int | None, key: str) -> q.Idempotency | None:
        """An Idempotency-Key's record: from the inbox, else from Postgres (None while it is away)."""
        found = await self._inboxed_idempotency(api_key_id, key)
        if found is not None or self.circuit_open:
            return found
        try:
            return await self._in_postgres(lambda conn: q.find_idempotency(conn, api_key_id, key))
        except PostgresAway:
            return None

    # -- reading ----------------------------------------------------------------------------------

    async def get(self, notification_id: uuid.UUID, namespace: str) -> q.Row | None:
        """A notification of `namespace`: as it waits in the inbox, else from Postgres; 503 when it is in
        neither and Postgres is away."""
        try:
            raw = await self.redis.hget(INBOX_ENTRIES, str(notification_id))
        except (RedisError, OSError) as exc:
            log.warning("inbox_unavailable", error=type(exc).__name__)
            raw = None
        if raw is not None:
            entry = InboxEntry.model_validate_json(raw)
            return entry.row() if entry.channel_key.partition(".")[0] == namespace else None
        unavailable = Refused(503, "unavailable", "notifications cannot be read right now; try again",
                              headers={"Retry-After": "1"})
        if self.circuit_open:
            raise unavailable
        try:
            return await self._in_postgres(lambda conn: q.get(conn, notification_id, namespace))
        except PostgresAway as exc:
            raise unavailable from exc


class InboxDrainer:
    """The task that moves inbox entries into Postgres; see the module doc."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        self.redis, self.db, self.settings = inbox.redis, inbox.db, inbox.settings
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._remove = self.redis.register_script(_REMOVE)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # XREADGROUP's BLOCK must end before the client's socket timeout.
        self._block_ms = max(10, int(min(1.0, self.settings.redis_timeout_seconds / 2) * 1000))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="inbox-drainer")

    async def stop(self) -> None:
        # The flag too: a cancellation can land in a client library that swallows it.
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        group_ready = False
        while not self._stopping:
            try:
                await self._observe()
                if not group_ready:
                    if not self.inbox.depth:  # nothing inboxed yet: leave Redis as it is
                        await asyncio.sleep(self._block_ms / 1000)
                        continue
                    await self._create_group()
                    group_ready = True
                if self.inbox.circuit_open and not await self.inbox.probe():
                    await asyncio.sleep(self.settings.inbox_probe_seconds)
                    continue
                batch = await self._next_batch()
                if batch:
                    await self._drain(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if postgres_away(exc) and not isinstance(exc, RedisError):
                    self.inbox.trip(exc)
                else:
                    if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                        group_ready = False  # Redis lost its data: the group goes with it
                    log.warning("inbox_drain_failed", error=type(exc).__name__, detail=str(exc)[:300])
                    await asyncio.sleep(1.0)

    async def _create_group(self) -> None:
        try:
            await self.redis.xgroup_create(INBOX_STREAM, DRAIN_GROUP, id="0")
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _observe(self) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(INBOX_STREAM)
            pipe.xrange(INBOX_STREAM, count=1)
            pipe.time()
            depth, first, (seconds, micros) = await pipe.execute()
        self.inbox.depth = depth
        DEPTH.set(depth)
        oldest_ms = int(first[0][0].split(b"-")[0]) if first else None
        OLDEST.set(0 if oldest_ms is None else max(0.0, seconds + micros / 1e6 - oldest_ms / 1000))

    async def _next_batch(self) -> list[tuple[bytes, str]]:
        """(stream id, notification id): this drainer's pending entries, else those of a drainer idle
        too long, else new ones (waiting up to a second)."""
        count = self.settings.inbox_drain_batch
        mine = await self.redis.xreadgroup(DRAIN_GROUP, self.consumer, {INBOX_STREAM: "0"}, count=count)
        batch = _entries(mine)
        if batch:
            return batch
        claimed = await self.redis.xautoclaim(INBOX_STREAM, DRAIN_GROUP, self.consumer,
                                              int(self.settings.inbox_claim_idle_seconds * 1000),
                                              start_id="0-0", count=count)
        batch = [(sid, fields.get(b"n", b"").decode()) for sid, fields in claimed[1] if fields]
        batch += [(sid, "") for sid in (claimed[2] if len(claimed) > 2 else [])]  # deleted meanwhile
        if batch:
            log.info("inbox_entries_claimed", count=len(batch))
            return batch
        new = await self.redis.xreadgroup(DRAIN_GROUP, self.consumer, {INBOX_STREAM: ">"}, count=count,
                                          block=self._block_ms)
        return _entries(new)

    async def _drain(self, batch: list[tuple[bytes, str]]) -> None:
        ids = [notification_id for _, notification_id in batch if notification_id]
        raws = await self.redis.hmget(INBOX_ENTRIES, ids) if ids else []
        found: dict[str, bytes | str | None] = dict(zip(ids, raws, strict=True))
        entries = [(sid, None if raw is None else InboxEntry.model_validate_json(raw))
                   for sid, raw in ((sid, found.get(nid)) for sid, nid in batch)]
        rows: list[q.Row] = []
        results: list[str] = []
        dead: list[tuple[InboxEntry, str]] = []
        async with asyncio.timeout(DRAIN_TIMEOUT_SECONDS), self.db.acquire() as conn, conn.transaction():
            for _, entry in entries:
                if entry is None:  # removed by another drainer already
                    continue
                try:
                    row = await self._store(conn, entry)
                except asyncpg.PostgresError as exc:
                    if postgres_away(exc):
                        raise
                    dead.append((entry, f"{type(exc).__name__}: {exc}"[:1000]))
                    results.append("dead")
                    continue
                results.append("stored" if row is not None else "duplicate")
                if row is not None and row.status == "queued":
                    rows.append(row)
        for row in rows:
            await enqueue(self.redis, row)
        for entry, error in dead:
            log.error("inbox_entry_dead", notification_id=str(entry.notification.id),
                      channel=entry.channel_key, error=error)
            await self.redis.xadd(INBOX_DEAD, {"e": entry.model_dump_json(), "error": error})
        args: list[Any] = [DRAIN_GROUP]
        for sid, entry in entries:
            args += ([sid, "", ""] if entry is None
                     else [sid, str(entry.notification.id), entry.idempotency_field()])
        await self._remove(keys=[INBOX_STREAM, INBOX_ENTRIES, INBOX_IDEMPOTENCY], args=args)
        for result in results:
            DRAINED.labels(result).inc()
        log.info("inbox_drained", stored=results.count("stored"), duplicate=results.count("duplicate"),
                 dead=len(dead))

    async def _store(self, conn: Any, entry: InboxEntry) -> q.Row | None:
        """The entry's row in Postgres (a savepoint of the batch), or None: dropped as a duplicate."""
        new, idempotency = entry.notification, entry.idempotency()
        row, existing = await q.accept_drained(conn, new, entry.accepted_at, idempotency)
        if existing is None:
            return row
        assert idempotency is not None
        if existing.request_sha256 == idempotency.request_sha256:
            log.warning("inbox_duplicate_dropped", notification_id=str(new.id),
                        kept=(existing.response or {}).get("id"))
            return None
        log.warning("inbox_idempotency_key_reused", notification_id=str(new.id))
        row, _ = await q.accept_drained(conn, new, entry.accepted_at, None)
        return row


def _entries(reply: Any) -> list[tuple[bytes, str]]:
    """(stream id, notification id) of an XREADGROUP reply; an entry deleted meanwhile has no fields."""
    return [(sid, (fields or {}).get(b"n", b"").decode())
            for _, items in reply or [] for sid, fields in items]
