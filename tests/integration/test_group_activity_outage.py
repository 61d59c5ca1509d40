"""The group activity buffer rides a Postgres outage out: its times and the entries they acknowledge wait
in memory, nothing acknowledged before it is written, and everything is written once Postgres is back.

Its own Postgres (clarion_dev.testing.servers), so that it can be stopped; the shared Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from clarion.db import apply_migrations, create_pool
from clarion.streams import BOT_GROUP, updates_stream
from clarion_bot.activity import ActivityBuffer
from clarion_bot.consumer import Receipt
from clarion_bot.failures import ActivityBacklog, Verdict, judge
from clarion_dev.testing.servers import PrivatePostgres
from prometheus_client import REGISTRY

from tests.integration.test_bot_end_to_end import until

pytestmark = pytest.mark.integration

STREAM = updates_stream("tests.outage", 0)


@pytest.fixture
async def group_db(private_postgres: PrivatePostgres) -> AsyncIterator[tuple[asyncpg.Pool, int]]:
    conn = await asyncpg.connect(private_postgres.dsn())
    try:
        await apply_migrations(conn)
        channel = await conn.fetchval("INSERT INTO channels (namespace, name, type) VALUES "
                                      "('tests', 'outage', 'telegram') RETURNING id")
        group = await conn.fetchval("INSERT INTO managed_groups (namespace, name, channel_id, chat_id) "
                                    "VALUES ('tests', 'club', $1, -1001) RETURNING id", channel)
    finally:
        await conn.close()
    pool = await create_pool(private_postgres.dsn(), min_size=1, max_size=2)
    try:
        yield pool, group
    finally:
        await pool.close()


async def pending_entries(redis: Any, count: int) -> list[Receipt]:
    """`count` entries delivered to the bot's group and not acknowledged, as a handler holds them."""
    await redis.delete(STREAM)
    await redis.xgroup_create(STREAM, BOT_GROUP, id="0", mkstream=True)
    for n in range(count):
        await redis.xadd(STREAM, {"n": n})
    [[_, entries]] = await redis.xreadgroup(BOT_GROUP, "r1", {STREAM: ">"})
    return [Receipt(STREAM, entry_id, recovered=False) for entry_id, _ in entries]


async def pending(redis: Any) -> int:
    return int((await redis.xpending(STREAM, BOT_GROUP))["pending"])


async def acknowledged(redis: Any) -> bool:
    return await pending(redis) == 0


def failures() -> float:
    return REGISTRY.get_sample_value("clarion_group_activity_flush_failures_total") or 0.0


async def test_times_and_entries_wait_through_an_outage_and_are_written_after_it(
        private_postgres: PrivatePostgres, group_db: tuple[asyncpg.Pool, int], redis: Any) -> None:
    pool, group = group_db
    buffer = ActivityBuffer(db=pool, redis=redis, flush_seconds=0.1, outage_tolerance=0.5, max_held=3)
    stop = asyncio.Event()
    runner = asyncio.create_task(buffer.run(stop))
    seen = datetime.now(UTC).replace(microsecond=0)
    failed_before = failures()
    try:
        private_postgres.stop()
        receipts = await pending_entries(redis, 3)
        for n, receipt in enumerate(receipts):
            buffer.record(group, 100 + n % 2, seen + timedelta(seconds=n))
            buffer.hold(receipt)
        with pytest.raises(ActivityBacklog) as backlog:  # full: the next update is held back, as in an outage
            buffer.record(group, 102, seen)
        assert judge(backlog.value).verdict is Verdict.OUTAGE
        await until(lambda: failures() >= failed_before + 2, timeout=30, what="flushes giving up")
        assert await pending(redis) == 3 and len(buffer.held) == 3 and len(buffer.seen) == 2
        private_postgres.start()
        await until(lambda: acknowledged(redis), timeout=60, what="the entries acknowledged")
    finally:
        stop.set()
        await runner
    rows = await pool.fetch("SELECT user_id, status, last_activity_at FROM group_members ORDER BY user_id")
    assert [(r["user_id"], r["status"], r["last_activity_at"]) for r in rows] == [
        (100, "member", seen + timedelta(seconds=2)), (101, "member", seen + timedelta(seconds=1))]
    assert buffer.seen == {} and buffer.held == []


async def test_a_stop_during_an_outage_leaves_the_entries_pending(
        private_postgres: PrivatePostgres, group_db: tuple[asyncpg.Pool, int], redis: Any) -> None:
    pool, group = group_db
    buffer = ActivityBuffer(db=pool, redis=redis, flush_seconds=60)
    [receipt] = await pending_entries(redis, 1)
    buffer.record(group, 100, datetime.now(UTC))
    buffer.hold(receipt)
    private_postgres.stop()
    await buffer.close(tolerance=0.5)  # gives up: the partition's next holder handles the entry again
    assert await pending(redis) == 1
    private_postgres.start()
    await buffer.close()
    assert await pending(redis) == 0
    assert await pool.fetchval("SELECT count(*) FROM group_members") == 1
