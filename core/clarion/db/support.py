"""Support-inbox threads: a user's message posted to the support chat, and whom an admin's answer is for."""

from __future__ import annotations

from dataclasses import dataclass

from clarion.db.subscribers import Db


@dataclass(frozen=True)
class SupportThread:
    """What answering a thread needs: the user's private chat, name and language when they wrote."""

    user_chat_id: int
    user_name: str | None
    user_language: str | None


async def reserve_thread_id(db: Db) -> int:
    """A new thread id, taken before the post is sent so that its Reply button can carry the id.

    An id whose post then fails is never used: ids have gaps, and are never handed out twice.
    """
    thread_id: int = await db.fetchval("SELECT nextval(pg_get_serial_sequence('support_threads', 'id'))")
    return thread_id


async def record_thread(db: Db, channel_id: int, thread_id: int, *, user_chat_id: int,
                        user_message_id: int, admin_chat_id: int, admin_message_id: int, user_name: str,
                        user_language: str) -> None:
    """Store the thread under the id `reserve_thread_id` gave, once its post is in the support chat."""
    await db.execute(
        """INSERT INTO support_threads (id, channel_id, user_chat_id, admin_chat_id, admin_message_id,
                                        user_message_id, user_name, user_language)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        thread_id, channel_id, user_chat_id, admin_chat_id, admin_message_id, user_message_id,
        user_name, user_language,
    )


async def get_thread(db: Db, channel_id: int, thread_id: int) -> SupportThread | None:
    """The thread with this id in this channel, else None (also for an id of another channel's thread)."""
    row = await db.fetchrow(
        """SELECT user_chat_id, user_name, user_language FROM support_threads
           WHERE id = $1 AND channel_id = $2""",
        thread_id, channel_id,
    )
    return SupportThread(**dict(row)) if row is not None else None
