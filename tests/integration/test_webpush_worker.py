"""A webpush channel's `clarion-worker` end to end: real worker processes, Postgres, Redis and the
push-service stand-in (`clarion_dev.push_service`), which checks each request's VAPID token and
decrypts its payload as a browser would. What the stand-in received and the rows are what is asserted.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from clarion import webpush
from clarion.db import notifications as q
from clarion.db import push_subscriptions as subs
from clarion.streams import NotificationTask, dead_letter_stream, notify_stream
from clarion_dev.push_service import Browser, PushService
from clarion_dev.testing.processes import stop_processes
from clarion_dev.testing.waiting import async_wait_for
from cryptography.hazmat.primitives.asymmetric import ec

WORKER = str(Path(sys.executable).with_name("clarion-worker"))
CHANNEL = "shop.push"
SUBJECT = "mailto:ops@shop.example"
pytestmark = pytest.mark.integration


@dataclass
class World:
    db: asyncpg.Pool
    redis: aioredis.Redis
    push: PushService
    channel_id: int
    private_key: str
    public_key: str

    async def subscribe(self, recipient: str = "client-1") -> tuple[Browser, uuid.UUID]:
        browser = self.push.subscribe()
        keys = browser.to_json()["keys"]
        async with self.db.acquire() as conn:
            row, created = await subs.register(conn, channel_id=self.channel_id, recipient=recipient,
                                               endpoint=browser.endpoint, p256dh=keys["p256dh"],
                                               auth=keys["auth"], expires_at=None)
        assert created
        return browser, row.id

    async def notify(self, subscription: uuid.UUID, content: dict[str, Any]) -> uuid.UUID:
        new = q.NewNotification(id=uuid.uuid4(), channel_id=self.channel_id, lane="instant",
                                recipient=str(subscription), content=content, reference="test",
                                api_key_id=None, trace_id=os.urandom(16).hex(), scheduled_for=None,
                                max_attempts=3)
        async with self.db.acquire() as conn:
            row, _ = await q.accept(conn, new)
        assert row is not None
        task = NotificationTask(notification_id=str(row.id), trace_id=row.trace_id)
        await self.redis.xadd(notify_stream(CHANNEL, "instant"), task.to_fields())  # type: ignore[arg-type]
        return row.id

    async def settled(self, notification: uuid.UUID, workers: Workers) -> asyncpg.Record:
        async def final() -> asyncpg.Record | None:
            row = await self.db.fetchrow("SELECT * FROM notifications WHERE id = $1", notification)
            return row if row is not None and row["status"] in q.FINAL else None

        try:
            found: asyncpg.Record = await async_wait_for(final, timeout=60, interval=0.2,
                                                         what=f"notification {notification} settled")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{workers.log()}") from None
        return found


@pytest.fixture
async def world(db: asyncpg.Pool, redis: aioredis.Redis, push_service: PushService) -> World:
    private = ec.generate_private_key(ec.SECP256R1())
    private_key = webpush.b64url_encode(private.private_numbers().private_value.to_bytes(32, "big"))
    public_key = webpush.vapid_key(private_key).public_key
    channel_id = await db.fetchval(
        """INSERT INTO channels (namespace, name, type, config, ready)
           VALUES ('shop', 'push', 'webpush', $1, true) RETURNING id""",
        {"subject": SUBJECT, "ttlSeconds": 3600, "urgency": "normal", "vapidPublicKey": public_key})
    return World(db, redis, push_service, channel_id, private_key, public_key)


class Workers:
    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        self.env, self.tmp_path = env, tmp_path
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        log = (self.tmp_path / "worker.log").open("ab")
        self.procs.append(await asyncio.create_subprocess_exec(WORKER, env=self.env, stdout=log, stderr=log))

    def log(self) -> str:
        return (self.tmp_path / "worker.log").read_text(errors="replace")[-3000:]


@pytest.fixture
async def workers(database_url: str, redis_url: str, world: World, tmp_path: Path) -> AsyncIterator[Workers]:
    env = {**os.environ, "CLARION_DATABASE_URL": database_url, "CLARION_REDIS_URL": redis_url,
           "CLARION_VAPID_PRIVATE_KEY": world.private_key, "CLARION_WORKER_CHANNEL": CHANNEL,
           "CLARION_POD_NAME": "w1", "CLARION_LOG_FORMAT": "json", "CLARION_RETRY_BACKOFF_SECONDS": "0.2",
           "CLARION_REPLAY_AFTER_SECONDS": "1"}
    found = Workers(env, tmp_path)
    await found.start()
    try:
        yield found
    finally:
        await stop_processes(found.procs)


async def test_a_push_reaches_the_browser_decrypted_with_its_title_body_and_headers(
    world: World, workers: Workers,
) -> None:
    browser, subscription = await world.subscribe()
    sent = await world.notify(subscription, {"title": "Booking confirmed", "body": "Tue 10:00, room 2",
                                             "url": "https://shop.example/b/7", "urgency": "high"})

    row = await world.settled(sent, workers)

    assert row["status"] == "sent"
    [message] = world.push.received(browser)
    assert message.json() == {"title": "Booking confirmed", "body": "Tue 10:00, room 2",
                              "url": "https://shop.example/b/7", "id": str(sent)}
    assert (message.ttl, message.urgency) == (3600, "high")
    assert (message.vapid_subject, message.vapid_key) == (SUBJECT, world.public_key)
    assert row["provider_message_id"].startswith(f"{world.push.origin}/message/")
    last_sent = await world.db.fetchval("SELECT last_sent_at FROM push_subscriptions WHERE id = $1",
                                        subscription)
    assert last_sent is not None


async def test_410_removes_the_subscription_and_blocks_the_notification(
    world: World, workers: Workers,
) -> None:
    gone, gone_id = await world.subscribe("client-1")
    _, kept_id = await world.subscribe("client-1")
    world.push.unsubscribe(gone)  # the stand-in answers 410 for endpoints it does not know

    blocked = await world.settled(await world.notify(gone_id, {"title": "t", "body": "b"}), workers)
    sent = await world.settled(await world.notify(kept_id, {"title": "t", "body": "b"}), workers)

    assert blocked["status"] == "blocked"
    assert "410" in blocked["last_error"] and "removed" in blocked["last_error"]
    assert sent["status"] == "sent"
    async with world.db.acquire() as conn:
        assert [s.id for s in await subs.for_recipient(conn, world.channel_id, "client-1")] == [kept_id]
    # a later notification to the removed subscription is blocked without asking the push service
    asked = world.push.attempts[gone.token]
    again = await world.settled(await world.notify(gone_id, {"title": "t", "body": "b"}), workers)
    assert again["status"] == "blocked" and "no longer exists" in again["last_error"]
    assert world.push.attempts[gone.token] == asked


async def test_404_removes_the_subscription_too(world: World, workers: Workers) -> None:
    browser, subscription = await world.subscribe()
    browser.answer(404)
    row = await world.settled(await world.notify(subscription, {"title": "t", "body": "b"}), workers)
    assert row["status"] == "blocked"
    assert await world.db.fetchval("SELECT count(*) FROM push_subscriptions") == 0


async def test_429_is_waited_out_for_retry_after_then_sent_without_spending_an_attempt(
    world: World, workers: Workers,
) -> None:
    browser, subscription = await world.subscribe()
    browser.answer(429, retry_after=1, times=2)

    row = await world.settled(await world.notify(subscription, {"title": "later", "body": "b"}), workers)

    assert row["status"] == "sent"
    assert [status for _, status, _ in world.push.refusals] == [429, 429]
    assert [m.json()["title"] for m in world.push.received(browser)] == ["later"]
    assert row["attempts"] == 1


async def test_5xx_is_retried_and_exhausted_attempts_are_dead_lettered(
    world: World, workers: Workers,
) -> None:
    flaky, flaky_id = await world.subscribe("a")
    flaky.answer(503, times=2)
    down, down_id = await world.subscribe("b")
    down.answer(500)

    recovered = await world.settled(await world.notify(flaky_id, {"title": "t", "body": "b"}), workers)
    doomed = await world.settled(await world.notify(down_id, {"title": "t", "body": "b"}), workers)

    assert (recovered["status"], recovered["attempts"]) == ("sent", 3)
    assert (doomed["status"], doomed["attempts"]) == ("failed", 3)
    assert "500" in doomed["last_error"]
    dead: Any = await world.redis.xrange(dead_letter_stream(notify_stream(CHANNEL, "instant")))
    assert [fields[b"reason"] for _, fields in dead] == [b"attempts_exhausted"]
    assert await world.db.fetchval("SELECT count(*) FROM push_subscriptions") == 2  # 5xx removes nothing


async def test_413_fails_at_once_saying_the_payload_is_too_large(world: World, workers: Workers) -> None:
    browser, subscription = await world.subscribe()
    row = await world.settled(await world.notify(subscription, {"title": "t", "body": "x" * 5000}), workers)
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert "413" in row["last_error"] and "too large" in row["last_error"]
    assert world.push.received(browser) == []


async def test_content_with_an_invalid_urgency_fails_at_once_without_a_request(
    world: World, workers: Workers,
) -> None:
    browser, subscription = await world.subscribe()
    row = await world.settled(await world.notify(subscription, {"title": "t", "body": "b",
                                                                "urgency": "urgent"}), workers)
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert "content.urgency must be one of very-low, low, normal, high" in row["last_error"]
    assert browser.token not in world.push.attempts


@pytest.mark.parametrize(("key", "says"), [
    (None, "CLARION_VAPID_PRIVATE_KEY is not set"),
    ("bm90IGEga2V5", "CLARION_VAPID_PRIVATE_KEY: must be a 32-byte P-256 private key, not 9 bytes"),
])
async def test_a_worker_without_a_usable_vapid_key_exits_1_saying_why(
    world: World, database_url: str, redis_url: str, tmp_path: Path, key: str | None, says: str,
) -> None:
    env = {**os.environ, "CLARION_DATABASE_URL": database_url, "CLARION_REDIS_URL": redis_url,
           "CLARION_WORKER_CHANNEL": CHANNEL, "CLARION_LOG_FORMAT": "json"}
    env.pop("CLARION_VAPID_PRIVATE_KEY", None)
    if key is not None:
        env["CLARION_VAPID_PRIVATE_KEY"] = key
    proc = await asyncio.create_subprocess_exec(WORKER, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 1
    assert says in out.decode()
    assert key is None or key not in out.decode().replace(says, "")
