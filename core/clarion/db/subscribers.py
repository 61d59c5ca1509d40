"""Subscriber queries shared by the bot (commands, member updates) and the senders (blocked users)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from clarion.db.pool import Db


@dataclass(frozen=True)
class Subscriber:
    channel_id: int
    chat_id: int
    username: str | None
    first_name: str | None
    last_name: str | None
    language: str | None
    subscribed: bool
    unavailable: bool
    unavailable_reason: str | None
    unavailable_since: datetime | None


async def get_subscriber(db: Db, channel_id: int, chat_id: int) -> Subscriber | None:
    row = await db.fetchrow(
        """SELECT channel_id, chat_id, username, first_name, last_name, language, subscribed, unavailable,
                  unavailable_reason, unavailable_since
           FROM subscribers WHERE channel_id = $1 AND chat_id = $2""",
        channel_id, chat_id,
    )
    return Subscriber(**dict(row)) if row is not None else None


async def subscribe(db: Db, channel_id: int, chat_id: int, *,
                    username: str | None, first_name: str | None, last_name: str | None,
                    language: str) -> str:
    """Insert or refresh a subscriber who asked to subscribe; return their language.

    A language the subscriber chose before is kept; a subscriber who writes to the bot is reachable,
    so any unavailable mark is cleared.
    """
    stored: str = await db.fetchval(
        """INSERT INTO subscribers (channel_id, chat_id, username, first_name, last_name, language)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (channel_id, chat_id) DO UPDATE SET
               username = EXCLUDED.username, first_name = EXCLUDED.first_name,
               last_name = EXCLUDED.last_name,
               language = COALESCE(subscribers.language, EXCLUDED.language),
               subscribed = true, unavailable = false, unavailable_reason = NULL,
               unavailable_since = NULL, updated_at = now()
           RETURNING language""",
        channel_id, chat_id, username, first_name, last_name, language,
    )
    return stored


async def unsubscribe(db: Db, channel_id: int, chat_id: int) -> bool:
    """Mark a subscriber unsubscribed; False when there is no such subscriber."""
    status: str = await db.execute(
        """UPDATE subscribers SET subscribed = false, updated_at = now()
           WHERE channel_id = $1 AND chat_id = $2""",
        channel_id, chat_id,
    )
    return status != "UPDATE 0"


async def set_language(db: Db, channel_id: int, chat_id: int,
                       language: str) -> None:
    """Store a chosen language; a chat that never subscribed gets an unsubscribed row holding it."""
    await db.execute(
        """INSERT INTO subscribers (channel_id, chat_id, language, subscribed) VALUES ($1, $2, $3, false)
           ON CONFLICT (channel_id, chat_id)
           DO UPDATE SET language = EXCLUDED.language, updated_at = now()""",
        channel_id, chat_id, language,
    )


async def get_language(db: Db, channel_id: int, chat_id: int) -> str | None:
    value: str | None = await db.fetchval(
        "SELECT language FROM subscribers WHERE channel_id = $1 AND chat_id = $2", channel_id, chat_id,
    )
    return value


async def mark_unavailable(db: Db, channel_id: int, chat_id: int,
                           reason: str) -> bool:
    """Mark a subscriber unreachable (e.g. reason 'blocked', 'deactivated'); keeps the first `since`."""
    status: str = await db.execute(
        """UPDATE subscribers SET unavailable = true, unavailable_reason = $3,
               unavailable_since = COALESCE(CASE WHEN unavailable THEN unavailable_since END, now()),
               updated_at = now()
           WHERE channel_id = $1 AND chat_id = $2""",
        channel_id, chat_id, reason,
    )
    return status != "UPDATE 0"


async def mark_available(db: Db, channel_id: int, chat_id: int) -> bool:
    """Clear an unavailable mark (the user unblocked the bot)."""
    status: str = await db.execute(
        """UPDATE subscribers SET unavailable = false, unavailable_reason = NULL, unavailable_since = NULL,
               updated_at = now()
           WHERE channel_id = $1 AND chat_id = $2""",
        channel_id, chat_id,
    )
    return status != "UPDATE 0"
