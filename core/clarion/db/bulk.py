"""Bulk jobs: stored with their rows in one transaction, expanded into notifications a chunk at a time.

Each write says how it stays idempotent (docs/notifications.md "Bulk"):

- `store` inserts the job, its rows (COPY) and, with an Idempotency-Key, the key's record and first
  answer in one transaction: a refusal or a crash before the commit leaves nothing.
- `claim` takes an unfinished job whose lease is free (`FOR UPDATE SKIP LOCKED`): one replica expands
  a job; when its lease runs out (the replica died) another takes over.
- `expand_chunk` locks the job row, checks the caller still holds it, moves the next rows into
  `notifications` (deleting them from `bulk_job_rows`) and advances the cursor, in one transaction.
  A crash before the commit leaves the chunk as it was; after it, the cursor says where to resume. The
  notification ids are fixed at accept time and inserted with `ON CONFLICT DO NOTHING`, so even a
  replayed chunk creates nothing twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from clarion.db.notifications import Idempotency, remember_answer, take_idempotency_key
from clarion.db.pool import Db


def notification_id(job_id: uuid.UUID, row_no: int) -> uuid.UUID:
    """The id of the notification of row `row_no` (1-based) of a job: the same on every expansion."""
    return uuid.uuid5(job_id, str(row_no))


@dataclass(frozen=True)
class NewJob:
    id: uuid.UUID
    channel_id: int
    api_key_id: int | None
    template: dict[str, Any]
    reference: str | None
    scheduled_for: datetime | None
    trace_id: str


@dataclass(frozen=True)
class NewRow:
    recipient: str
    content: str  # JSON: the notification's content
    reference: str | None


@dataclass(frozen=True)
class Job:
    id: uuid.UUID
    channel_id: int
    channel_key: str
    template: dict[str, Any]
    reference: str | None
    scheduled_for: datetime | None
    trace_id: str
    total: int
    expanded: int
    status: str
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


_COLUMNS = """j.id, j.channel_id, ch.namespace || '.' || ch.name AS channel_key, j.template, j.reference,
              j.scheduled_for, j.trace_id, j.total, j.expanded, j.status, j.last_error, j.created_at,
              j.updated_at, j.finished_at"""


def _job(record: asyncpg.Record) -> Job:
    return Job(**{k: record[k] for k in Job.__dataclass_fields__})


async def store(conn: Db, job: NewJob, rows: Sequence[NewRow], idempotency: Idempotency | None = None,
                answer: Any = None) -> tuple[Job | None, Idempotency | None]:
    """Store an accepted job and its rows; with `idempotency`, first take its key (of `job.api_key_id`)
    and keep `answer(job)` (status code, body, Location) as its first answer, in the same transaction.
    Returns (job, None) when stored, or (None, the existing record) when the key was taken before."""
    async with conn.transaction():
        if idempotency is not None:
            existing = await take_idempotency_key(conn, job.api_key_id, idempotency)
            if existing is not None:
                return None, existing
        await conn.execute(
            """INSERT INTO bulk_jobs (id, channel_id, api_key_id, template, reference, scheduled_for,
                                      trace_id, total)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            job.id, job.channel_id, job.api_key_id, job.template, job.reference, job.scheduled_for,
            job.trace_id, len(rows))
        await conn.copy_records_to_table(
            "bulk_job_rows",
            records=((job.id, n, notification_id(job.id, n), row.recipient, row.content, row.reference)
                     for n, row in enumerate(rows, start=1)),
            columns=["job_id", "row_no", "notification_id", "recipient", "content", "reference"])
        stored = await get(conn, job.id)
        assert stored is not None
        if idempotency is not None and answer is not None:
            status_code, body, location = answer(stored)
            await remember_answer(conn, job.api_key_id, idempotency.key, status_code, body, location)
        return stored, None


async def get(conn: Db, job_id: uuid.UUID, namespace: str | None = None) -> Job | None:
    """One job (of `namespace`'s channels only, when given)."""
    record = await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM bulk_jobs j JOIN channels ch ON ch.id = j.channel_id
            WHERE j.id = $1 AND ($2::text IS NULL OR ch.namespace = $2)""", job_id, namespace)  # noqa: S608 - a constant column list
    return None if record is None else _job(record)


async def notification_counts(conn: Db, job_id: uuid.UUID) -> dict[str, int]:
    """The job's notifications by status."""
    records = await conn.fetch(
        "SELECT status, count(*) AS n FROM notifications WHERE bulk_job_id = $1 GROUP BY status", job_id)
    return {r["status"]: int(r["n"]) for r in records}


async def claim(conn: Db, worker: str, lease_seconds: float) -> Job | None:
    """The oldest unfinished job whose lease is free, now held by `worker`; None when there is none."""
    record = await conn.fetchrow(
        f"""WITH j AS (
                UPDATE bulk_jobs SET status = 'expanding', claimed_by = $1,
                       claimed_until = now() + make_interval(secs => $2), updated_at = now()
                WHERE id = (SELECT id FROM bulk_jobs
                            WHERE status IN ('accepted', 'expanding')
                              AND (claimed_until IS NULL OR claimed_until < now())
                            ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
                RETURNING *)
            SELECT {_COLUMNS} FROM j JOIN channels ch ON ch.id = j.channel_id""",  # noqa: S608 - a constant column list
        worker, float(lease_seconds))
    return None if record is None else _job(record)


@dataclass(frozen=True)
class Chunk:
    """What one `expand_chunk` did: the notifications it created (to enqueue), and the job after it."""

    created: list[uuid.UUID]
    expanded: int
    status: str


async def expand_chunk(conn: Db, job: Job, worker: str, size: int, lease_seconds: float,
                       max_attempts: int) -> Chunk | None:
    """Turn the job's next `size` rows into notifications on the bulk lane and advance its cursor (and
    the lease), in one transaction; at the last row the job is done. None when `worker` no longer holds
    the job. Rows are `queued` and counted as on the stream (the caller enqueues them right after the
    commit; if it cannot, the replayer does), or `created` when the job is scheduled."""
    async with conn.transaction():
        cursor = await conn.fetchval(
            """SELECT expanded FROM bulk_jobs WHERE id = $1 AND claimed_by = $2 AND status = 'expanding'
               FOR UPDATE""", job.id, worker)
        if cursor is None:
            return None
        upto = min(cursor + size, job.total)
        created = await conn.fetch(
            """WITH moved AS (
                   DELETE FROM bulk_job_rows WHERE job_id = $1 AND row_no > $2 AND row_no <= $3
                   RETURNING notification_id, recipient, content, reference)
               INSERT INTO notifications (id, channel_id, lane, recipient, content, reference, api_key_id,
                                          bulk_job_id, status, max_attempts, trace_id, scheduled_for,
                                          next_attempt_at, enqueued_at)
               SELECT m.notification_id, j.channel_id, 'bulk', m.recipient, m.content::jsonb, m.reference,
                      j.api_key_id, j.id, CASE WHEN j.scheduled_for IS NULL THEN 'queued' ELSE 'created' END,
                      $4, j.trace_id, j.scheduled_for, coalesce(j.scheduled_for, now()),
                      CASE WHEN j.scheduled_for IS NULL THEN now() END
               FROM moved m, bulk_jobs j WHERE j.id = $1
               ON CONFLICT (id) DO NOTHING
               RETURNING id""", job.id, cursor, upto, max_attempts)
        if upto > cursor and not created:
            missing = await conn.fetchval(
                "SELECT count(*) FROM notifications WHERE bulk_job_id = $1", job.id) < upto
            if missing:  # the rows are gone and not expanded: nothing can finish this job
                await conn.execute(
                    """UPDATE bulk_jobs SET status = 'failed', last_error = $2, claimed_by = NULL,
                              claimed_until = NULL, updated_at = now(), finished_at = now() WHERE id = $1""",
                    job.id, f"rows {cursor + 1}..{upto} are missing")
                return Chunk([], cursor, "failed")
        status = "done" if upto == job.total else "expanding"
        await conn.execute(
            """UPDATE bulk_jobs SET expanded = $2, status = $3, updated_at = now(),
                      claimed_until = CASE WHEN $3 = 'done' THEN NULL
                                           ELSE now() + make_interval(secs => $4) END,
                      claimed_by = CASE WHEN $3 = 'done' THEN NULL ELSE claimed_by END,
                      finished_at = CASE WHEN $3 = 'done' THEN now() END
               WHERE id = $1""", job.id, upto, status, float(lease_seconds))
        return Chunk([r["id"] for r in created], upto, status)


async def release(conn: Db, job_id: uuid.UUID, worker: str) -> None:
    """Give up a job (shutting down): another replica may take it at once."""
    await conn.execute(
        """UPDATE bulk_jobs SET claimed_by = NULL, claimed_until = NULL, updated_at = now()
           WHERE id = $1 AND claimed_by = $2""", job_id, worker)
