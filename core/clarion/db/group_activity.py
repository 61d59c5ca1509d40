"""Managed groups' member activity as the bot sees it: last-seen times (batched) and membership changes.

`record_seen` is the one statement a flush of the bot's activity buffer (clarion_bot.activity) runs, for
every (group, user) the buffer holds: a member row is created (`member`, a member the bot had not seen
yet) or its `last_activity_at` moved forward (`GREATEST`: an older time written late never moves it
back, so running a flush again is harmless). A `warned` member who spoke after the warning is a member
again (`warned_at` cleared). Other statuses stay: `left`, `removed` and `declined` change only through
`chat_member` updates (`member_joined`, `member_left`), so a message buffered before a member left
does not bring the member back.

Rows of a group deleted meanwhile are skipped (the group's rows went with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from clarion.db.pool import Db


async def record_seen(db: Db, group_ids: Sequence[int], user_ids: Sequence[int],
                      seen_at: Sequence[datetime]) -> None:
    """Each (group, user) was seen at the matching time: one INSERT … ON CONFLICT for all of them."""
    await db.execute(
        """INSERT INTO group_members AS m (group_id, user_id, status, joined_at, last_activity_at)
           SELECT a.group_id, a.user_id, 'member', a.seen_at, a.seen_at
           FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[]) AS a(group_id, user_id, seen_at)
           JOIN managed_groups g ON g.id = a.group_id AND g.deleted_at IS NULL
           ON CONFLICT (group_id, user_id) DO UPDATE SET
               last_activity_at = GREATEST(m.last_activity_at, EXCLUDED.last_activity_at),
               status = CASE WHEN m.status = 'warned'
                                  AND EXCLUDED.last_activity_at >= date_trunc('second', m.warned_at)
                             THEN 'member' ELSE m.status END,
               warned_at = CASE WHEN m.status = 'warned'
                                     AND EXCLUDED.last_activity_at >= date_trunc('second', m.warned_at)
                                THEN NULL ELSE m.warned_at END""",
        list(group_ids), list(user_ids), list(seen_at))


async def member_joined(db: Db, group_id: int, user_id: int) -> None:
    """A `chat_member` update: the user is in the group (again): `member`, joined and seen now."""
    await db.execute(
        """INSERT INTO group_members AS m (group_id, user_id, status) VALUES ($1, $2, 'member')
           ON CONFLICT (group_id, user_id) DO UPDATE SET status = 'member', warned_at = NULL,
               joined_at = CASE WHEN m.status <> 'member' THEN now() ELSE m.joined_at END,
               last_activity_at = now()""",
        group_id, user_id)


async def member_left(db: Db, group_id: int, user_id: int) -> None:
    """A `chat_member` update: the user left or was banned: `left`, unless the inactivity sweep removed
    them (`removed` stays: its ban and unban arrive as such updates too)."""
    await db.execute(
        """INSERT INTO group_members AS m (group_id, user_id, status) VALUES ($1, $2, 'left')
           ON CONFLICT (group_id, user_id) DO UPDATE SET status = 'left', warned_at = NULL
           WHERE m.status <> 'removed'""",
        group_id, user_id)
