"""Web push subscriptions (migration 0020): registered through `POST /api/v1/push-subscriptions` (the
API, as the system role), read, touched and deleted by the webpush channel's workers (the tenant role;
`clarion.db.tenancy` grants SELECT, UPDATE of last_sent_at, DELETE).

Idempotent writes: `register` is keyed by (channel, endpoint), so the same browser subscription sent
again updates its row instead of adding one; `delete` of a row already gone deletes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from clarion.db.pool import Db

_COLUMNS = "id, channel_id, recipient, endpoint, p256dh, auth, expires_at, created_at, last_sent_at"


@dataclass(frozen=True)
class Subscription:
    id: uuid.UUID
    channel_id: int
    recipient: str
    endpoint: str
    p256dh: str
    auth: str
    expires_at: datetime | None
    created_at: datetime
    last_sent_at: datetime | None


def _subscription(record: asyncpg.Record) -> Subscription:
    return Subscription(**{key: record[key] for key in _COLUMNS.split(", ")})


async def register(conn: Db, *, channel_id: int, recipient: str, endpoint: str, p256dh: str, auth: str,
                   expires_at: datetime | None) -> tuple[Subscription, bool]:
    """Store a browser's subscription for `recipient`; (the row, True when it is new). The endpoint
    already registered on the channel keeps its id and takes the new recipient, keys and expiry."""
    record = await conn.fetchrow(
        f"""INSERT INTO push_subscriptions (id, channel_id, recipient, endpoint, p256dh, auth, expires_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (channel_id, endpoint) DO UPDATE
               SET recipient = EXCLUDED.recipient, p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth,
                   expires_at = EXCLUDED.expires_at
            RETURNING {_COLUMNS}, (xmax = 0) AS inserted""",  # noqa: S608 - a constant column list
        uuid.uuid4(), channel_id, recipient, endpoint, p256dh, auth, expires_at)
    return _subscription(record), bool(record["inserted"])


async def get(conn: Db, channel_id: int, subscription_id: uuid.UUID) -> Subscription | None:
    """The subscription `subscription_id` of the channel, or None (deleted, or another channel's)."""
    record = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM push_subscriptions WHERE id = $1 AND channel_id = $2",  # noqa: S608
        subscription_id, channel_id)
    return None if record is None else _subscription(record)


async def find(conn: Db, subscription_id: uuid.UUID) -> tuple[Subscription, str, str] | None:
    """The subscription with its channel's namespace and name (the API checks the caller's key may use
    that channel before it deletes), or None."""
    record = await conn.fetchrow(
        f"""SELECT {', '.join('s.' + c for c in _COLUMNS.split(', '))}, ch.namespace, ch.name
            FROM push_subscriptions s JOIN channels ch ON ch.id = s.channel_id WHERE s.id = $1""",  # noqa: S608
        subscription_id)
    return None if record is None else (_subscription(record), record["namespace"], record["name"])


async def for_recipient(conn: Db, channel_id: int, recipient: str) -> list[Subscription]:
    """Every subscription of `recipient` on the channel (one per browser), oldest first."""
    records = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM push_subscriptions WHERE channel_id = $1 AND recipient = $2
            ORDER BY created_at, id""", channel_id, recipient)  # noqa: S608 - a constant column list
    return [_subscription(r) for r in records]


async def delete(conn: Db, channel_id: int, subscription_id: uuid.UUID) -> bool:
    """Remove the subscription (the API's DELETE, a push service's 404 or 410); True when a row went."""
    deleted = await conn.fetchval(
        "DELETE FROM push_subscriptions WHERE id = $1 AND channel_id = $2 RETURNING id",
        subscription_id, channel_id)
    return deleted is not None


async def mark_sent(conn: Db, channel_id: int, subscription_id: uuid.UUID) -> None:
    """Record that the push service accepted a message for the subscription."""
    await conn.execute("UPDATE push_subscriptions SET last_sent_at = now() WHERE id = $1 AND channel_id = $2",
                       subscription_id, channel_id)


async def known(db: Db, pairs: list[tuple[int, uuid.UUID]]) -> set[tuple[int, uuid.UUID]]:
    """Which of the (channel id, subscription id) pairs are registered subscriptions: one query for
    a whole event's recipients (the events API's reachability check)."""
    if not pairs:
        return set()
    rows = await db.fetch(
        """SELECT channel_id, id FROM push_subscriptions
           WHERE (channel_id, id) IN (SELECT * FROM unnest($1::bigint[], $2::uuid[]))""",
        [c for c, _ in pairs], [s for _, s in pairs])
    return {(row["channel_id"], row["id"]) for row in rows}
