"""The public notification API on real Postgres and Redis: what a backend developer gets back, what is
stored, and (with a `clarion-worker` process and the emulator) what the recipient receives."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from clarion.db import api_keys as keys
from clarion.models import ApiKeySecret
from clarion.streams import NotificationTask, notify_stream
from clarion_dev.telegram import Emulator
from clarion_dev.testing.waiting import async_wait_for
from clarion_webhook.app import create_app
from clarion_webhook.settings import WebhookSettings

pytestmark = [pytest.mark.integration, pytest.mark.emulator(limits="scaled", scale=10)]

KEY = "k" * 40
LIMITED_KEY = "l" * 40
OTHER_KEY = "o" * 40
WORKER = str(Path(sys.executable).with_name("clarion-worker"))


def _bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _request(chat_id: int = 100_000, text: str = "Your order shipped", **extra: Any) -> dict[str, Any]:
    return {"channel": "shop/alerts", "recipient": {"chatId": chat_id}, "content": {"text": text}, **extra}


@pytest.fixture
async def api(db: asyncpg.Pool, database_url: str, redis_url: str,
              telegram_emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    bot = telegram_emulator.add_bot()
    telegram_emulator.add_users(50, 100_000)
    await db.execute(
        """INSERT INTO channels (namespace, name, type, bot_id, api_base_url, config, ready)
           VALUES ('shop', 'alerts', 'telegram', $1, $2, '{}', true),
                  ('shop', 'mail', 'email', NULL, NULL, $3, true),
                  ('other', 'alerts', 'telegram', $1, $2, '{}', true)""",
        bot.id, telegram_emulator.base_url, {"host": "127.0.0.1", "port": 2525, "from": "shop@example.org"})
    for name, key, channels, rate in (("backend", KEY, ("alerts", "mail"), None),
                                      ("limited", LIMITED_KEY, ("alerts",), 60),
                                      ("other", OTHER_KEY, ("*",), None)):
        await keys.sync_api_key(db, ApiKeySecret(
            namespace="other" if name == "other" else "shop", name=name, uid=f"uid-{name}",
            key_sha256=hashlib.sha256(key.encode()).hexdigest(), channels=channels, rate_per_minute=rate))
    app = create_app(WebhookSettings(database_url=database_url, redis_url=redis_url,
                                     channel_cache_seconds=0))
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://clarion")
    client.headers["x-test-bot-token"] = bot.token  # carried for the worker test, ignored by the API
    try:
        yield client
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


async def _stored(db: asyncpg.Pool) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM notifications")
    return count


async def test_an_accepted_notification_is_stored_queued_and_reachable_at_its_location(
    api: httpx.AsyncClient, db: asyncpg.Pool, redis: aioredis.Redis,
) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    answer = await api.post("/api/v1/notifications", json=_request(reference="order-1"),
                            headers={**_bearer(), "traceparent": f"00-{trace}-00f067aa0ba902b7-01"})

    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert answer.headers["location"] == f"/api/v1/notifications/{body['id']}"
    assert (body["status"], body["channel"], body["lane"], body["traceId"]) == (
        "queued", "shop/alerts", "instant", trace)
    entries: Any = await redis.xrange(notify_stream("shop.alerts", "instant"))
    assert [NotificationTask.from_fields(f).notification_id for _, f in entries] == [body["id"]]
    status = await api.get(answer.headers["location"], headers=_bearer())
    assert status.status_code == 200 and status.json()["status"] == "queued"
    assert status.json()["reference"] == "order-1" and status.json()["attempts"] == 0


async def test_keys_are_checked_401_unknown_403_foreign_channel_429_over_the_limit(
    api: httpx.AsyncClient, db: asyncpg.Pool,
) -> None:
    assert (await api.post("/api/v1/notifications", json=_request())).status_code == 401
    unknown = await api.post("/api/v1/notifications", json=_request(), headers=_bearer("x" * 40))
    assert unknown.status_code == 401 and unknown.headers["www-authenticate"].startswith("Bearer")
    foreign = await api.post("/api/v1/notifications", json=_request(), headers=_bearer(OTHER_KEY))
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "forbidden_channel"
    unlisted = await api.post("/api/v1/notifications", headers=_bearer(LIMITED_KEY), json={
        "channel": "shop/mail", "recipient": {"email": "a@example.org"},
        "content": {"subject": "Hi", "text": "Hello"}})
    assert unlisted.status_code == 403
    answers = [await api.post("/api/v1/notifications", json=_request(), headers=_bearer(LIMITED_KEY))
               for _ in range(15)]
    codes = Counter(a.status_code for a in answers)
    # 60/min with a burst of 10 s of it; the refused request to an unlisted channel counted too
    assert codes[202] == 9 and codes[429] == 6
    refused = next(a for a in answers if a.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert await _stored(db) == 9


@pytest.mark.parametrize(("body", "field"), [
    ({"channel": "shop/alerts", "recipient": {"email": "a@example.org"}, "content": {"text": "x"}},
     "recipient"),
    ({"channel": "shop/mail", "recipient": {"email": "a@example.org"}, "content": {"text": "x"}},
     "content.subject"),
    ({"channel": "shop/alerts", "recipient": {"chatId": 1, "email": "a@example.org"},
      "content": {"text": "x"}}, "recipient"),
    ({"channel": "shop/alerts", "recipient": {"chatId": 1}, "content": {"text": ""}}, "content.text"),
    ({"channel": "shop/alerts", "recipient": {"chatId": 1}, "content": {"text": "x" * 4097}}, "content.text"),
    ({"channel": "other/nope", "recipient": {"chatId": 1}, "content": {"text": "x"}}, "channel"),
    ({"channel": "shop/alerts", "recipient": {"chatId": 1}, "content": {"text": "x"}, "lane": "fast"},
     "lane"),
    ({"channel": "shop/alerts", "recipient": {"chatId": 1}, "content": {"text": "x"},
      "scheduledFor": "2026-12-05T09:00:00"}, None),
])
async def test_bad_input_is_a_422_naming_the_field_and_stores_nothing(
    api: httpx.AsyncClient, db: asyncpg.Pool, body: dict[str, Any], field: str | None,
) -> None:
    key = OTHER_KEY if body["channel"].startswith("other/") else KEY
    answer = await api.post("/api/v1/notifications", json=body, headers=_bearer(key))

    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    if field is not None:
        assert error["field"] == field, error
    assert error["message"]
    assert await _stored(db) == 0


async def test_oversized_and_non_json_bodies_are_refused_and_nothing_is_stored(
    api: httpx.AsyncClient, db: asyncpg.Pool,
) -> None:
    huge = await api.post("/api/v1/notifications", headers={**_bearer(), "content-type": "application/json"},
                          content=b'{"channel": "' + b"x" * 300_000 + b'"}')
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "too_large"
    form = await api.post("/api/v1/notifications", headers=_bearer(), data={"channel": "shop/alerts"})
    assert form.status_code == 415
    broken = await api.post("/api/v1/notifications", content=b'{"channel": ',
                            headers={**_bearer(), "content-type": "application/json"})
    assert broken.status_code == 422
    assert await _stored(db) == 0


async def test_an_idempotency_key_replays_the_first_answer_and_refuses_another_body(
    api: httpx.AsyncClient, db: asyncpg.Pool,
) -> None:
    headers = {**_bearer(), "Idempotency-Key": "order-77-shipped"}
    first = await api.post("/api/v1/notifications", json=_request(), headers=headers)
    again = await api.post("/api/v1/notifications", json=_request(), headers=headers)
    other = await api.post("/api/v1/notifications", json=_request(text="something else"), headers=headers)

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and again.headers["idempotent-replay"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert "idempotent-replay" not in first.headers
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert await _stored(db) == 1


async def test_a_thousand_concurrent_posts_with_one_key_create_one_notification(
    api: httpx.AsyncClient, db: asyncpg.Pool,
) -> None:
    headers = {**_bearer(), "Idempotency-Key": "storm"}
    answers = await asyncio.gather(*(api.post("/api/v1/notifications", json=_request(), headers=headers)
                                     for _ in range(1000)))

    codes = Counter(a.status_code for a in answers)
    assert set(codes) <= {202, 409} and codes[202] >= 1
    assert len({a.json()["id"] for a in answers if a.status_code == 202}) == 1
    assert all(a.headers["retry-after"] == "1" for a in answers if a.status_code == 409)
    assert await _stored(db) == 1


async def test_notifications_are_listed_by_reference_newest_first_in_pages(api: httpx.AsyncClient) -> None:
    ids = []
    for i in range(5):
        answer = await api.post("/api/v1/notifications", json=_request(100_000 + i, reference="batch-9"),
                                headers=_bearer())
        ids.append(answer.json()["id"])
    await api.post("/api/v1/notifications", json=_request(reference="other"), headers=_bearer())

    first = (await api.get("/api/v1/notifications", params={"reference": "batch-9", "limit": 3},
                           headers=_bearer())).json()
    second = (await api.get("/api/v1/notifications", params={"reference": "batch-9", "limit": 3,
                                                             "cursor": first["nextCursor"]},
                            headers=_bearer())).json()

    assert [n["id"] for n in first["items"] + second["items"]] == list(reversed(ids))
    assert second["nextCursor"] is None
    foreign = await api.get("/api/v1/notifications", params={"reference": "batch-9"},
                            headers=_bearer(OTHER_KEY))
    assert foreign.json()["items"] == []
    hidden = await api.get(f"/api/v1/notifications/{ids[0]}", headers=_bearer(OTHER_KEY))
    assert hidden.status_code == 404


async def test_the_openapi_document_and_docs_are_served(api: httpx.AsyncClient) -> None:
    document = await api.get("/api/v1/openapi.json")
    docs = await api.get("/api/v1/docs")

    assert document.status_code == 200 and document.json()["openapi"].startswith("3.1")
    paths = document.json()["paths"]
    assert {"/notifications", "/notifications/{notification_id}"} <= set(paths)
    assert docs.status_code == 200 and "openapi.json" in docs.text


async def test_a_notification_posted_to_the_api_reaches_telegram_and_its_status_says_sent(
    api: httpx.AsyncClient, db: asyncpg.Pool, database_url: str, redis_url: str, telegram_emulator: Emulator,
    tmp_path: Path,
) -> None:
    token = api.headers["x-test-bot-token"]
    answers = [await api.post("/api/v1/notifications", json=_request(100_000 + i, f"Hello {i}"),
                              headers=_bearer()) for i in range(10)]
    log = (tmp_path / "worker.log").open("ab")
    worker = await asyncio.create_subprocess_exec(
        WORKER, "--channel", "shop.alerts", stdout=log, stderr=log,
        env={**os.environ, "CLARION_DATABASE_URL": database_url, "CLARION_REDIS_URL": redis_url,
             "CLARION_BOT_TOKEN": token, "CLARION_LOG_FORMAT": "json"})
    try:
        async def all_sent() -> list[Any] | None:
            found = [(await api.get(a.headers["location"], headers=_bearer())).json() for a in answers]
            return found if all(n["status"] == "sent" for n in found) else None

        try:
            views: list[Any] = await async_wait_for(all_sent, timeout=60, interval=0.3, what="10 sent")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{(tmp_path / 'worker.log').read_text()[-3000:]}") from None
    finally:
        worker.send_signal(signal.SIGTERM)
        await worker.wait()

    received = {m.chat_id: m for m in telegram_emulator.sent(token)}
    assert sorted(received) == list(range(100_000, 100_010))
    assert received[100_003].text == "Hello 3"
    assert all(v["providerMessageId"] == str(received[100_000 + i].message_id) for i, v in enumerate(views))
    trace = answers[0].json()["traceId"]
    assert trace in (tmp_path / "worker.log").read_text()  # the API's trace id reaches the worker's log


async def test_a_failed_notification_is_retried_through_the_api_once_and_audited(
    api: httpx.AsyncClient, db: asyncpg.Pool, redis: aioredis.Redis,
) -> None:
    created = (await api.post("/api/v1/notifications", json=_request(), headers=_bearer())).json()
    await db.execute(
        "UPDATE notifications SET status = 'failed', attempts = 3, last_error = '502' WHERE id = $1",
        uuid.UUID(created["id"]))
    url = f"/api/v1/notifications/{created['id']}/retry"

    retried = await api.post(url, headers=_bearer())
    again = await api.post(url, headers=_bearer())
    foreign = await api.post(url, headers=_bearer(OTHER_KEY))

    assert retried.status_code == 202, retried.text
    assert retried.json()["status"] == "queued" and retried.headers["location"].endswith(created["id"])
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_failed"
    assert foreign.status_code == 404
    row = await db.fetchrow("SELECT max_attempts, attempts FROM notifications WHERE id = $1",
                            uuid.UUID(created["id"]))
    assert (row["attempts"], row["max_attempts"]) == (3, 6)
    entries: Any = await redis.xrange(notify_stream("shop.alerts", "instant"))
    assert [NotificationTask.from_fields(f).notification_id for _, f in entries] == [created["id"]] * 2
    audit = await db.fetchrow("SELECT actor, action FROM audit_log WHERE subject = $1", created["id"])
    assert dict(audit) == {"actor": "api-key:1", "action": "notification.retried"}
