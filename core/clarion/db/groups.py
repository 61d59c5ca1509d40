"""ManagedGroup rows (`managed_groups`, `group_members`): what the operator records and reads back.

The operator writes the group's row (ADR 0010); the bot and the group workers write its members.
Every write here is idempotent: keyed by (namespace, name), compare-and-set on the resource's uid
where a stale call could otherwise undo a newer one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True)
class GroupRow:
    """The parts of a `managed_groups` row the operator reads."""

    id: int
    channel_id: int
    chat_id: int
    phase: str
    member_count: int
    member_count_at: datetime | None
    title: str | None


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


def _row(record: Any) -> GroupRow:
    return GroupRow(id=record["id"], channel_id=record["channel_id"], chat_id=record["chat_id"],
                    phase=record["phase"], member_count=record["member_count"],
                    member_count_at=record["member_count_at"], title=record["title"])


async def upsert_group(db: asyncpg.Pool, *, namespace: str, name: str, uid: str, channel_id: int,
                       chat_id: int, spec: dict[str, Any], phase: str) -> GroupRow | GroupTaken:
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
            """INSERT INTO managed_groups (namespace, name, uid, channel_id, chat_id, spec, phase)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (namespace, name) DO UPDATE SET
                   uid = EXCLUDED.uid, channel_id = EXCLUDED.channel_id, chat_id = EXCLUDED.chat_id,
                   spec = EXCLUDED.spec, deleted_at = NULL, updated_at = now(),
                   phase = CASE WHEN managed_groups.deleted_at IS NULL THEN managed_groups.phase
                                ELSE EXCLUDED.phase END,
                   member_count_at = CASE WHEN managed_groups.chat_id = EXCLUDED.chat_id
                                          THEN managed_groups.member_count_at END
               RETURNING *""",
            namespace, name, uid, channel_id, chat_id, spec, phase)
    return _row(record)


async def record_chat(db: Db, group_id: int, *, title: str | None, member_count: int | None) -> None:
    """The chat's title and member count as Telegram gave them (None: not read this time, kept)."""
    await db.execute(
        """UPDATE managed_groups SET title = COALESCE($2, title),
                  member_count = COALESCE($3, member_count),
                  member_count_at = CASE WHEN $3::integer IS NULL THEN member_count_at ELSE now() END,
                  updated_at = now()
           WHERE id = $1""",
        group_id, title, member_count)


async def set_phase(db: Db, group_id: int, phase: str) -> None:
    """The lifecycle phase the workers act on (inactivity is enforced in Monitoring)."""
    await db.execute("UPDATE managed_groups SET phase = $2, updated_at = now() WHERE id = $1 AND phase <> $2",
                     group_id, phase)


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
