"""Managed groups in Postgres (`managed_groups`, `group_members`, join requests, welcomes; ADR 0010).

The operator records the group's row (`upsert_group` and below: idempotent, keyed by (namespace, name),
compare-and-set on the resource's uid where a stale call could otherwise undo a newer one) and reads
back its members' figures. The bot reads the row by (channel, chat) and writes the rest
(docs/webhook-and-bot.md, "Join requests"). A request is decided once: every decision is a
compare-and-set from an undecided status, so an admin's press, the answer to the question and the
sweep's timeout cannot both win. Telegram is told after the decision is stored; `applied_at` records
that it was (with the audit row and the member row, in one transaction), and until then the decision
is owed: the handler that made it applies it, else the sweep does (`decisions_unapplied`).

Times come from Postgres (`now()`): deadlines and deletions are due by the database's clock, the one
a test moves by moving the stored time back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from clarion.db.pool import Db
from clarion.models.group import ManagedGroupSpec

RequestStatus = Literal["pending", "asked", "approved", "declined"]
Decision = Literal["approved", "declined"]


@dataclass(frozen=True)
class GroupRecord:
    """A `managed_groups` row: the operator writes it, the bot and the workers read it."""

    id: int
    namespace: str
    name: str
    channel_id: int
    chat_id: int
    spec: ManagedGroupSpec
    phase: str
    title: str | None
    member_count: int
    member_count_at: datetime | None


@dataclass(frozen=True)
class JoinRequest:
    group_id: int
    user_id: int
    user_chat_id: int
    first_name: str
    username: str | None
    language: str | None
    request_date: int
    status: RequestStatus
    deadline: datetime | None
    card_chat_id: int | None
    card_message_id: int | None
    card_text: str | None
    decided_by: str | None
    decided_by_name: str | None
    reason: str | None
    decided_at: datetime | None
    applied_at: datetime | None


_REQUEST_COLUMNS = """group_id, user_id, user_chat_id, first_name, username, language, request_date, status,
                      deadline, card_chat_id, card_message_id, card_text, decided_by, decided_by_name, reason,
                      decided_at, applied_at"""
# Column lists are constants: the f-strings below (noqa S608) put no outside value into SQL.
_R_COLUMNS = ", ".join("r." + column.strip() for column in _REQUEST_COLUMNS.split(","))
_GROUP_COLUMNS = "id, namespace, name, channel_id, chat_id, spec, phase, title, member_count, member_count_at"


def _group(row: object) -> GroupRecord:
    values = dict(row)  # type: ignore[call-overload]
    return GroupRecord(**values | {"spec": ManagedGroupSpec.model_validate(values["spec"])})


def _request(row: object) -> JoinRequest:
    return JoinRequest(**dict(row))  # type: ignore[call-overload]


async def get_group(db: Db, channel_id: int, chat_id: int) -> GroupRecord | None:
    """The live managed group of `chat_id` run by the channel, if any."""
    row = await db.fetchrow(
        f"""SELECT {_GROUP_COLUMNS} FROM managed_groups
            WHERE channel_id = $1 AND chat_id = $2 AND deleted_at IS NULL""", channel_id, chat_id)  # noqa: S608
    return _group(row) if row is not None else None


async def get_group_by_id(db: Db, group_id: int) -> GroupRecord | None:
    row = await db.fetchrow(
        f"SELECT {_GROUP_COLUMNS} FROM managed_groups WHERE id = $1 AND deleted_at IS NULL", group_id)  # noqa: S608
    return _group(row) if row is not None else None


async def record_request(db: Db, group_id: int, *, user_id: int, user_chat_id: int, first_name: str,
                         username: str | None, language: str | None, request_date: int) -> JoinRequest:
    """Store a join request (the member row `pending` too); return the row as it is now.

    Idempotent per update: the same request (same `date`) handled again returns the stored row unchanged,
    decided or not. A new request replaces a decided one; an undecided one is kept (Telegram holds one
    request per user and chat).
    """
    async with db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"""INSERT INTO group_join_requests AS r (group_id, user_id, user_chat_id, first_name, username,
                                                      language, request_date)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                ON CONFLICT (group_id, user_id) DO UPDATE
                    SET user_chat_id = EXCLUDED.user_chat_id, first_name = EXCLUDED.first_name,
                        username = EXCLUDED.username, language = EXCLUDED.language,
                        request_date = EXCLUDED.request_date, status = 'pending', deadline = NULL,
                        card_chat_id = NULL, card_message_id = NULL, card_text = NULL, decided_by = NULL,
                        decided_by_name = NULL, reason = NULL, decided_at = NULL, applied_at = NULL,
                        created_at = now()
                    WHERE r.request_date <> EXCLUDED.request_date AND r.status IN ('approved', 'declined')
                RETURNING {_REQUEST_COLUMNS}""",  # noqa: S608
            group_id, user_id, user_chat_id, first_name, username, language, request_date)
        if row is None:  # the same request again, or one still undecided
            row = await conn.fetchrow(
                f"SELECT {_REQUEST_COLUMNS} FROM group_join_requests WHERE group_id = $1 AND user_id = $2",  # noqa: S608
                group_id, user_id)
        else:
            await _set_member(conn, group_id, user_id, "pending")
    return _request(row)


async def get_request(db: Db, group_id: int, user_id: int) -> JoinRequest | None:
    row = await db.fetchrow(
        f"SELECT {_REQUEST_COLUMNS} FROM group_join_requests WHERE group_id = $1 AND user_id = $2",  # noqa: S608
        group_id, user_id)
    return _request(row) if row is not None else None


async def set_card(db: Db, group_id: int, user_id: int, *, chat_id: int, message_id: int, text: str) -> None:
    """Record the manual card posted for a pending request."""
    await db.execute(
        """UPDATE group_join_requests SET card_chat_id = $3, card_message_id = $4, card_text = $5
           WHERE group_id = $1 AND user_id = $2""", group_id, user_id, chat_id, message_id, text)


async def ask(db: Db, group_id: int, user_id: int, minutes: int) -> JoinRequest | None:
    """pending → asked, the answer due `minutes` from now (Postgres's clock); None if not pending."""
    row = await db.fetchrow(
        f"""UPDATE group_join_requests SET status = 'asked', deadline = now() + make_interval(mins => $3)
            WHERE group_id = $1 AND user_id = $2 AND status = 'pending'
            RETURNING {_REQUEST_COLUMNS}""", group_id, user_id, minutes)  # noqa: S608
    return _request(row) if row is not None else None


async def asked_of(db: Db, channel_id: int, user_chat_id: int) -> list[JoinRequest]:
    """The channel's requests waiting for this user's answer, oldest first."""
    rows = await db.fetch(
        f"""SELECT {_R_COLUMNS}
            FROM group_join_requests r JOIN managed_groups g ON g.id = r.group_id
            WHERE r.user_chat_id = $2 AND r.status = 'asked' AND g.channel_id = $1
            ORDER BY r.created_at""", channel_id, user_chat_id)  # noqa: S608
    return [_request(row) for row in rows]


async def decide(db: Db, group_id: int, user_id: int, decision: Decision, *, actor: str,
                 actor_name: str | None, reason: str) -> JoinRequest | None:
    """Decide an undecided request (compare-and-set); None when it was decided already, or is gone."""
    row = await db.fetchrow(
        f"""UPDATE group_join_requests
            SET status = $3, decided_by = $4, decided_by_name = $5, reason = $6, decided_at = now()
            WHERE group_id = $1 AND user_id = $2 AND status IN ('pending', 'asked')
            RETURNING {_REQUEST_COLUMNS}""", group_id, user_id, decision, actor, actor_name, reason)  # noqa: S608
    return _request(row) if row is not None else None


async def mark_applied(db: Db, request: JoinRequest, *, channel_key: str, policy: str) -> bool:
    """Telegram was told: set `applied_at`, write the audit row and the member row, in one transaction.

    False (nothing written) when another handler applied it first.
    """
    assert request.status in ("approved", "declined")
    async with db.acquire() as conn, conn.transaction():
        applied = await conn.fetchval(
            """UPDATE group_join_requests SET applied_at = now()
               WHERE group_id = $1 AND user_id = $2 AND status = $3 AND applied_at IS NULL
               RETURNING true""", request.group_id, request.user_id, request.status)
        if not applied:
            return False
        details = {"channel": channel_key, "group_id": request.group_id, "policy": policy,
                   "reason": request.reason, "decided_by": request.decided_by}
        await conn.execute(
            "INSERT INTO audit_log (actor, action, subject, details) VALUES ($1, $2, $3, $4)",
            request.decided_by or f"bot:{channel_key}",
            "group.join_approved" if request.status == "approved" else "group.join_declined",
            f"telegram:{request.user_id}", details)
        await _set_member(conn, request.group_id, request.user_id,
                          "member" if request.status == "approved" else "declined")
    return True


async def _set_member(conn: Db, group_id: int, user_id: int, status: str) -> None:
    """Upsert the member row (`member` also restarts joined and last-seen times)."""
    await conn.execute(
        """INSERT INTO group_members (group_id, user_id, status) VALUES ($1, $2, $3)
           ON CONFLICT (group_id, user_id) DO UPDATE SET status = EXCLUDED.status,
               joined_at = CASE WHEN EXCLUDED.status = 'member' AND group_members.status <> 'member'
                                THEN now() ELSE group_members.joined_at END,
               last_activity_at = CASE WHEN EXCLUDED.status = 'member' THEN now()
                                       ELSE group_members.last_activity_at END""",
        group_id, user_id, status)


async def expired_questions(db: Db, channel_id: int, limit: int = 100) -> list[JoinRequest]:
    """Asked requests of the channel whose deadline has passed (Postgres's clock)."""
    rows = await db.fetch(
        f"""SELECT {_R_COLUMNS}
            FROM group_join_requests r JOIN managed_groups g ON g.id = r.group_id
            WHERE r.status = 'asked' AND r.deadline <= now() AND g.channel_id = $1
            ORDER BY r.deadline LIMIT $2""", channel_id, limit)  # noqa: S608
    return [_request(row) for row in rows]


async def decisions_unapplied(db: Db, channel_id: int, older_than_seconds: float,
                              limit: int = 100) -> list[JoinRequest]:
    """Decisions Telegram was not told of (a handler cut short) for longer than `older_than_seconds`."""
    rows = await db.fetch(
        f"""SELECT {_R_COLUMNS}
            FROM group_join_requests r JOIN managed_groups g ON g.id = r.group_id
            WHERE r.applied_at IS NULL AND r.status IN ('approved', 'declined') AND g.channel_id = $1
              AND r.decided_at <= now() - make_interval(secs => $2)
            ORDER BY r.decided_at LIMIT $3""", channel_id, older_than_seconds, limit)  # noqa: S608
    return [_request(row) for row in rows]


async def record_welcome(db: Db, group_id: int, chat_id: int, message_id: int, after_seconds: int) -> None:
    """The welcome `message_id` is to be deleted `after_seconds` from now."""
    await db.execute(
        """INSERT INTO group_welcomes (group_id, chat_id, message_id, delete_at)
           VALUES ($1, $2, $3, now() + make_interval(secs => $4)) ON CONFLICT DO NOTHING""",
        group_id, chat_id, message_id, after_seconds)


async def welcomes_due(db: Db, channel_id: int, limit: int = 100) -> list[tuple[int, int]]:
    """(chat id, message id) of the channel's welcomes due for deletion."""
    rows = await db.fetch(
        """SELECT w.chat_id, w.message_id FROM group_welcomes w JOIN managed_groups g ON g.id = w.group_id
           WHERE w.delete_at <= now() AND g.channel_id = $1 ORDER BY w.delete_at LIMIT $2""",
        channel_id, limit)
    return [(row["chat_id"], row["message_id"]) for row in rows]


async def forget_welcome(db: Db, chat_id: int, message_id: int) -> None:
    await db.execute("DELETE FROM group_welcomes WHERE chat_id = $1 AND message_id = $2", chat_id, message_id)


# --- the operator's side ----------------------------------------------------------------------

@dataclass(frozen=True)
class GroupTaken:
    """The chat is already run by another live ManagedGroup through the same channel."""

    namespace: str
    name: str


@dataclass(frozen=True)
class GroupActivity:
    """What the bot and the workers recorded about the group's members (zero and None until they do)."""

    pending_join_requests: int = 0
    warned_members: int = 0
    removed_members: int = 0
    last_activity_at: datetime | None = None


async def upsert_group(db: asyncpg.Pool, *, namespace: str, name: str, uid: str, channel_id: int,
                       chat_id: int, spec: dict[str, Any], phase: str) -> GroupRecord | GroupTaken:
    """Insert or refresh the group's row (reviving a deleted one), in one transaction. `phase` is the
    phase a new (or revived) row starts in; a live row keeps its own (the operator moves it).

    A deleted row of another name that still holds (channel, chat) is dropped first (its members went
    when it was deleted); a live one is a conflict, returned as GroupTaken and nothing is written.
    """
    async with db.acquire() as conn, conn.transaction():
        holder = await conn.fetchrow(
            """SELECT namespace, name, deleted_at FROM managed_groups
               WHERE channel_id = $1 AND chat_id = $2 AND NOT (namespace = $3 AND name = $4)
               FOR UPDATE""",
            channel_id, chat_id, namespace, name)
        if holder is not None:
            if holder["deleted_at"] is None:
                return GroupTaken(holder["namespace"], holder["name"])
            await conn.execute("DELETE FROM managed_groups WHERE channel_id = $1 AND chat_id = $2",
                               channel_id, chat_id)
        record = await conn.fetchrow(
            f"""INSERT INTO managed_groups (namespace, name, uid, channel_id, chat_id, spec, phase)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (namespace, name) DO UPDATE SET
                   uid = EXCLUDED.uid, channel_id = EXCLUDED.channel_id, chat_id = EXCLUDED.chat_id,
                   spec = EXCLUDED.spec, deleted_at = NULL, updated_at = now(),
                   phase = CASE WHEN managed_groups.deleted_at IS NULL THEN managed_groups.phase
                                ELSE EXCLUDED.phase END,
                   member_count_at = CASE WHEN managed_groups.chat_id = EXCLUDED.chat_id
                                          THEN managed_groups.member_count_at END
               RETURNING {_GROUP_COLUMNS}""",  # noqa: S608
            namespace, name, uid, channel_id, chat_id, spec, phase)
    return _group(record)


async def record_chat(db: Db, group_id: int, *, title: str | None, member_count: int | None) -> None:
    """The chat's title and member count as Telegram gave them (None: not read this time, kept)."""
    await db.execute(
        """UPDATE managed_groups SET title = COALESCE($2, title),
                  member_count = COALESCE($3, member_count),
                  member_count_at = CASE WHEN $3::integer IS NULL THEN member_count_at ELSE now() END,
                  updated_at = now()
           WHERE id = $1""",
        group_id, title, member_count)


async def activity(db: Db, group_id: int) -> GroupActivity:
    """Counts of the group's member rows by status, and the latest activity of any member."""
    record = await db.fetchrow(
        """SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
                  count(*) FILTER (WHERE status = 'warned') AS warned,
                  count(*) FILTER (WHERE status = 'removed') AS removed,
                  max(last_activity_at) AS last_activity_at
           FROM group_members WHERE group_id = $1""",
        group_id)
    return GroupActivity(record["pending"], record["warned"], record["removed"], record["last_activity_at"])


async def mark_group_deleted(db: asyncpg.Pool, namespace: str, name: str, uid: str) -> bool:
    """The resource is gone: deleted_at set and its member rows dropped (they hold user ids and
    activity times, kept for nothing else). Only the row of this uid; True when there was one."""
    async with db.acquire() as conn, conn.transaction():
        group_id = await conn.fetchval(
            """UPDATE managed_groups SET deleted_at = COALESCE(deleted_at, now()), updated_at = now()
               WHERE namespace = $1 AND name = $2 AND (uid = $3 OR uid IS NULL) RETURNING id""",
            namespace, name, uid)
        if group_id is None:
            return False
        await conn.execute("DELETE FROM group_members WHERE group_id = $1", group_id)
    return True


# --- the operator's side: lifecycle, counts history, scheduled posts --------------------------

@dataclass(frozen=True)
class GroupLifecycle:
    """The row's lifecycle fields: when the phase began, what the maintenance workers recorded (the
    invite link, the dry run's candidates), up to when posts were looked for, and the oldest member
    count within the growth window."""

    phase_since: datetime
    invite_link: str | None
    invite_link_expires_at: datetime | None
    dry_run_candidates: list[int] | None
    dry_run_candidate_count: int | None
    posts_checked_at: datetime
    window_start_at: datetime | None
    window_start_count: int | None


MEMBER_COUNT_KEEP_DAYS = 90
"""group_member_counts rows older than this are dropped (growthWindowDays is at most 90)."""


async def lifecycle(db: Db, group_id: int, window_days: int) -> GroupLifecycle | None:
    """The row's lifecycle fields; the window's oldest count is the first recorded in the last
    `window_days` (Postgres's clock)."""
    record = await db.fetchrow(
        """SELECT g.phase_since, g.invite_link, g.invite_link_expires_at, g.dry_run_candidates,
                  g.dry_run_candidate_count, g.posts_checked_at, c.at AS window_start_at,
                  c.member_count AS window_start_count
           FROM managed_groups g
           LEFT JOIN LATERAL (SELECT at, member_count FROM group_member_counts
                              WHERE group_id = g.id AND at >= now() - make_interval(days => $2)
                              ORDER BY at LIMIT 1) c ON true
           WHERE g.id = $1""",
        group_id, window_days)
    return GroupLifecycle(**dict(record)) if record is not None else None


async def record_member_count(db: Db, group_id: int, member_count: int) -> None:
    """Keep the count for the growth rate: at most one row per hour per group (a count read within the
    hour after the last row is not kept), and rows older than MEMBER_COUNT_KEEP_DAYS dropped."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(
            """INSERT INTO group_member_counts (group_id, member_count)
               SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM group_member_counts
                                               WHERE group_id = $1 AND at > now() - interval '1 hour')""",
            group_id, member_count)
        await conn.execute(
            """DELETE FROM group_member_counts
               WHERE group_id = $1 AND at < now() - make_interval(days => $2)""",
            group_id, MEMBER_COUNT_KEEP_DAYS)


async def set_phase(db: Db, group_id: int, phase: str) -> datetime | None:
    """Move the lifecycle phase the workers act on (inactivity is enforced in Monitoring); phase_since
    becomes now. Returns the new phase_since, None when the row was in `phase` already."""
    since: datetime | None = await db.fetchval(
        """UPDATE managed_groups SET phase = $2, phase_since = now(), updated_at = now()
           WHERE id = $1 AND phase <> $2 RETURNING phase_since""",
        group_id, phase)
    return since


async def get_group_by_name(db: Db, namespace: str, name: str) -> GroupRecord | None:
    """The live row of ManagedGroup namespace/name."""
    row = await db.fetchrow(
        f"""SELECT {_GROUP_COLUMNS} FROM managed_groups
            WHERE namespace = $1 AND name = $2 AND deleted_at IS NULL""", namespace, name)  # noqa: S608
    return _group(row) if row is not None else None


async def posts_checked_at(db: Db, group_id: int) -> datetime | None:
    checked: datetime | None = await db.fetchval(
        "SELECT posts_checked_at FROM managed_groups WHERE id = $1", group_id)
    return checked


async def set_posts_checked(db: Db, group_id: int, checked_at: datetime) -> None:
    """Due occurrences up to `checked_at` have been queued (or skipped); never moves backwards."""
    await db.execute(
        """UPDATE managed_groups SET posts_checked_at = $2
           WHERE id = $1 AND posts_checked_at < $2""", group_id, checked_at)
