"""The notification outbox: what the API accepts, workers claim and settle, and the replayer re-enqueues.

Postgres is the source of truth; a stream entry only points at a row. Each write says how it stays
idempotent, because every one of them can be retried after a lost connection or run twice by two
processes:

- `accept` inserts the row and, with an Idempotency-Key, the key's record in one transaction; the
  record's primary key makes a second accept with the same key a read of the first answer.
  `accept_drained` (the API's Redis inbox, drained once Postgres is back) does the same by the row's
  id: a second drain of one entry reads the row back.
- `claim` moves a row to `sending` only from `queued` (or from `sending` whose lease ran out): a
  duplicate stream entry, or one for a row already settled, claims nothing.
- `settle`, `retry_later` and `extend_lease` change only rows the caller still holds (`claimed_by`);
  `dead_letter` and `schedule_retry` are the same changes with their audit row in one statement, so
  neither is written without the other.
- `due_for_enqueue` locks the rows it returns (`FOR UPDATE SKIP LOCKED`), so two replayers never
  enqueue the same row in one pass; enqueuing a row twice costs one skipped claim.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from clarion.db.pool import Db
from clarion.streams import NotificationTask, notify_stream

FINAL = ("sent", "failed", "blocked", "cancelled")


@dataclass(frozen=True)
class NewNotification:
    id: uuid.UUID
    channel_id: int
    lane: str
    recipient: str
    content: dict[str, Any]
    reference: str | None
    api_key_id: int | None
    trace_id: str
    scheduled_for: datetime | None
    max_attempts: int
    #: The support thread it posts or answers (migration 0012; clarion.db.support), else None.
    support_thread_id: int | None = None


@dataclass(frozen=True)
class Idempotency:
    """An Idempotency-Key record: `status_code` None while its first request is still being accepted."""

    key: str
    request_sha256: str
    status_code: int | None = None
    response: dict[str, Any] | None = None
    location: str | None = None


@dataclass(frozen=True)
class Row:
    id: uuid.UUID
    channel_id: int
    channel_key: str
    lane: str
    recipient: str
    content: dict[str, Any]
    reference: str | None
    status: str
    attempts: int
    max_attempts: int
    last_error: str | None
    provider_message_id: str | None
    trace_id: str
    scheduled_for: datetime | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None

    def entry(self) -> tuple[str, NotificationTask]:
        """The row's entry on its lane's stream: (stream, task)."""
        return (notify_stream(self.channel_key, self.lane),
                NotificationTask(notification_id=str(self.id), trace_id=self.trace_id))


_COLUMNS = """n.id, n.channel_id, ch.namespace || '.' || ch.name AS channel_key, n.lane, n.recipient,
              n.content, n.reference, n.status, n.attempts, n.max_attempts, n.last_error,
              n.provider_message_id, n.trace_id, n.scheduled_for, n.created_at, n.updated_at, n.sent_at"""


def _row(record: asyncpg.Record) -> Row:
    return Row(**{k: record[k] for k in Row.__dataclass_fields__})


Answer = Callable[[Row], tuple[int, dict[str, Any], str | None]]


async def accept(conn: Db, new: NewNotification, idempotency: Idempotency | None = None,
                 answer: Answer | None = None) -> tuple[Row | None, Idempotency | None]:
    """Store an accepted notification; with `idempotency`, first take its key (of `new.api_key_id`)
    and keep `answer(row)` (status code, body, Location) as its first answer, in the same transaction.

    The row is stored as on its stream already (`enqueued_at` now) unless it is scheduled: the caller
    puts the entry there right after the commit, and if that fails the replayer does it
    `replay_after` seconds later. Returns (row, None) when stored, or (None, the existing record) when
    the key was taken before; a concurrent accept with the same key waits for the first to commit.
    """
    async with conn.transaction():
        if idempotency is not None:
            existing = await take_idempotency_key(conn, new.api_key_id, idempotency)
            if existing is not None:
                return None, existing
        row = await _insert(conn, new)
        if idempotency is not None and answer is not None:
            status_code, body, location = answer(row)
            await remember_answer(conn, new.api_key_id, idempotency.key, status_code, body, location)
        return row, None


async def accept_drained(conn: Db, new: NewNotification, accepted_at: datetime,
                         idempotency: Idempotency | None) -> tuple[Row | None, Idempotency | None]:
    """Store a notification the API accepted into its Redis inbox while Postgres was away (the webhook's
    inbox drainer, clarion_webhook.inbox), created at `accepted_at`, with its Idempotency-Key record
    holding the answer the client got (`idempotency` complete: status code, response, Location).

    Idempotent by id, so a drain repeated after a crash (row and record committed, the inbox entry not
    yet removed), or by two replicas at once, stores nothing twice: the row is read back, and a key
    whose record answers with this id is this notification's own. Returns (row, None), or (None, the
    record) when the key was taken first by another notification (the caller decides).
    """
    async with conn.transaction():
        existing = None
        if idempotency is not None:
            existing = await take_idempotency_key(conn, new.api_key_id, idempotency)
            if existing is not None and (existing.response or {}).get("id") != str(new.id):
                return None, existing
        row = await _insert(conn, new, accepted_at)
        if idempotency is not None and existing is None:
            assert idempotency.status_code is not None and idempotency.response is not None
            await remember_answer(conn, new.api_key_id, idempotency.key, idempotency.status_code,
                                  idempotency.response, idempotency.location)
        return row, None


async def take_idempotency_key(conn: Db, api_key_id: int | None,
                               idempotency: Idempotency) -> Idempotency | None:
    """Take an Idempotency-Key for a request being accepted (inside the caller's transaction): None when
    taken, else the key's existing record (a concurrent taker waits for the first to commit)."""
    taken = await conn.fetchval(
        """INSERT INTO idempotency_keys (api_key_id, key, request_sha256) VALUES ($1, $2, $3)
           ON CONFLICT (api_key_id, key) DO NOTHING RETURNING true""",
        api_key_id, idempotency.key, idempotency.request_sha256)
    if taken:
        return None
    return await find_idempotency(conn, api_key_id, idempotency.key) or Idempotency(
        idempotency.key, idempotency.request_sha256)


_ACCEPT_MANY = f"""
    WITH n AS (
        INSERT INTO notifications (id, channel_id, lane, recipient, content, reference, api_key_id, status,
                                   max_attempts, trace_id, scheduled_for, next_attempt_at, enqueued_at)
        SELECT u.id, u.channel_id, u.lane, u.recipient, u.content::jsonb, u.reference, u.api_key_id,
               CASE WHEN u.scheduled_for IS NULL THEN 'queued' ELSE 'created' END, u.max_attempts,
               u.trace_id, u.scheduled_for, coalesce(u.scheduled_for, now()),
               CASE WHEN u.scheduled_for IS NULL THEN now() END
        FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[],
                    $8::int[], $9::text[], $10::timestamptz[])
             AS u(id, channel_id, lane, recipient, content, reference, api_key_id, max_attempts, trace_id,
                  scheduled_for)
        ON CONFLICT (id) DO NOTHING
        RETURNING *)
    SELECT {_COLUMNS} FROM n JOIN channels ch ON ch.id = n.channel_id"""  # noqa: S608 - constant columns


async def accept_many(conn: Db, news: list[NewNotification]) -> list[Row]:
    """Store accepted notifications without Idempotency-Keys in one statement (so all or none), as
    `accept` stores one; returns their rows in the order of `news` (a row stored before, by a retried
    call, is read back)."""
    records = await conn.fetch(
        _ACCEPT_MANY, [n.id for n in news], [n.channel_id for n in news], [n.lane for n in news],
        [n.recipient for n in news], [json.dumps(n.content) for n in news], [n.reference for n in news],
        [n.api_key_id for n in news], [n.max_attempts for n in news], [n.trace_id for n in news],
        [n.scheduled_for for n in news])
    rows = {r.id: r for r in map(_row, records)}
    missing = [n.id for n in news if n.id not in rows]
    if missing:
        for record in await conn.fetch(
                f"SELECT {_COLUMNS} FROM notifications n JOIN channels ch ON ch.id = n.channel_id "  # noqa: S608
                "WHERE n.id = ANY($1::uuid[])", missing):
            rows[record["id"]] = _row(record)
    return [rows[n.id] for n in news]


async def _insert(conn: Db, new: NewNotification, created_at: datetime | None = None) -> Row:
    """Insert the row (`queued` and as on its stream, or `created` when scheduled), created at
    `created_at` (default now); a row with this id already there is read back instead."""
    status = "created" if new.scheduled_for is not None else "queued"
    record = await conn.fetchrow(
        f"""WITH n AS (
                INSERT INTO notifications (id, channel_id, lane, recipient, content, reference,
                                           api_key_id, status, max_attempts, trace_id, scheduled_for,
                                           next_attempt_at, enqueued_at, created_at, updated_at,
                                           support_thread_id)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, coalesce($11, now()),
                        CASE WHEN $11::timestamptz IS NULL THEN now() END,
                        coalesce($12, now()), coalesce($12, now()), $13)
                ON CONFLICT (id) DO NOTHING
                RETURNING *)
            SELECT {_COLUMNS} FROM n JOIN channels ch ON ch.id = n.channel_id""",  # noqa: S608 - a constant column list
        new.id, new.channel_id, new.lane, new.recipient, new.content, new.reference, new.api_key_id,
        status, new.max_attempts, new.trace_id, new.scheduled_for, created_at, new.support_thread_id)
    if record is None:  # accepted before (a retried accept of the same id): read it back
        record = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM notifications n JOIN channels ch ON ch.id = n.channel_id "  # noqa: S608
            "WHERE n.id = $1", new.id)
    return _row(record)


async def find_idempotency(conn: Db, api_key_id: int | None, key: str) -> Idempotency | None:
    record = await conn.fetchrow(
        """SELECT key, request_sha256, status_code, response, location FROM idempotency_keys
           WHERE api_key_id = $1 AND key = $2""", api_key_id, key)
    return None if record is None else Idempotency(**dict(record))


async def remember_answer(conn: Db, api_key_id: int | None, key: str, status_code: int,
                          response: dict[str, Any], location: str | None) -> None:
    """Keep the first answer of an Idempotency-Key (a second write is the same answer)."""
    await conn.execute(
        """UPDATE idempotency_keys SET status_code = $3, response = $4, location = $5
           WHERE api_key_id = $1 AND key = $2""", api_key_id, key, status_code, response, location)


async def forget_old_idempotency_keys(conn: Db, older_than_hours: float = 24.0) -> int:
    result: str = await conn.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
        older_than_hours * 3600)
    return int(result.split()[-1])


async def mark_enqueued(conn: Db, ids: list[uuid.UUID]) -> None:
    """The rows' entries are on their streams now (the replayer waits `replay_after` from here)."""
    await conn.execute(
        """UPDATE notifications SET enqueued_at = now(), status = CASE WHEN status = 'created' THEN 'queued'
                                                                    ELSE status END
           WHERE id = ANY($1::uuid[])""", ids)


async def get(conn: Db, notification_id: uuid.UUID, namespace: str | None = None) -> Row | None:
    """One notification (of `namespace`'s channels only, when given)."""
    record = await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM notifications n JOIN channels ch ON ch.id = n.channel_id
            WHERE n.id = $1 AND ($2::text IS NULL OR ch.namespace = $2)""", notification_id, namespace)  # noqa: S608 - a constant column list
    return None if record is None else _row(record)


async def list_by_reference(conn: Db, namespace: str, reference: str, limit: int,
                            before: tuple[datetime, uuid.UUID] | None) -> list[Row]:
    """Notifications of `namespace` with this reference, newest first, after the cursor `before`."""
    created, last_id = before if before is not None else (None, None)
    records = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM notifications n JOIN channels ch ON ch.id = n.channel_id
            WHERE ch.namespace = $1 AND n.reference = $2
              AND ($3::timestamptz IS NULL OR (n.created_at, n.id) < ($3, $4::uuid))
            ORDER BY n.created_at DESC, n.id DESC LIMIT $5""",  # noqa: S608 - a constant column list
        namespace, reference, created, last_id, limit)
    return [_row(r) for r in records]


async def claim(conn: Db, notification_id: uuid.UUID, worker: str, lease_seconds: float) -> Row | None:
    """Take a notification to send it, or None (settled, held by a live worker, or not due yet)."""
    record = await conn.fetchrow(
        f"""WITH n AS (
                UPDATE notifications SET status = 'sending', claimed_by = $2,
                       claimed_until = now() + make_interval(secs => $3), updated_at = now()
                WHERE id = $1 AND next_attempt_at <= now() + interval '1 second'
                  AND (status = 'queued' OR (status = 'sending' AND claimed_until < now()))
                RETURNING *)
            SELECT {_COLUMNS} FROM n JOIN channels ch ON ch.id = n.channel_id""",  # noqa: S608 - a constant column list
        notification_id, worker, float(lease_seconds))
    return None if record is None else _row(record)


_SETTLE = """UPDATE notifications SET status = $3, attempts = attempts + 1, last_error = $4,
                     provider_message_id = coalesce($5, provider_message_id),
                     sent_at = CASE WHEN $3 = 'sent' THEN now() ELSE sent_at END,
                     claimed_by = NULL, claimed_until = NULL, updated_at = now()
              WHERE id = $1 AND claimed_by = $2 AND status = 'sending'"""

_RETRY_LATER = """UPDATE notifications SET status = 'queued', attempts = attempts + $5::int, last_error = $3,
                         next_attempt_at = now() + make_interval(secs => $4), enqueued_at = NULL,
                         claimed_by = NULL, claimed_until = NULL, updated_at = now()
                  WHERE id = $1 AND claimed_by = $2 AND status = 'sending'"""


async def settle(conn: Db, notification_id: uuid.UUID, worker: str, status: str, *,
                 error: str | None = None, provider_message_id: str | None = None) -> bool:
    """A final outcome (sent, failed, blocked) of a row `worker` holds; False if it no longer does."""
    assert status in FINAL
    result: str = await conn.execute(_SETTLE, notification_id, worker, status, error, provider_message_id)
    return result.endswith(" 1")


async def dead_letter(conn: Db, notification_id: uuid.UUID, worker: str, *, error: str | None,
                      reason: str, attempts: int) -> bool:
    """`settle` as `failed`, and its `notification.dead_lettered` audit row (actor `worker:<name>`) in
    the same statement; False (and no row) if `worker` no longer holds it."""
    done = await conn.fetchval(
        f"""WITH n AS ({_SETTLE} RETURNING id)
            INSERT INTO audit_log (actor, action, subject, details)
            SELECT 'worker:' || $2, 'notification.dead_lettered', n.id::text, $6::jsonb FROM n
            RETURNING true""",  # noqa: S608 - a constant statement
        notification_id, worker, "failed", error, None,
        {"reason": reason, "error": (error or "")[:1000], "attempts": attempts})
    return bool(done)


async def retry_later(conn: Db, notification_id: uuid.UUID, worker: str, error: str, delay_seconds: float, *,
                      count_attempt: bool = True) -> bool:
    """Back to `queued`, off the stream, due in `delay_seconds` (the replayer enqueues it then)."""
    result: str = await conn.execute(_RETRY_LATER, notification_id, worker, error, float(delay_seconds),
                                     1 if count_attempt else 0)
    return result.endswith(" 1")


async def extend_lease(conn: Db, notification_id: uuid.UUID, worker: str, lease_seconds: float) -> bool:
    """Renew the lease of a row `worker` holds and has not sent yet (it waits for the rate limiter);
    False if it no longer holds it."""
    result: str = await conn.execute(
        """UPDATE notifications SET claimed_until = now() + make_interval(secs => $3)
           WHERE id = $1 AND claimed_by = $2 AND status = 'sending'""",
        notification_id, worker, float(lease_seconds))
    return result.endswith(" 1")


async def release(conn: Db, notification_id: uuid.UUID, worker: str) -> bool:
    """Give back a row `worker` claimed and never started to send (it is stopping): `queued`, due now,
    marked enqueued (the caller puts its entry back on the stream), no attempt counted; False if
    `worker` no longer holds it."""
    result: str = await conn.execute(
        """UPDATE notifications SET status = 'queued', next_attempt_at = now(), enqueued_at = now(),
                  claimed_by = NULL, claimed_until = NULL, updated_at = now()
           WHERE id = $1 AND claimed_by = $2 AND status = 'sending'""",
        notification_id, worker)
    return result.endswith(" 1")


async def schedule_retry(conn: Db, notification_id: uuid.UUID, worker: str, error: str, delay_seconds: float,
                         *, attempt: int) -> bool:
    """`retry_later` after failed attempt number `attempt`, and its `notification.retry_scheduled` audit
    row (actor `worker:<name>`: attempt, reason, next attempt time) in the same statement; False (and no
    row) if `worker` no longer holds it."""
    done = await conn.fetchval(
        f"""WITH n AS ({_RETRY_LATER} RETURNING id, next_attempt_at)
            INSERT INTO audit_log (actor, action, subject, details)
            SELECT 'worker:' || $2, 'notification.retry_scheduled', n.id::text,
                   $6::jsonb || jsonb_build_object('next_attempt_at', n.next_attempt_at) FROM n
            RETURNING true""",  # noqa: S608 - a constant statement
        notification_id, worker, error, float(delay_seconds), 1,
        {"attempt": attempt, "reason": error[:1000]})
    return bool(done)


async def due_for_enqueue(conn: Db, channel_id: int, lost_before: Mapping[str, datetime],
                          limit: int) -> list[Row]:
    """Rows of the channel that should be on a stream and are not: due scheduled or retried rows not on
    one, rows put on their lane's stream before `lost_before[lane]` (by then their entry must have been
    read; one still `queued` was lost, by Redis or a failed XADD), and rows whose sender's lease ran
    out. A lane missing from `lost_before` has no lost entries. Locked until the caller's transaction
    ends."""
    lanes = list(lost_before)
    records = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM notifications n JOIN channels ch ON ch.id = n.channel_id
            WHERE n.channel_id = $1 AND n.next_attempt_at <= now()
              AND ((n.status IN ('created', 'queued')
                    AND (n.enqueued_at IS NULL
                         OR n.enqueued_at < (SELECT c.before FROM unnest($2::text[], $3::timestamptz[])
                                                               AS c(lane, before) WHERE c.lane = n.lane)))
                   OR (n.status = 'sending' AND n.claimed_until < now()))
            ORDER BY n.next_attempt_at LIMIT $4
            FOR UPDATE OF n SKIP LOCKED""",  # noqa: S608 - a constant column list
        channel_id, lanes, [lost_before[lane] for lane in lanes], limit)
    return [_row(r) for r in records]


async def audit(conn: Db, actor: str, action: str, subject: str, details: dict[str, Any]) -> None:
    await conn.execute("INSERT INTO audit_log (actor, action, subject, details) VALUES ($1, $2, $3, $4)",
                       actor, action, subject, details)


async def audit_many(conn: Db, rows: list[tuple[str, str, str, dict[str, Any]]]) -> None:
    """Several `audit_log` rows (actor, action, subject, details) in one round trip."""
    await conn.executemany("INSERT INTO audit_log (actor, action, subject, details) VALUES ($1, $2, $3, $4)",
                           rows)


async def requeue_failed(conn: Db, ids: list[uuid.UUID], *, actor: str, namespace: str | None = None,
                         extra_attempts: int = 3) -> list[Row]:
    """Give failed notifications (of `namespace`'s channels, when given) `extra_attempts` more: back to
    `queued`, due now, as on their streams (the caller puts them there next, as `accept`'s caller does;
    if that fails the replayer does it `replay_after` later). Audited as
    `notification.retried` by `actor`. Returns the rows requeued; a row not failed is left alone, so
    a second call does nothing."""
    async with conn.transaction():
        records = await conn.fetch(
            f"""WITH n AS (
                    UPDATE notifications n SET status = 'queued', max_attempts = n.attempts + $3,
                           next_attempt_at = now(), enqueued_at = now(), updated_at = now()
                    FROM channels ch
                    WHERE n.id = ANY($1::uuid[]) AND n.status = 'failed' AND ch.id = n.channel_id
                      AND ($2::text IS NULL OR ch.namespace = $2)
                    RETURNING n.*)
                SELECT {_COLUMNS} FROM n JOIN channels ch ON ch.id = n.channel_id""",  # noqa: S608 - constant columns
            ids, namespace, extra_attempts)
        rows = [_row(r) for r in records]
        for row in rows:
            await audit(conn, actor, "notification.retried", str(row.id),
                        {"channel": row.channel_key, "attempts": row.attempts, "last_error": row.last_error})
    return rows
