"""While Postgres is down the notification API keeps accepting into its Redis inbox, and drains it into
Postgres once it is back (docs/notifications.md, "Postgres is down: the inbox").

Each test runs its own Postgres (clarion_dev.testing.servers) so that it can stop it; the kill test also
its own Redis (to freeze it) and the webhook as `clarion-webhook` processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from clarion.db import api_keys as keys
from clarion.db import apply_migrations, create_pool
from clarion.models import ApiKeySecret
from clarion.streams import NotificationTask, notify_stream
from clarion_dev.net import free_port
from clarion_dev.testing.servers import PrivatePostgres, PrivateRedis
from clarion_dev.testing.waiting import async_wait_for
from clarion_webhook.app import create_app
from clarion_webhook.inbox import INBOX_ENTRIES, INBOX_IDEMPOTENCY, INBOX_STREAM
from clarion_webhook.settings import WebhookSettings

from tests.integration.test_webhook_ingress import metric_value

pytestmark = pytest.mark.integration

KEY = "k" * 40
BEARER = {"Authorization": f"Bearer {KEY}"}
OUTAGE_SECONDS = 61
WEBHOOK = str(Path(sys.executable).with_name("clarion-webhook"))
STREAM = notify_stream("shop.alerts", "instant")


def _request(i: int, text: str = "Your order shipped") -> dict[str, Any]:
    return {"channel": "shop/alerts", "recipient": {"chatId": 100_000 + i},
            "content": {"text": f"{text} #{i}"}}


def _keyed(key: str) -> dict[str, str]:
    return {**BEARER, "Idempotency-Key": key}


@pytest.fixture
async def outage_db(private_postgres: PrivatePostgres) -> str:
    """The private cluster's `postgres` database, migrated, with a channel shop/alerts and an API key."""
    conn = await asyncpg.connect(private_postgres.dsn())
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    pool = await create_pool(private_postgres.dsn(), min_size=1, max_size=1)
    try:
        await pool.execute(
            """INSERT INTO channels (namespace, name, type, bot_id, api_base_url, config, ready)
               VALUES ('shop', 'alerts', 'telegram', 1, 'http://127.0.0.1:1', '{}', true)""")
        await keys.sync_api_key(pool, ApiKeySecret(
            namespace="shop", name="backend", uid="uid-backend",
            key_sha256=hashlib.sha256(KEY.encode()).hexdigest(), channels=("alerts",)))
    finally:
        await pool.close()
    return private_postgres.dsn()


@contextlib.asynccontextmanager
async def _api(settings: WebhookSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The webhook app in this process (its lifespan runs the drainer), called through ASGI."""
    app = create_app(settings)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://clarion",
                                     timeout=30) as client:
            yield client
    finally:
        await lifespan.__aexit__(None, None, None)


def _settings(dsn: str, redis_url: str, **extra: Any) -> WebhookSettings:
    return WebhookSettings(database_url=dsn, redis_url=redis_url, channel_cache_seconds=0,
                           channel_check_seconds=0.5, **extra)


async def _inbox_empty(redis: aioredis.Redis) -> bool:
    return await redis.xlen(INBOX_STREAM) == 0 and await redis.hlen(INBOX_ENTRIES) == 0


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    done: bool = await async_wait_for(check, timeout=60, what=what)
    assert done


async def _stream_ids(redis: aioredis.Redis) -> Counter[str]:
    entries: Any = await redis.xrange(STREAM)
    return Counter(NotificationTask.from_fields(fields).notification_id for _, fields in entries)


async def _metrics(api: httpx.AsyncClient) -> str:
    return (await api.get("/metrics")).text


INBOXED = 'clarion_api_notifications_total{channel="shop.alerts",lane="instant",result="inboxed"}'
STORED = 'clarion_api_inbox_drained_total{result="stored"}'
DUPLICATE = 'clarion_api_inbox_drained_total{result="duplicate"}'


async def test_a_minute_of_postgres_outage_is_accepted_into_the_inbox_and_drained_exactly_once(
        private_postgres: PrivatePostgres, outage_db: str, redis_url: str, redis: aioredis.Redis) -> None:
    async with _api(_settings(outage_db, redis_url)) as api:
        metrics_before = await _metrics(api)
        before = await api.post("/api/v1/notifications", json=_request(0), headers=_keyed("before"))
        assert before.status_code == 202 and before.json()["status"] == "queued"

        await asyncio.to_thread(private_postgres.stop)
        answers: list[tuple[int, httpx.Response]] = []
        outage_started = time.monotonic()
        while time.monotonic() - outage_started < OUTAGE_SECONDS:  # about 3 a second, for a minute
            i = len(answers) + 1
            answers.append((i, await api.post("/api/v1/notifications", json=_request(i),
                                              headers=_keyed(f"k-{i}"))))
            await asyncio.sleep(0.3)

        first = answers[0][1]
        seen = await api.get(first.headers["location"], headers=BEARER)
        replay = await api.post("/api/v1/notifications", json=_request(1), headers=_keyed("k-1"))
        reused = await api.post("/api/v1/notifications", json=_request(1, "other"), headers=_keyed("k-1"))
        # A key first used before the outage lives in Postgres only: this replay is accepted anew...
        before_again = await api.post("/api/v1/notifications", json=_request(0), headers=_keyed("before"))
        ready = await api.get("/readyz")
        inboxed = await redis.xlen(INBOX_STREAM)

        await asyncio.to_thread(private_postgres.start)
        await _until(lambda: _inbox_empty(redis), what="the inbox to be drained")

        replay_after = await api.post("/api/v1/notifications", json=_request(1), headers=_keyed("k-1"))
        reused_after = await api.post("/api/v1/notifications", json=_request(1, "other"),
                                      headers=_keyed("k-1"))
        seen_after = await api.get(first.headers["location"], headers=BEARER)
        gone = await api.get(before_again.headers["location"], headers=BEARER)
        metrics_after = await _metrics(api)

    assert [i for i, answer in answers if answer.status_code != 202] == []
    assert len(answers) >= 2 * OUTAGE_SECONDS
    assert {answer.json()["status"] for _, answer in answers} == {"created"}
    assert all(answer.headers["location"] == f"/api/v1/notifications/{answer.json()['id']}"
               for _, answer in answers)
    assert inboxed == len(answers) + 1
    assert seen.status_code == 200 and seen.json() == first.json()
    assert replay.status_code == 202 and replay.headers["idempotent-replay"] == "true"
    assert replay.json() == first.json() and replay.headers["location"] == first.headers["location"]
    assert reused.status_code == 422 and reused.json()["error"]["code"] == "idempotency_key_reused"
    assert before_again.status_code == 202 and before_again.json()["id"] != before.json()["id"]
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert ready.json()["inbox"]["circuit"] == "open"

    conn = await create_pool(outage_db, min_size=1, max_size=1)
    try:
        rows = {str(r["id"]): r for r in await conn.fetch("SELECT id, status, created_at FROM notifications")}
        records = {r["key"]: r["response"]["id"] for r in await conn.fetch(
            "SELECT key, response FROM idempotency_keys")}
    finally:
        await conn.close()
    accepted = {answer.json()["id"]: answer.json() for _, answer in answers}
    # every accepted notification is stored once; the replay of the pre-outage key is not (the first stands)
    assert set(rows) == {*accepted, before.json()["id"]}
    assert all(rows[i]["status"] == "queued" for i in accepted)
    # stored as accepted then, not at the drain
    assert all(rows[i]["created_at"] == datetime.fromisoformat(view["createdAt"])
               for i, view in accepted.items())
    assert await _stream_ids(redis) == Counter({*accepted, before.json()["id"]})
    assert records == {"before": before.json()["id"],
                       **{f"k-{i}": answer.json()["id"] for i, answer in answers}}
    assert replay_after.status_code == 202 and replay_after.headers["idempotent-replay"] == "true"
    assert replay_after.json() == first.json()  # the first answer, as the client got it
    assert reused_after.status_code == 422
    assert seen_after.status_code == 200 and seen_after.json()["status"] == "queued"
    assert seen_after.json()["createdAt"] == first.json()["createdAt"]
    assert gone.status_code == 404
    assert metric_value(metrics_after, INBOXED) - metric_value(metrics_before, INBOXED) == len(answers) + 1
    assert metric_value(metrics_after, STORED) - metric_value(metrics_before, STORED) == len(answers)
    assert metric_value(metrics_after, DUPLICATE) - metric_value(metrics_before, DUPLICATE) == 1


@pytest.mark.private_redis(appendonly=True)
async def test_with_postgres_and_redis_both_down_a_post_gets_503_and_nothing_is_stored(
        private_postgres: PrivatePostgres, outage_db: str, private_redis: PrivateRedis) -> None:
    settings = _settings(outage_db, private_redis.url(), redis_timeout_seconds=1)
    async with _api(settings) as api:
        stored = await api.post("/api/v1/notifications", json=_request(0), headers=BEARER)
        await asyncio.to_thread(private_postgres.stop)
        await asyncio.to_thread(private_redis.stop)
        plain = await api.post("/api/v1/notifications", json=_request(1), headers=BEARER)
        keyed = await api.post("/api/v1/notifications", json=_request(2), headers=_keyed("both-down"))
        status = await api.get(stored.headers["location"], headers=BEARER)
        await asyncio.to_thread(private_redis.start)
        await asyncio.to_thread(private_postgres.start)
        redis = aioredis.Redis.from_url(private_redis.url())
        try:
            inbox = (await redis.xlen(INBOX_STREAM), await redis.hlen(INBOX_ENTRIES),
                     await redis.hlen(INBOX_IDEMPOTENCY))
        finally:
            await redis.aclose()

    assert stored.status_code == 202
    for refused in (plain, keyed, status):
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "unavailable" and refused.headers["retry-after"] == "1"
    assert inbox == (0, 0, 0)
    conn = await asyncpg.connect(outage_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM notifications") == 1
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    finally:
        await conn.close()


async def test_a_full_inbox_answers_503_with_retry_after_and_keeps_what_it_took(
        private_postgres: PrivatePostgres, outage_db: str, redis_url: str, redis: aioredis.Redis) -> None:
    async with _api(_settings(outage_db, redis_url, inbox_max_entries=3)) as api:
        await asyncio.to_thread(private_postgres.stop)
        answers = [await api.post("/api/v1/notifications", json=_request(i), headers=BEARER)
                   for i in range(4)]
        await asyncio.to_thread(private_postgres.start)
        await _until(lambda: _inbox_empty(redis), what="the inbox to be drained")
        conn = await asyncpg.connect(outage_db)
        try:
            stored = {str(i) for i in await conn.fetchval("SELECT array_agg(id) FROM notifications")}
        finally:
            await conn.close()

    assert [a.status_code for a in answers] == [202, 202, 202, 503]
    assert answers[3].json()["error"]["code"] == "inbox_full" and answers[3].headers["retry-after"] == "30"
    assert stored == {a.json()["id"] for a in answers[:3]}


# -- a webhook process killed mid-drain ---------------------------------------------------------------


#: Holds an insert into notifications while `drain_gate.closed`: a transaction stopped at a known point
#: that survives the restart of Postgres (a lock taken after it would race the drainer).
GATE = """
CREATE TABLE drain_gate (closed boolean NOT NULL);
INSERT INTO drain_gate VALUES (true);
CREATE FUNCTION wait_at_gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WHILE (SELECT closed FROM drain_gate) LOOP PERFORM pg_sleep(0.05); END LOOP;
    RETURN NEW;
END $$;
CREATE TRIGGER wait_at_gate BEFORE INSERT ON notifications FOR EACH ROW EXECUTE FUNCTION wait_at_gate();
"""


def _start_webhook(port: int, dsn: str, redis_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CLARION_DATABASE_URL": dsn, "CLARION_REDIS_URL": redis_url,
           "CLARION_CHANNEL_CACHE_SECONDS": "0", "CLARION_CHANNEL_CHECK_SECONDS": "0.5",
           "CLARION_INBOX_CLAIM_IDLE_SECONDS": "1", "CLARION_INBOX_DRAIN_BATCH": "20",
           "CLARION_LOG_FORMAT": "json"}
    with log.open("ab") as out:
        return subprocess.Popen([WEBHOOK, "--host", "127.0.0.1", "--port", str(port)], stdout=out,
                                stderr=out, env=env)


async def _ready(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/readyz")).status_code == 200
    except httpx.TransportError:
        return False


async def test_a_webhook_killed_mid_drain_loses_nothing_and_stores_nothing_twice(
        private_postgres: PrivatePostgres, outage_db: str, private_redis: PrivateRedis,
        tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "webhook.log"
    redis = aioredis.Redis.from_url(private_redis.url())
    redis_pid = int((await redis.info("server"))["process_id"])
    first = _start_webhook(port, outage_db, private_redis.url(), log)
    second: subprocess.Popen[bytes] | None = None
    gate = await asyncpg.connect(outage_db)
    await gate.execute(GATE)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            await _until(lambda: _ready(client), what="the webhook to be ready")
            await gate.close()
            await asyncio.to_thread(private_postgres.stop)
            answers: list[httpx.Response] = []
            for start in range(0, 200, 20):
                answers += await asyncio.gather(*(
                    client.post("/api/v1/notifications", json=_request(i),
                                headers=_keyed(f"k-{i}") if i % 2 == 0 else BEARER)
                    for i in range(start, start + 20)))
            assert [a.status_code for a in answers] == [202] * 200, [a.text for a in answers[:3]]

            # Postgres back, but the drainer's first insert waits at the closed gate...
            await asyncio.to_thread(private_postgres.start)
            gate = await asyncpg.connect(outage_db)
            await async_wait_for(lambda: gate.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"), timeout=30,
                what="the drainer to wait at the gate")
            # ...then Redis freezes, the gate opens: the batch commits and its removal from the inbox hangs
            os.kill(redis_pid, signal.SIGSTOP)
            try:
                await gate.execute("UPDATE drain_gate SET closed = false")
                committed = await async_wait_for(
                    lambda: gate.fetchval("SELECT count(*) FROM notifications"), timeout=30,
                    what="the first batch to commit")
                first.kill()
                first.wait()
            finally:
                os.kill(redis_pid, signal.SIGCONT)
            left_in_inbox = await redis.xlen(INBOX_STREAM)
            await gate.close()

        second = _start_webhook(port, outage_db, private_redis.url(), log)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            await _until(lambda: _ready(client), what="the second webhook to be ready")
            await _until(lambda: _inbox_empty(redis), what="the inbox to be drained")
            replays = [await client.post("/api/v1/notifications", json=_request(i), headers=_keyed(f"k-{i}"))
                       for i in (0, 198)]
        conn = await create_pool(outage_db, min_size=1, max_size=1)
        try:
            rows = [str(r["id"]) for r in await conn.fetch("SELECT id FROM notifications")]
            records = {r["key"]: r["response"]["id"] for r in await conn.fetch(
                "SELECT key, response FROM idempotency_keys")}
        finally:
            await conn.close()
        on_stream = await _stream_ids(redis)
    except BaseException:
        print(log.read_text()[-5000:])
        raise
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
        await redis.aclose()

    accepted = [a.json()["id"] for a in answers]
    # killed mid-drain: part of the inbox stored, and some of that not yet removed from the inbox
    assert 0 < committed < 200 and committed - (200 - left_in_inbox) > 0, (committed, left_in_inbox)
    assert sorted(rows) == sorted(accepted)  # each stored exactly once
    assert records == {f"k-{i}": accepted[i] for i in range(0, 200, 2)}
    assert set(on_stream) == set(accepted)
    assert sum(on_stream.values()) - len(on_stream) <= committed  # repeats: at most the batch in flight
    assert [(r.status_code, r.headers.get("idempotent-replay"), r.json()["id"]) for r in replays] == [
        (202, "true", accepted[0]), (202, "true", accepted[198])]
