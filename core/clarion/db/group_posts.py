"""Posts in managed groups (ADR 0010): each is a notification on the lane `group-posts` (recipient: the
group's chat id), sent by the channel's group-posts workers through the bot's shared limiter, 20 a
minute per group at most. `group_posts` maps a post's occurrence to its notification.

`queue_post` stores both in one transaction through `clarion.db.notifications.accept`. A scheduled
post's occurrence (the ManagedGroup's `posts[].name` and the time it is due) is stored once: the
unique (group, name, due_at) makes a second call, by another operator pass or a retry, a no-op that
returns None. One-off posts (the API's, name None) never collide.

A post due now is stored `queued`, as on its stream: the caller puts `row.entry()` there after the
commit (`clarion.streams.add_tasks`), and if that fails a worker's replayer does it. A post due later
is stored `created` and put there by a worker's replayer once due, like any scheduled notification.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from clarion.db import notifications as q
from clarion.db.groups import GroupRecord
from clarion.db.pool import Db
from clarion.models.campaign import ParseMode
from clarion.models.notification import Content
from clarion.streams import GROUP_POSTS_LANE

#: Attempts at sending a post (the API's notifications get as many).
POST_MAX_ATTEMPTS = 3


def post_reference(group: GroupRecord) -> str:
    """The reference of every post of the group: `GET /api/v1/notifications?reference=group:<name>`
    lists them."""
    return f"group:{group.name}"


class _Taken(Exception):
    """This occurrence was stored before: roll back the notification just inserted."""


async def queue_post(conn: Db, group: GroupRecord, *, name: str | None, due_at: datetime | None, text: str,
                     parse_mode: ParseMode, pin: bool, trace_id: str,
                     api_key_id: int | None = None) -> q.Row | None:
    """Store the post's notification and its `group_posts` row in one transaction (in the caller's,
    when it has one; `conn` is a connection); the notification's row, or None when the occurrence
    (group, name, due_at) was stored before. `due_at` None: now (Postgres's clock). `api_key_id`: the
    key of an API request that asked for it.

    Raises pydantic's ValidationError for content Telegram cannot take (the API checks it first).
    """
    content = Content(text=text, parse_mode=parse_mode, pin=pin).to_k8s()
    later = due_at is not None and bool(await conn.fetchval("SELECT $1::timestamptz > now()", due_at))
    new = q.NewNotification(
        id=uuid.uuid4(), channel_id=group.channel_id, lane=GROUP_POSTS_LANE, recipient=str(group.chat_id),
        content=content, reference=post_reference(group), api_key_id=api_key_id, trace_id=trace_id,
        scheduled_for=due_at if later else None, max_attempts=POST_MAX_ATTEMPTS)
    try:
        async with conn.transaction():
            row, _ = await q.accept(conn, new)
            assert row is not None
            stored = await conn.fetchval(
                """INSERT INTO group_posts (group_id, name, due_at, notification_id)
                   VALUES ($1, $2, coalesce($3, now()), $4)
                   ON CONFLICT (group_id, name, due_at) DO NOTHING RETURNING true""",
                group.id, name, due_at, row.id)
            if not stored:
                raise _Taken
    except _Taken:
        return None
    return row
