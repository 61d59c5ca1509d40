"""The operator's lifecycle rows (clarion.db.groups, the end of the module) against a real Postgres:
the member count history the growth rate reads, the phase and its start, up to when posts were
looked for."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest
from clarion.db import groups as q

pytestmark = pytest.mark.integration


async def _group(db: asyncpg.Pool) -> int:
    channel: int = await db.fetchval(
        """INSERT INTO channels (namespace, name, type, bot_id, config)
           VALUES ('default', 'community', 'telegram', 42, '{}'::jsonb) RETURNING id""")
    group: int = await db.fetchval(
        """INSERT INTO managed_groups (namespace, name, channel_id, chat_id, spec)
           VALUES ('default', 'club', $1, -1001, '{"channelRef": {"name": "community"}, "chatId": -1001}')
           RETURNING id""", channel)
    return group


async def _counts(db: asyncpg.Pool, group: int) -> list[int]:
    rows = await db.fetch("SELECT member_count FROM group_member_counts WHERE group_id = $1 ORDER BY at",
                          group)
    return [row["member_count"] for row in rows]


async def test_member_counts_are_kept_hourly_for_90_days_and_the_window_starts_at_its_oldest(
    db: asyncpg.Pool,
) -> None:
    group = await _group(db)
    await q.record_member_count(db, group, 40)
    await q.record_member_count(db, group, 41)  # within the hour: not kept
    assert await _counts(db, group) == [40]
    await db.execute("UPDATE group_member_counts SET at = at - interval '61 minutes' WHERE group_id = $1",
                     group)
    await db.execute("""INSERT INTO group_member_counts (group_id, at, member_count)
                        VALUES ($1, now() - interval '91 days', 12), ($1, now() - interval '8 days', 30)""",
                     group)
    await q.record_member_count(db, group, 42)
    assert await _counts(db, group) == [30, 40, 42]  # the 91-day-old row dropped

    week = await q.lifecycle(db, group, 7)
    assert week is not None and week.window_start_count == 40
    assert week.posts_checked_at is not None and week.dry_run_candidates is None
    ten_days = await q.lifecycle(db, group, 10)
    assert ten_days is not None and ten_days.window_start_count == 30


async def test_a_phase_move_restarts_phase_since_once_and_posts_checked_only_moves_forward(
    db: asyncpg.Pool,
) -> None:
    group = await _group(db)
    await db.execute("UPDATE managed_groups SET phase_since = now() - interval '31 days' WHERE id = $1",
                     group)
    since = await q.set_phase(db, group, "Monitoring")
    stored = await q.lifecycle(db, group, 7)
    assert since is not None and stored is not None and stored.phase_since == since
    assert await q.set_phase(db, group, "Monitoring") is None  # already there: phase_since kept

    checked = await q.posts_checked_at(db, group)
    assert checked is not None
    await q.set_posts_checked(db, group, checked - timedelta(hours=1))
    assert await q.posts_checked_at(db, group) == checked
    await q.set_posts_checked(db, group, checked + timedelta(minutes=1))
    assert await q.posts_checked_at(db, group) == checked + timedelta(minutes=1)
    named = await q.get_group_by_name(db, "default", "club")
    assert named is not None and (named.id, named.phase) == (group, "Monitoring")
