"""Support threads (docs/support.md): a request that reached a channel's support chat, and its reply.

A thread starts from a user's DM to the bot (origin `telegram`: the bot posts it to the support chat)
or from `POST /api/v1/requests` (origin `api`: the webhook stores it with its admin post as a
notification the channel's worker sends). An admin answers in the chat or in the Mini App; the
answer goes to the user by Telegram or to the requester by email, and the bot edits the admin post
with the outcome. Status: `open` → `replying` (an answer is on its way) → `replied` | `failed`
(`failed` may be answered again).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from clarion.db.pool import Db

Origin = Literal["telegram", "api"]
ThreadStatus = Literal["open", "replying", "replied", "failed"]
#: Statuses in which an admin may (again) answer.
ANSWERABLE: tuple[ThreadStatus, ...] = ("open", "failed")


#: The `reference` of a thread's notifications: its admin post (api requests) and its replies. The bot
#: follows the status streams and tells them apart by it.
PostOrReply = Literal["post", "reply"]
_REFERENCE_PREFIX = "support-"


def reference(kind: PostOrReply, thread_id: int) -> str:
    """`support-post:<id>` or `support-reply:<id>`."""
    return f"{_REFERENCE_PREFIX}{kind}:{thread_id}"


def parse_reference(value: str | None) -> tuple[PostOrReply, int] | None:
    """(kind, thread id) of a support notification's reference; None for any other reference."""
    if not value or not value.startswith(_REFERENCE_PREFIX):
        return None
    kind, _, number = value.removeprefix(_REFERENCE_PREFIX).partition(":")
    if kind not in ("post", "reply") or not number.isdigit():
        return None
    return ("post" if kind == "post" else "reply"), int(number)


@dataclass(frozen=True)
class SupportThread:
    """What answering a thread needs: the user's private chat, name and language when they wrote."""

    user_chat_id: int
    user_name: str | None
    user_language: str | None


@dataclass(frozen=True)
class SupportRequest:
    """A whole support thread row."""

    id: int
    channel_id: int
    origin: Origin
    user_chat_id: int | None
    user_name: str | None
    user_language: str | None
    requester_email: str | None
    body: str | None
    admin_chat_id: int
    admin_message_id: int | None
    post_text: str | None
    post_notification_id: uuid.UUID | None
    status: ThreadStatus
    replied_by: int | None
    replied_by_name: str | None
    reply_text: str | None
    reply_notification_id: uuid.UUID | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    post_shown_at: datetime | None = None

    @property
    def post_edit_owed(self) -> bool:
        """Settled, and its admin post does not show this outcome yet."""
        return self.status in ("replied", "failed") and self.post_shown_at != self.updated_at


_COLUMNS = """id, channel_id, origin, user_chat_id, user_name, user_language, requester_email, body,
              admin_chat_id, admin_message_id, post_text, post_notification_id, status, replied_by,
              replied_by_name, reply_text, reply_notification_id, last_error, created_at, updated_at,
              post_shown_at"""


def _request(row: object) -> SupportRequest:
    return SupportRequest(**dict(row))  # type: ignore[call-overload]


async def reserve_thread_id(db: Db) -> int:
    """A new thread id, taken before the post is sent so that its Reply button can carry the id.

    An id whose post then fails is never used: ids have gaps, and are never handed out twice.
    """
    thread_id: int = await db.fetchval("SELECT nextval(pg_get_serial_sequence('support_threads', 'id'))")
    return thread_id


async def record_thread(db: Db, channel_id: int, thread_id: int, *, user_chat_id: int,
                        user_message_id: int, admin_chat_id: int, admin_message_id: int, user_name: str,
                        user_language: str, body: str | None = None, post_text: str | None = None) -> None:
    """Store a DM's thread under the id `reserve_thread_id` gave, once its post is in the support chat."""
    await db.execute(
        """INSERT INTO support_threads (id, channel_id, user_chat_id, admin_chat_id, admin_message_id,
                                        user_message_id, user_name, user_language, body, post_text)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
        thread_id, channel_id, user_chat_id, admin_chat_id, admin_message_id, user_message_id,
        user_name, user_language, body, post_text,
    )


async def get_thread(db: Db, channel_id: int, thread_id: int) -> SupportThread | None:
    """The thread with this id in this channel, else None (also for an id of another channel's thread)."""
    row = await db.fetchrow(
        """SELECT user_chat_id, user_name, user_language FROM support_threads
           WHERE id = $1 AND channel_id = $2""",
        thread_id, channel_id,
    )
    return SupportThread(**dict(row)) if row is not None else None


async def record_api_request(db: Db, thread_id: int, channel_id: int, *, email: str, name: str | None,
                             language: str, body: str, admin_chat_id: int, post_text: str,
                             post_notification_id: uuid.UUID) -> None:
    """Store a request from the API under a reserved id, with the notification that posts it to the support
    chat (the caller inserts both in one transaction)."""
    await db.execute(
        """INSERT INTO support_threads (id, channel_id, origin, requester_email, user_name, user_language,
                                        body, admin_chat_id, post_text, post_notification_id)
           VALUES ($1, $2, 'api', $3, $4, $5, $6, $7, $8, $9)""",
        thread_id, channel_id, email, name, language, body, admin_chat_id, post_text, post_notification_id,
    )


async def get_request(db: Db, thread_id: int) -> SupportRequest | None:
    """The thread with this id, of whichever channel (the Mini App learns the channel from it)."""
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM support_threads WHERE id = $1", thread_id)  # noqa: S608
    return None if row is None else _request(row)


async def start_reply(db: Db, thread_id: int, *, admin_id: int, admin_name: str, text: str,
                      notification_id: uuid.UUID | None) -> SupportRequest | None:
    """Mark the thread `replying` by this admin with this answer (and the notification that carries it,
    when a worker sends it); None when it is not answerable (another answer is on its way, or it was
    answered)."""
    row = await db.fetchrow(
        f"""UPDATE support_threads SET status = 'replying', replied_by = $2, replied_by_name = $3,
                   reply_text = $4, reply_notification_id = $5, last_error = NULL, updated_at = now()
            WHERE id = $1 AND status = ANY($6::text[])
            RETURNING {_COLUMNS}""",  # noqa: S608 - a constant column list
        thread_id, admin_id, admin_name, text, notification_id, list(ANSWERABLE))
    return None if row is None else _request(row)


async def set_admin_message(db: Db, thread_id: int, post_notification_id: uuid.UUID,
                            admin_message_id: int) -> bool:
    """The message id of an api request's admin post, once its notification was sent."""
    result: str = await db.execute(
        """UPDATE support_threads SET admin_message_id = $3, updated_at = now()
           WHERE id = $1 AND post_notification_id = $2 AND admin_message_id IS NULL""",
        thread_id, post_notification_id, admin_message_id)
    return result.endswith(" 1")


async def finish_reply(db: Db, thread_id: int, *, replied: bool, error: str | None,
                       notification_id: uuid.UUID | None) -> SupportRequest | None:
    """The outcome of the answer on its way: `replied`, or `failed` with the reason. Only the answer the
    thread waits for counts (`notification_id`, None for one the bot sent itself); None when the thread
    does not wait for it (already settled: a repeated event)."""
    row = await db.fetchrow(
        f"""UPDATE support_threads SET status = $2, last_error = $3, updated_at = now()
            WHERE id = $1 AND status = 'replying' AND reply_notification_id IS NOT DISTINCT FROM $4
            RETURNING {_COLUMNS}""",  # noqa: S608 - a constant column list
        thread_id, "replied" if replied else "failed", error, notification_id)
    return None if row is None else _request(row)


async def replies_settled_unseen(db: Db, channel_id: int, limit: int = 100) -> list[tuple[int, uuid.UUID, str,
                                                                                          str | None]]:
    """Threads of the channel still `replying` whose reply notification is settled: (thread id,
    notification id, its status, its error). The bot's sweep settles them when their status event was
    missed (trimmed from the stream, or the bot was away longer than the stream keeps)."""
    rows = await db.fetch(
        """SELECT t.id, n.id AS notification_id, n.status, n.last_error
           FROM support_threads t JOIN notifications n ON n.id = t.reply_notification_id
           WHERE t.channel_id = $1 AND t.status = 'replying' AND n.status IN ('sent', 'failed', 'blocked')
           ORDER BY t.id LIMIT $2""",
        channel_id, limit)
    return [(r["id"], r["notification_id"], r["status"], r["last_error"]) for r in rows]


async def mark_post_shown(db: Db, thread_id: int, updated_at: datetime) -> bool:
    """The admin post now shows the outcome of the row as it was at `updated_at`; False when the row changed
    since (a new answer: its own edit is owed) or was already marked."""
    result: str = await db.execute(
        """UPDATE support_threads SET post_shown_at = $2
           WHERE id = $1 AND updated_at = $2 AND post_shown_at IS DISTINCT FROM $2""",
        thread_id, updated_at)
    return result.endswith(" 1")


async def posts_owed(db: Db, channel_id: int, limit: int = 100) -> list[SupportRequest]:
    """Settled threads of the channel whose admin post (its message id known) does not show the outcome
    yet: the bot's sweep edits them (an edit that failed, or a bot that stopped between the two)."""
    rows = await db.fetch(
        f"""SELECT {_COLUMNS} FROM support_threads
            WHERE channel_id = $1 AND status IN ('replied', 'failed') AND admin_message_id IS NOT NULL
              AND post_shown_at IS DISTINCT FROM updated_at
            ORDER BY id LIMIT $2""",  # noqa: S608 - a constant column list
        channel_id, limit)
    return [_request(r) for r in rows]


async def posts_sent_unseen(db: Db, channel_id: int, limit: int = 100) -> list[tuple[int, uuid.UUID, int]]:
    """Api requests of the channel whose admin post was sent but whose message id the bot has not recorded
    (its status event missed): (thread id, post notification id, Telegram message id)."""
    rows = await db.fetch(
        """SELECT t.id, n.id AS notification_id, n.provider_message_id
           FROM support_threads t JOIN notifications n ON n.id = t.post_notification_id
           WHERE t.channel_id = $1 AND t.admin_message_id IS NULL AND n.status = 'sent'
             AND n.provider_message_id ~ '^[0-9]{1,18}$'
           ORDER BY t.id LIMIT $2""",
        channel_id, limit)
    return [(r["id"], r["notification_id"], int(r["provider_message_id"])) for r in rows]
