"""The accept path's group commit (`clarion_webhook.batcher`) on real Postgres and Redis: every caller
gets its own row, every queued row is on its stream, and a row Postgres refuses fails only its own
request."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from clarion.db import notifications as q
from clarion.streams import NotificationTask, notify_stream
from clarion_webhook.batcher import AcceptBatcher
from prometheus_client import REGISTRY

pytestmark = pytest.mark.integration


async def _channel(db: asyncpg.Pool) -> int:
    channel_id: int = await db.fetchval(
        """INSERT INTO channels (namespace, name, type, config, ready)
           VALUES ('shop', 'alerts', 'telegram', '{}', true) RETURNING id""")
    return channel_id


def _new(channel_id: int, chat: int, *, scheduled_for: datetime | None = None) -> q.NewNotification:
    return q.NewNotification(id=uuid.uuid4(), channel_id=channel_id, lane="instant", recipient=str(chat),
                             content={"text": f"hello {chat}"}, reference=f"r{chat}", api_key_id=None,
                             trace_id=os.urandom(16).hex(), scheduled_for=scheduled_for, max_attempts=3)


async def test_concurrent_accepts_are_stored_together_each_answered_with_its_own_row(
    db: asyncpg.Pool, redis: aioredis.Redis,
) -> None:
    channel_id = await _channel(db)
    batcher = AcceptBatcher(db, redis, writers=2)
    later = datetime.now(UTC) + timedelta(hours=1)
    news = [_new(channel_id, chat, scheduled_for=later if chat % 10 == 0 else None) for chat in range(500)]

    writes_before = REGISTRY.get_sample_value("clarion_api_accept_writes_total") or 0
    rows = await asyncio.gather(*(batcher.accept(new) for new in news))
    await batcher.close()

    assert [(r.id, r.recipient, r.content["text"]) for r in rows] == [
        (n.id, n.recipient, n.content["text"]) for n in news]
    assert {r.status for r in rows if r.scheduled_for is None} == {"queued"}
    assert {r.status for r in rows if r.scheduled_for is not None} == {"created"}
    assert all(r.channel_key == "shop.alerts" for r in rows)
    assert await db.fetchval("SELECT count(*) FROM notifications") == 500
    entries: Any = await redis.xrange(notify_stream("shop.alerts", "instant"))
    queued = {str(n.id) for n in news if n.scheduled_for is None}
    on_stream = [NotificationTask.from_fields(fields).notification_id for _, fields in entries]
    assert sorted(on_stream) == sorted(queued)  # each queued row once; scheduled ones wait for their time
    writes = (REGISTRY.get_sample_value("clarion_api_accept_writes_total") or 0) - writes_before
    assert 2 <= writes <= 20, writes  # stored by a few statements, not one per notification


async def test_a_row_postgres_refuses_fails_only_its_own_request(
    db: asyncpg.Pool, redis: aioredis.Redis,
) -> None:
    channel_id = await _channel(db)
    batcher = AcceptBatcher(db, redis, writers=1)
    good = [_new(channel_id, chat) for chat in range(20)]
    bad = _new(channel_id + 1000, 99)  # no such channel: the foreign key refuses it

    results = await asyncio.gather(*(batcher.accept(new) for new in [*good[:10], bad, *good[10:]]),
                                   return_exceptions=True)
    await batcher.close()

    assert isinstance(results[10], asyncpg.ForeignKeyViolationError)
    stored = [r for r in results if isinstance(r, q.Row)]
    assert sorted(r.id for r in stored) == sorted(n.id for n in good)
    assert await db.fetchval("SELECT count(*) FROM notifications") == 20


async def test_an_outage_is_every_waiting_caller_s_error_and_stores_nothing(
    db: asyncpg.Pool, redis: aioredis.Redis, database_url: str,
) -> None:
    channel_id = await _channel(db)
    closed = await asyncpg.create_pool(database_url, min_size=0, max_size=1)
    await closed.close()
    batcher = AcceptBatcher(closed, redis, writers=1)

    results = await asyncio.gather(*(batcher.accept(_new(channel_id, chat)) for chat in range(5)),
                                   return_exceptions=True)

    assert all(isinstance(r, asyncpg.InterfaceError) for r in results), results
    assert await db.fetchval("SELECT count(*) FROM notifications") == 0
