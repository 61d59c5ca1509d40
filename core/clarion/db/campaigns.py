"""Campaign delivery queries shared by the operator (snapshot, counts, retry-failed) and the sender
(claim, record results, release).

A delivery moves `pending` → `sending` (claimed by one sender, with a lease) → `sent` | `failed` |
`blocked`, or back to `pending` (retry later, pause, a dead sender's successor took over, or its
lease ran out). Every claim goes through `FOR UPDATE SKIP LOCKED`, so no two senders ever hold the
same row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from clarion.db.pool import Db
from clarion.models.campaign import Audience, Phase

#: Statuses after which a delivery needs nothing more.
SETTLED_STATUSES = ("sent", "failed", "blocked", "cancelled")
#: Every status a delivery can have.
DELIVERY_STATUSES = ("pending", "sending", *SETTLED_STATUSES)
# A snapshot of at least this many deliveries gets fresh statistics (analyze_after_snapshot).
ANALYZE_AFTER_ROWS = 1000

# Subscriber rows the selectors pick (before reachability and excludeTags): by flag, tag, group
# membership, and language filter. NULL-safe: a NULL language never matches a language filter.
_PICKED = """coalesce(($3 OR s.tags && $4::text[]
            OR (cardinality($6::text[]) > 0 AND s.chat_id IN (SELECT chat_id FROM members)))
           AND (cardinality($8::text[]) = 0 OR split_part(lower(s.language), '-', 1) = ANY($8::text[])
                OR lower(s.language) = ANY($8::text[])), false)"""

# No ON CONFLICT (its speculative insertion costs a third more at 1M rows): explicit chat ids that the
# subscriber part already picked are left out of the second part, and the statement inserts nothing
# when the campaign already has deliveries.
_SNAPSHOT = f"""
WITH explicit AS (
    SELECT DISTINCT unnest($5::bigint[]) AS chat_id
), members AS (
    SELECT DISTINCT m.user_id AS chat_id
    FROM managed_groups g
    JOIN campaigns c ON c.id = $1 AND g.namespace = c.namespace
    JOIN group_members m ON m.group_id = g.id AND m.status IN ('member', 'warned')
    WHERE g.channel_id = $2 AND g.deleted_at IS NULL AND g.name = ANY($6::text[])
), audience AS (
    SELECT s.chat_id, s.language
    FROM subscribers s
    WHERE s.channel_id = $2 AND s.subscribed AND NOT s.unavailable AND NOT s.tags && $7::text[]
      AND {_PICKED}
    UNION ALL
    SELECT e.chat_id, s.language
    FROM explicit e
    LEFT JOIN subscribers s ON s.channel_id = $2 AND s.chat_id = e.chat_id
    WHERE s.chat_id IS NULL
       OR (s.subscribed AND NOT s.unavailable AND NOT s.tags && $7::text[] AND NOT {_PICKED})
)
INSERT INTO deliveries (campaign_id, chat_id, shard, language)
SELECT $1, chat_id, (hashint8(chat_id) & 2147483647) % $9, language FROM audience
WHERE NOT EXISTS (SELECT 1 FROM deliveries WHERE campaign_id = $1)
"""  # noqa: S608 - built from constants; every value is a bind parameter


@dataclass(frozen=True)
class CampaignCounts:
    """Deliveries of a campaign (or of one shard) by status."""

    total: int = 0
    pending: int = 0
    sending: int = 0
    sent: int = 0
    failed: int = 0
    blocked: int = 0
    cancelled: int = 0

    @property
    def unsettled(self) -> int:
        """Deliveries still to be sent: pending, or held by a sender."""
        return self.pending + self.sending

    @property
    def settled(self) -> int:
        """Deliveries that need nothing more: sent, failed, blocked or cancelled."""
        return self.sent + self.failed + self.blocked + self.cancelled

    def of(self, status: str) -> int:
        """The count of one delivery status."""
        value: int = getattr(self, status)
        return value


@dataclass(frozen=True)
class Claimed:
    """A delivery a sender now holds: where it goes, in which language, after how many attempts."""

    chat_id: int
    language: str | None
    attempts: int
    shard: int  # the row's shard (the claimer's own, or another it helps with)


@dataclass(frozen=True)
class CampaignRow:
    """A row of `campaigns`: what the operator started, and the run the senders work on.

    `spec` is the campaign's spec as stored at the start (camelCase, every default filled in);
    readers parse it with the campaign model.
    """

    id: int
    namespace: str
    name: str
    channel_id: int
    spec: dict[str, Any]
    phase: Phase
    run: int
    total: int
    shards: int
    message_hash: str
    started_at: datetime | None
    completed_at: datetime | None
    retry_observed: int
    recovery_runs: int

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class SendingChannel:
    """The facts about a campaign's channel that its senders need."""

    name: str
    config: dict[str, Any]
    api_base_url: str | None
    bot_id: int | None


def campaign_row(record: Any) -> CampaignRow:
    """The CampaignRow of a `campaigns` record (a `SELECT *` or `RETURNING *`)."""
    values = {f.name: record[f.name] for f in fields(CampaignRow)}
    return CampaignRow(**{**values, "phase": Phase(values["phase"])})


@dataclass
class Results:
    """What a sender learned about a set of claimed deliveries, written in one transaction."""

    # (chat id, message id, sent at, chat id the message went to when it differs)
    sent: list[tuple[int, int | None, datetime, int | None]] = field(default_factory=list)
    # (chat id, reason, error)
    blocked: list[tuple[int, str, str]] = field(default_factory=list)
    # (chat id, error)
    failed: list[tuple[int, str]] = field(default_factory=list)
    # (chat id, error, next attempt at)
    retry: list[tuple[int, str, datetime]] = field(default_factory=list)
    # (old chat id, new chat id): a group Telegram moved to a supergroup
    migrated: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sent) + len(self.blocked) + len(self.failed) + len(self.retry)


async def snapshot_audience(conn: Db, campaign_id: int, channel_id: int, audience: Audience,
                            shards: int) -> int:
    """Insert one pending delivery per recipient (one INSERT…SELECT) and return the campaign's total.

    Recipients: reachable (subscribed, not unavailable) subscribers of the channel selected by
    `allSubscribers`, `tags` (any of) or membership of a `groupRefs` ManagedGroup, whose language
    is one of `languages` (when given); plus every explicit `chatIds` entry (groups need not be
    subscribers) unless it is a subscriber who unsubscribed or is unavailable. `excludeTags`
    removes subscribers carrying any of them. Each row's shard is a hash of its chat id modulo
    `shards`. When the campaign already has deliveries nothing is inserted, so calling it again is
    a no-op. Run it in the caller's transaction together with the phase change (two concurrent
    first calls would conflict on the primary key: the second fails and changes nothing).
    """
    if not 1 <= shards <= 1000:
        raise ValueError(f"shards must be between 1 and 1000, got {shards}")
    status: str = await conn.execute(
        _SNAPSHOT, campaign_id, channel_id, audience.all_subscribers, audience.tags, audience.chat_ids,
        [ref.name for ref in audience.group_refs], audience.exclude_tags,
        [language.lower() for language in audience.languages], shards,
    )
    inserted = int(status.rsplit(" ", 1)[1])
    total: int | None = await conn.fetchval(
        "UPDATE campaigns SET total = total + $2 WHERE id = $1 RETURNING total", campaign_id, inserted
    )
    if total is None:
        raise LookupError(f"campaign {campaign_id} does not exist")
    return total


async def analyze_after_snapshot(conn: Db, total: int) -> None:
    """Refresh the planner's statistics on `deliveries` when a committed snapshot of `total` rows is
    large enough (`ANALYZE_AFTER_ROWS`) to matter; call it after every snapshot commits.

    Until autovacuum gets to the table (a minute or more later), the statistics say the new campaign
    has no rows, and recording a batch of results is planned as a read of the campaign's whole
    snapshot (0.35 s per batch of 1,000 at 1M rows, against 5 ms with fresh statistics). ANALYZE
    samples a fixed number of rows: ~0.1 s on a 2M-row table here.
    """
    if total >= ANALYZE_AFTER_ROWS:
        await conn.execute("ANALYZE deliveries")


def _counts(total: int, rows: Sequence[Any]) -> CampaignCounts:
    by_status = {r["status"]: int(r["n"]) for r in rows}
    return CampaignCounts(total=total, **{s: by_status.get(s, 0) for s in DELIVERY_STATUSES})


async def counts(conn: Db, campaign_id: int) -> CampaignCounts:
    """Deliveries of a campaign by status (an index-only scan of `deliveries_status`)."""
    total = await conn.fetchval("SELECT total FROM campaigns WHERE id = $1", campaign_id)
    rows = await conn.fetch(
        "SELECT status, count(*) AS n FROM deliveries WHERE campaign_id = $1 GROUP BY status", campaign_id
    )
    return _counts(int(total or 0), rows)


async def shard_counts(conn: Db, campaign_id: int, shard: int) -> CampaignCounts:
    """Deliveries of one shard by status; `total` is the shard's row count."""
    rows = await conn.fetch(
        """SELECT status, count(*) AS n FROM deliveries WHERE campaign_id = $1 AND shard = $2
           GROUP BY status""", campaign_id, shard,
    )
    return _counts(sum(int(r["n"]) for r in rows), rows)


async def is_settled(conn: Db, campaign_id: int) -> bool:
    """No delivery of the campaign is pending or being sent."""
    busy = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM deliveries
                          WHERE campaign_id = $1 AND status IN ('pending', 'sending'))""",
        campaign_id,
    )
    return not busy


async def shard_settled(conn: Db, campaign_id: int, shard: int) -> bool:
    """No delivery of the shard is pending or being sent."""
    busy = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM deliveries
                          WHERE campaign_id = $1 AND shard = $2 AND status = 'pending')
               OR EXISTS (SELECT 1 FROM deliveries
                          WHERE campaign_id = $1 AND shard = $2 AND status = 'sending')""",
        campaign_id, shard,
    )
    return not busy


async def next_attempt_at(conn: Db, campaign_id: int, shard: int | None = None) -> datetime | None:
    """When the earliest pending delivery of the shard (None: of the campaign) becomes due (None:
    nothing pending)."""
    if shard is None:
        due: datetime | None = await conn.fetchval(
            "SELECT min(next_attempt_at) FROM deliveries WHERE campaign_id = $1 AND status = 'pending'",
            campaign_id,
        )
        return due
    due = await conn.fetchval(
        """SELECT min(next_attempt_at) FROM deliveries
           WHERE campaign_id = $1 AND shard = $2 AND status = 'pending'""", campaign_id, shard,
    )
    return due


async def reset_failed(conn: Db, campaign_id: int) -> int:
    """Put the campaign's failed deliveries back to pending with fresh attempts; return how many."""
    status: str = await conn.execute(
        """UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = '-infinity',
                  claimed_by = NULL, claimed_by_shard = NULL, claimed_until = NULL, updated_at = now()
           WHERE campaign_id = $1 AND status = 'failed'""", campaign_id,
    )
    return int(status.rsplit(" ", 1)[1])


# The rows are picked and locked by an uncorrelated subquery (an InitPlan, run once) and updated by
# their tuple ids, so the plan is a Tid Scan whatever the statistics say (the locks keep the ids valid
# until the update, in the same statement). Joining them back on (campaign_id, chat_id) instead was
# planned, while the statistics still predated the snapshot, as a loop over the campaign's every row
# per picked row: 2.8 s per claim of 1,000 at 20,000 rows.
_CLAIM = """UPDATE deliveries
   SET status = 'sending', claimed_by = $4, claimed_by_shard = $2,
       claimed_until = now() + make_interval(secs => $5), updated_at = now()
   WHERE ctid = ANY(ARRAY(
       SELECT ctid FROM deliveries
       WHERE campaign_id = $1 AND {shards} AND status = 'pending' AND next_attempt_at <= now()
       {order}
       LIMIT $3
       FOR UPDATE SKIP LOCKED))
   RETURNING chat_id, shard, language, attempts"""
_CLAIM_OWN = _CLAIM.format(shards="shard = $2", order="ORDER BY next_attempt_at")
# No ORDER BY: over the campaign's other shards that would sort every due pending row.
_CLAIM_OTHERS = _CLAIM.format(shards="shard <> $2", order="")


async def claim(conn: Db, campaign_id: int, shard: int, limit: int, claimed_by: str,
                lease_seconds: float, *, other_shards: bool = False) -> list[Claimed]:
    """Claim up to `limit` due pending deliveries for `claimed_by`, the sender of `shard`: of its own
    shard, oldest due first, or (`other_shards`) of the campaign's other shards, in no set order.

    The claim records `shard` as the holder's (`claimed_by_shard`, see `take_over`). Rows another
    sender holds are skipped, so concurrent claimers never share a row.
    """
    rows = await conn.fetch(_CLAIM_OTHERS if other_shards else _CLAIM_OWN,
                            campaign_id, shard, limit, claimed_by, float(lease_seconds))
    return [Claimed(r["chat_id"], r["language"], r["attempts"], r["shard"]) for r in rows]


# A separate statement for each form, so that a generic plan still uses the shard in the index.
_RELEASE_EXPIRED = """UPDATE deliveries
   SET status = 'pending', claimed_by = NULL, claimed_by_shard = NULL, claimed_until = NULL,
       updated_at = now()
   WHERE ctid = ANY(ARRAY(
       SELECT ctid FROM deliveries
       WHERE campaign_id = $1 AND {shards} status = 'sending' AND claimed_until < now()
       FOR UPDATE SKIP LOCKED))"""
_RELEASE_EXPIRED_SHARD = _RELEASE_EXPIRED.format(shards="shard = $2 AND")
_RELEASE_EXPIRED_ALL = _RELEASE_EXPIRED.format(shards="")


async def release_expired(conn: Db, campaign_id: int, shard: int | None = None) -> int:
    """Return to pending the deliveries of the shard (None: of the campaign) whose claim lease ran
    out (their sender died and no sender of its index took them over)."""
    if shard is None:
        status: str = await conn.execute(_RELEASE_EXPIRED_ALL, campaign_id)
    else:
        status = await conn.execute(_RELEASE_EXPIRED_SHARD, campaign_id, shard)
    return int(status.rsplit(" ", 1)[1])


async def take_over(conn: Db, campaign_id: int, shard: int, claimed_by: str) -> int:
    """Return to pending, whatever their lease, the deliveries held by earlier senders of index
    `shard` (of any shard: a sender helps with others once its own is drained) or by `claimed_by`
    (a restarted container of the same pod). Called by a sender as it starts; return how many.

    Safe only because no two senders of one index run at the same time: the Job's
    `podReplacementPolicy: Failed` creates a pod's replacement once the pod has terminated.
    """
    status: str = await conn.execute(
        """UPDATE deliveries
           SET status = 'pending', claimed_by = NULL, claimed_by_shard = NULL, claimed_until = NULL,
               updated_at = now()
           WHERE campaign_id = $1 AND status = 'sending' AND (claimed_by_shard = $2 OR claimed_by = $3)""",
        campaign_id, shard, claimed_by,
    )
    return int(status.rsplit(" ", 1)[1])


async def release_claims(conn: Db, campaign_id: int, claimed_by: str,
                         chat_ids: Sequence[int] | None = None) -> int:
    """Return to pending what `claimed_by` holds (all of it, or just `chat_ids`): unsent on pause or
    stop. When the campaign was cancelled, what is given back is cancelled instead: the sender may be
    the last one to stop, and nothing would ever send or settle a pending row of a cancelled campaign."""
    status: str = await conn.execute(
        """UPDATE deliveries
           SET status = CASE WHEN (SELECT phase FROM campaigns WHERE id = $1) = 'Cancelled'
                             THEN 'cancelled' ELSE 'pending' END,
               claimed_by = NULL, claimed_by_shard = NULL, claimed_until = NULL,
               updated_at = now()
           WHERE campaign_id = $1 AND status = 'sending' AND claimed_by = $2
             AND ($3::bigint[] IS NULL OR chat_id = ANY($3::bigint[]))""",
        campaign_id, claimed_by, list(chat_ids) if chat_ids is not None else None,
    )
    return int(status.rsplit(" ", 1)[1])


async def extend_claims(conn: Db, campaign_id: int, claimed_by: str, lease_seconds: float) -> int:
    """Renew the lease on everything `claimed_by` holds, in any shard (the sender is alive)."""
    status: str = await conn.execute(
        """UPDATE deliveries SET claimed_until = now() + make_interval(secs => $3)
           WHERE campaign_id = $1 AND status = 'sending' AND claimed_by = $2""",
        campaign_id, claimed_by, float(lease_seconds),
    )
    return int(status.rsplit(" ", 1)[1])


async def record_results(conn: Db, campaign_id: int, channel_id: int, claimed_by: str,
                         results: Results) -> None:
    """Write a batch of outcomes in one transaction.

    `sent` is recorded whatever the row's state (Telegram accepted the message); other outcomes only
    on rows `claimed_by` still holds. Blocked recipients become unavailable subscribers with the
    reason; a migrated group's subscriber row moves to the new chat id.
    """
    async with conn.transaction():
        if results.sent:
            chat_ids, message_ids, sent_at, delivered = zip(*results.sent, strict=True)
            await conn.execute(
                """UPDATE deliveries d
                   SET status = 'sent', message_id = u.message_id, sent_at = u.sent_at,
                       delivered_chat_id = u.delivered, attempts = d.attempts + 1,
                       claimed_by = NULL, claimed_by_shard = NULL, claimed_until = NULL, updated_at = now()
                   FROM unnest($2::bigint[], $3::bigint[], $4::timestamptz[], $5::bigint[])
                        AS u(chat_id, message_id, sent_at, delivered)
                   WHERE d.campaign_id = $1 AND d.chat_id = u.chat_id AND d.status <> 'sent'""",
                campaign_id, list(chat_ids), list(message_ids), list(sent_at), list(delivered),
            )
        if results.blocked:
            chat_ids, reasons, errors = zip(*results.blocked, strict=True)
            await conn.execute(
                """UPDATE deliveries d
                   SET status = 'blocked', last_error = u.error, attempts = d.attempts + 1,
                       claimed_by = NULL, claimed_by_shard = NULL, claimed_until = NULL, updated_at = now()
                   FROM unnest($2::bigint[], $3::text[]) AS u(chat_id, error)
                   WHERE d.campaign_id = $1 AND d.chat_id = u.chat_id AND d.status = 'sending'
                     AND d.claimed_by = $4""",
                campaign_id, list(chat_ids), list(errors), claimed_by,
            )
            await conn.execute(
                """UPDATE subscribers s
                   SET unavailable = true, unavailable_reason = u.reason, unavailable_since = now(),
                       updated_at = now()
                   FROM unnest($2::bigint[], $3::text[]) AS u(chat_id, reason)
                   WHERE s.channel_id = $1 AND s.chat_id = u.chat_id AND NOT s.unavailable""",
                channel_id, list(chat_ids), list(reasons),
            )
        if results.failed:
            chat_ids, errors = zip(*results.failed, strict=True)
            await conn.execute(
                """UPDATE deliveries d
                   SET status = 'failed', last_error = u.error, attempts = d.attempts + 1,
                       claimed_by = NULL, claimed_by_shard = NULL, claimed_until = NULL, updated_at = now()
                   FROM unnest($2::bigint[], $3::text[]) AS u(chat_id, error)
                   WHERE d.campaign_id = $1 AND d.chat_id = u.chat_id AND d.status = 'sending'
                     AND d.claimed_by = $4""",
                campaign_id, list(chat_ids), list(errors), claimed_by,
            )
        if results.retry:
            chat_ids, errors, due = zip(*results.retry, strict=True)
            await conn.execute(
                """UPDATE deliveries d
                   SET status = 'pending', last_error = u.error, attempts = d.attempts + 1,
                       next_attempt_at = u.due, claimed_by = NULL, claimed_by_shard = NULL,
                       claimed_until = NULL, updated_at = now()
                   FROM unnest($2::bigint[], $3::text[], $4::timestamptz[]) AS u(chat_id, error, due)
                   WHERE d.campaign_id = $1 AND d.chat_id = u.chat_id AND d.status = 'sending'
                     AND d.claimed_by = $5""",
                campaign_id, list(chat_ids), list(errors), list(due), claimed_by,
            )
        for old, new in results.migrated:
            moved: str = await conn.execute(
                """UPDATE subscribers SET chat_id = $3, updated_at = now()
                   WHERE channel_id = $1 AND chat_id = $2
                     AND NOT EXISTS (SELECT 1 FROM subscribers WHERE channel_id = $1 AND chat_id = $3)""",
                channel_id, old, new,
            )
            if moved == "UPDATE 0":
                await conn.execute(
                    """UPDATE subscribers SET unavailable = true, unavailable_reason = 'migrated',
                              unavailable_since = now(), updated_at = now()
                       WHERE channel_id = $1 AND chat_id = $2 AND NOT unavailable""",
                    channel_id, old,
                )


async def load_campaign(conn: Db, campaign_id: int) -> tuple[CampaignRow, SendingChannel] | None:
    """A campaign and its channel's sending facts, or None."""
    row = await conn.fetchrow(
        """SELECT c.*, ch.name AS channel_name, ch.config AS channel_config, ch.api_base_url, ch.bot_id
           FROM campaigns c JOIN channels ch ON ch.id = c.channel_id
           WHERE c.id = $1 AND c.deleted_at IS NULL""",
        campaign_id,
    )
    if row is None:
        return None
    channel = SendingChannel(name=row["channel_name"], config=dict(row["channel_config"] or {}),
                             api_base_url=row["api_base_url"], bot_id=row["bot_id"])
    return campaign_row(row), channel


async def cancel_unsent(conn: Db, campaign_id: int) -> int:
    """Mark `cancelled` what a cancelled campaign will never send: pending deliveries, and those whose
    sender's lease ran out (a dead sender's). Deliveries a live sender holds are left to it: it
    records them or gives them back, and the next call cancels what it gave back. Returns how many."""
    status: str = await conn.execute(
        """UPDATE deliveries
           SET status = 'cancelled', claimed_by = NULL, claimed_by_shard = NULL, claimed_until = NULL,
               updated_at = now()
           WHERE campaign_id = $1
             AND (status = 'pending' OR (status = 'sending' AND claimed_until < now()))""",
        campaign_id,
    )
    return int(status.rsplit(" ", 1)[1])


async def campaign_phase(conn: Db, campaign_id: int) -> str | None:
    """The phase the operator last wrote (None: the campaign is gone)."""
    phase: str | None = await conn.fetchval(
        "SELECT phase FROM campaigns WHERE id = $1 AND deleted_at IS NULL", campaign_id
    )
    return phase
