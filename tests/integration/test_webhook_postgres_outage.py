"""The webhook follows the channel table by LISTEN/NOTIFY and keeps taking updates while Postgres is down.

The outage test runs its own Postgres (clarion_dev.testing.servers) so that it can stop it; updates go
through the real HTTP server (uvicorn on loopback) into the shared Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from clarion.db import apply_migrations, create_pool
from clarion_dev.testing.servers import PrivatePostgres, serve_asgi
from clarion_dev.testing.waiting import async_wait_for
from clarion_webhook.app import create_app
from clarion_webhook.settings import WebhookSettings

from tests.integration.test_webhook_ingress import (
    CHANNEL,
    HEADERS,
    SECRET,
    all_entries,
    insert_channel,
    message_update,
    metric_value,
)

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 30
DATABASE_UP = "clarion_webhook_database_up"
STALE = "clarion_webhook_channel_cache_stale_seconds"


@pytest.fixture
async def outage_db(private_postgres: PrivatePostgres) -> AsyncIterator[str]:
    """The private cluster's `postgres` database, migrated, with the test channel in it."""
    conn = await asyncpg.connect(private_postgres.dsn())
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    pool = await create_pool(private_postgres.dsn(), min_size=1, max_size=2)
    try:
        await insert_channel(pool)
    finally:
        await pool.close()
    yield private_postgres.dsn()


@dataclass
class Observation:
    """What a user of the webhook saw at one moment: readiness and the outage metrics."""

    at: float
    ready_status: int
    ready: dict[str, Any]
    database_up: float
    stale_seconds: float


@dataclass
class Traffic:
    answers: list[tuple[int, int, float]] = field(default_factory=list)  # (update_id, status, time)
    observations: list[Observation] = field(default_factory=list)


async def observe(client: httpx.AsyncClient) -> Observation:
    ready = await client.get("/readyz")
    metrics = (await client.get("/metrics")).text
    return Observation(time.monotonic(), ready.status_code, ready.json(), metric_value(metrics, DATABASE_UP),
                       metric_value(metrics, STALE))


async def send_updates(client: httpx.AsyncClient, traffic: Traffic, stop: asyncio.Event) -> None:
    update_id = 1000
    while not stop.is_set():
        update_id += 1
        response = await client.post(f"/tg/webhook/{CHANNEL}", headers=HEADERS,
                                     json=message_update(update_id, chat_id=update_id))
        traffic.answers.append((update_id, response.status_code, time.monotonic()))
        await asyncio.sleep(0.02)


async def test_updates_for_a_known_channel_are_taken_while_postgres_is_down(
        private_postgres: PrivatePostgres, outage_db: str, redis_url: str, redis: Any) -> None:
    settings = WebhookSettings(database_url=outage_db, redis_url=redis_url, channel_check_seconds=0.5,
                               channel_cache_seconds=0)
    traffic = Traffic()
    stop = asyncio.Event()
    async with serve_asgi(create_app(settings)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        before = await observe(client)
        assert before.ready_status == 200 and before.ready["degraded"] is False and before.database_up == 1
        sender = asyncio.create_task(send_updates(client, traffic, stop))
        await async_wait_for(lambda: len(traffic.answers) >= 20, what="20 updates before the outage")

        await asyncio.to_thread(private_postgres.stop)
        outage_started = time.monotonic()
        during: Observation = await async_wait_for(
            lambda: _outage_seen(client), timeout=15, what="readiness and metrics to show the outage")
        unknown = await client.post("/tg/webhook/tests.unknown", json=message_update(1), headers=HEADERS)
        while time.monotonic() - outage_started < OUTAGE_SECONDS:
            traffic.observations.append(await observe(client))
            await asyncio.sleep(1)
        outage_ended = time.monotonic()
        await asyncio.to_thread(private_postgres.start)

        after: Observation = await async_wait_for(lambda: _recovered(client), timeout=30,
                                     what="readiness and metrics to recover")
        sent_after = len(traffic.answers)
        await async_wait_for(lambda: len(traffic.answers) >= sent_after + 20,
                             what="20 updates after recovery")
        stop.set()
        await sender

    statuses = {status for _, status, _ in traffic.answers}
    during_outage = [u for u, _, at in traffic.answers if outage_started <= at <= outage_ended]
    assert statuses == {200}, [a for a in traffic.answers if a[1] != 200][:10]
    assert len(during_outage) >= 100, len(during_outage)
    stored = sorted(e.update_id for e in await all_entries(redis))
    assert stored == [u for u, _, _ in traffic.answers]  # every update posted is in the stream, once

    assert unknown.status_code == 503  # not in the copy, Postgres down: Telegram retries it later
    assert during.ready_status == 200 and during.ready["ready"] is True and during.ready["degraded"] is True
    assert during.ready["checks"]["postgres"] != "ok"
    assert during.ready["checks"]["channels"].startswith("stale")
    assert during.ready["checks"]["api_keys"].startswith("stale")  # the API keys are served from the copy
    assert during.database_up == 0
    assert all(o.ready_status == 200 and o.database_up == 0 for o in traffic.observations)
    stale = [o.stale_seconds for o in traffic.observations]
    assert stale == sorted(stale) and stale[-1] > stale[0] > 0  # the copy's age grew through the outage
    assert after.ready["checks"] == {"redis": "ok", "postgres": "ok", "channels": "ok", "api_keys": "ok"}
    assert after.database_up == 1 and after.stale_seconds == 0


async def _outage_seen(client: httpx.AsyncClient) -> Observation | None:
    seen = await observe(client)
    return seen if seen.database_up == 0 and seen.ready["checks"]["postgres"] != "ok" else None


async def _recovered(client: httpx.AsyncClient) -> Observation | None:
    seen = await observe(client)
    return seen if seen.database_up == 1 and seen.ready["degraded"] is False else None


async def test_a_channel_added_changed_or_deleted_in_postgres_is_followed_without_restart(
        database_url: str, db: Any, redis_url: str, redis: Any) -> None:
    # Absences remembered for 5 minutes and no full reload within the test: only NOTIFY can tell.
    settings = WebhookSettings(database_url=database_url, redis_url=redis_url, channel_cache_seconds=300,
                               channel_reload_seconds=3600)
    await insert_channel(db)
    accepted: list[tuple[str, int]] = []
    update_ids = itertools.count(1)
    async with serve_asgi(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as client:
        async def answer(key: str, secret: str = SECRET) -> int:
            update_id = next(update_ids)
            response = await client.post(f"/tg/webhook/{key}", json=message_update(update_id),
                                         headers={"X-Telegram-Bot-Api-Secret-Token": secret})
            if response.status_code == 200:
                accepted.append((key, update_id))
            return response.status_code

        assert await answer("tests.new") == 404  # its absence is now remembered
        await insert_channel(db, "tests.new")
        await wait_until(lambda: _is(answer("tests.new"), 200), what="the added channel to be served")

        new_secret = "rotated-Secret_2"
        await db.execute("UPDATE channels SET webhook_secret_sha256 = $1 WHERE name = 'bot'",
                         hashlib.sha256(new_secret.encode()).hexdigest())
        await wait_until(lambda: _is(answer(CHANNEL), 401), what="the old secret to be refused")
        assert await answer(CHANNEL, new_secret) == 200
        rotated = accepted[-1]

        await db.execute("UPDATE channels SET deleted_at = now() WHERE name = 'new'")
        await wait_until(lambda: _is(answer("tests.new"), 404), what="the deleted channel to be gone")

    stored = [(e.channel, e.update_id) for key in (CHANNEL, "tests.new")
              for e in await all_entries(redis, key)]
    assert sorted(stored) == sorted(accepted)
    assert rotated in stored  # the update sent with the rotated secret


async def _is(status: Awaitable[int], expected: int) -> bool:
    return await status == expected


async def wait_until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    done: bool = await async_wait_for(check, what=what)
    assert done
