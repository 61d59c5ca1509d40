# ruff: noqa: RUF001  (Russian text is Cyrillic on purpose)
"""Support requests and the Mini App's API on the real webhook app, Postgres and Redis: what a backend and an
admin get back, which notifications are stored and queued, and that a refusal stores and queues nothing."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from clarion.db import api_keys as keys
from clarion.db import support
from clarion.models import ApiKeySecret
from clarion.streams import NotificationTask, notify_stream
from clarion.telegram.webapp import sign_init_data, webapp_secret
from clarion_webhook.app import create_app
from clarion_webhook.settings import WebhookSettings
from clarion_webhook.support import create_miniapp

pytestmark = pytest.mark.integration

KEY = "k" * 40
TOKEN = "123456:desk-bot-token"
ADMIN, STRANGER, DM_USER = 501, 777, 9001
GROUP_CHAT = -100_500
APP_URL = "https://hooks.clarion.test/app/"
SUPPORT = {"miniApp": {"url": APP_URL, "shortName": "desk"}, "replyEmailChannel": "mail"}


def _bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def _telegram(support_chat: int | None = GROUP_CHAT, **settings: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"adminChatIds": [ADMIN], "defaultLanguage": "en", "support": SUPPORT,
                              **settings}
    if support_chat is not None:
        config["supportChatId"] = support_chat
    return config


@pytest.fixture
async def webhook(db: asyncpg.Pool, database_url: str, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    secret = webapp_secret(TOKEN)
    channels: list[tuple[str, str, bool, dict[str, Any]]] = [
        ("desk", "telegram", True, _telegram()),
        ("private", "telegram", True, _telegram(ADMIN)),
        ("bare", "telegram", True, _telegram(None)),
        ("noemail", "telegram", True, _telegram(support={})),
        ("downmail", "telegram", True, _telegram(support={"replyEmailChannel": "stale"})),
        ("mail", "email", True, {"host": "127.0.0.1", "port": 2525, "from": "desk@example.org"}),
        ("stale", "email", False, {"host": "127.0.0.1", "port": 2525, "from": "desk@example.org"}),
    ]
    for name, type_, ready, config in channels:
        telegram = type_ == "telegram"
        await db.execute(
            """INSERT INTO channels (namespace, name, type, bot_id, bot_username, config, ready,
                                     webapp_secret)
               VALUES ('shop', $1, $2, $3, $4, $5, $6, $7)""",
            name, type_, 123456 if telegram else None, "shop_desk_bot" if telegram else None, config, ready,
            secret if telegram else None)
    await keys.sync_api_key(db, ApiKeySecret(
        namespace="shop", name="site", uid="uid-site", key_sha256=hashlib.sha256(KEY.encode()).hexdigest(),
        channels=("*",), rate_per_minute=None))
    app = create_app(WebhookSettings(database_url=database_url, redis_url=redis_url, channel_cache_seconds=0))
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://clarion")
    try:
        yield client
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


def _request(**extra: Any) -> dict[str, Any]:
    return {"channel": "shop/desk", "email": "ada@example.org", "name": "Ada", "text": "My order is late",
            **extra}


def _init_data(user_id: int = ADMIN, *, token: str = TOKEN, age: float = 0, language: str = "en",
               **extra: str) -> str:
    fields = {"auth_date": str(int(time.time() - age)), "query_id": "AAHdF6IQAAAAAN0XohDhrOrc",
              "user": json.dumps({"id": user_id, "first_name": "Grace", "last_name": "Hopper",
                                  "language_code": language}, separators=(",", ":")), **extra}
    return urlencode({**fields, "hash": sign_init_data(fields, webapp_secret(token))})


def _tma(raw: str) -> dict[str, str]:
    return {"Authorization": f"tma {raw}"}


async def _stream(redis: aioredis.Redis, channel: str) -> list[str]:
    entries: Any = await redis.xrange(notify_stream(channel, "instant"))
    return [NotificationTask.from_fields(fields).notification_id for _, fields in entries]


async def _count(db: asyncpg.Pool, table: str) -> int:
    count: int = await db.fetchval(f"SELECT count(*) FROM {table}")
    return count


# --- POST /api/v1/requests ---------------------------------------------------------------------------

async def test_a_request_is_stored_with_its_admin_post_queued_to_the_group_with_a_startapp_link(
    webhook: httpx.AsyncClient, db: asyncpg.Pool, redis: aioredis.Redis,
) -> None:
    answer = await webhook.post("/api/v1/requests", json=_request(), headers=_bearer())

    assert answer.status_code == 202, answer.text
    thread_id = answer.json()["id"]
    assert answer.json() == {"id": thread_id, "status": "open"}
    thread = await support.get_request(db, thread_id)
    assert thread is not None
    assert (thread.origin, thread.requester_email, thread.user_name, thread.body, thread.admin_chat_id,
            thread.user_language, thread.status) == (
        "api", "ada@example.org", "Ada", "My order is late", GROUP_CHAT, "en", "open")
    post = await db.fetchrow("SELECT * FROM notifications WHERE id = $1", thread.post_notification_id)
    assert (post["recipient"], post["reference"], post["support_thread_id"], post["lane"],
            post["status"]) == (str(GROUP_CHAT), f"support-post:{thread_id}", thread_id, "instant", "queued")
    assert post["content"]["text"] == "Request from Ada <ada@example.org>:\n\nMy order is late"
    assert post["content"]["text"] == thread.post_text
    assert post["content"]["buttons"] == [[{
        "text": "Reply", "url": f"https://t.me/shop_desk_bot/desk?startapp=t{thread_id}"}]]
    assert await _stream(redis, "shop.desk") == [str(post["id"])]
    audit = await db.fetchrow("SELECT * FROM audit_log WHERE action = 'support.request_created'")
    assert audit["subject"] == str(thread_id) and audit["details"]["channel"] == "shop.desk"


async def test_a_private_support_chat_gets_a_web_app_button_naming_the_thread(
    webhook: httpx.AsyncClient, db: asyncpg.Pool,
) -> None:
    answer = await webhook.post("/api/v1/requests", json=_request(channel="shop/private", language="ru"),
                                headers=_bearer())

    assert answer.status_code == 202, answer.text
    thread_id = answer.json()["id"]
    content = await db.fetchval("SELECT content FROM notifications WHERE support_thread_id = $1", thread_id)
    assert content["buttons"] == [[{"text": "Reply", "webAppUrl": f"{APP_URL}?thread={thread_id}"}]]
    assert await db.fetchval("SELECT user_language FROM support_threads WHERE id = $1", thread_id) == "ru"


@pytest.mark.parametrize(("change", "field"), [
    ({"email": "not-an-address"}, "email"),
    ({"text": ""}, "text"),
    ({"text": "   \n"}, "text"),
    ({"text": "x" * 4001}, "text"),
    ({"language": "de"}, "language"),
    ({"channel": "shop/nope"}, "channel"),
    ({"channel": "shop/mail"}, "channel"),
    ({"channel": "shop/bare"}, "channel"),
    ({"channel": "shop/noemail"}, "channel"),
    ({"channel": "shop/downmail"}, "channel"),
])
async def test_a_bad_request_is_a_422_naming_the_field_and_nothing_is_stored_or_queued(
    webhook: httpx.AsyncClient, db: asyncpg.Pool, redis: aioredis.Redis, change: dict[str, Any], field: str,
) -> None:
    answer = await webhook.post("/api/v1/requests", json=_request(**change), headers=_bearer())

    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field
    assert await _count(db, "notifications") == 0 and await _count(db, "support_threads") == 0
    assert await _stream(redis, "shop.desk") == []


async def test_requests_need_an_api_key_and_an_idempotency_key_replays_the_first_answer(
    webhook: httpx.AsyncClient, db: asyncpg.Pool,
) -> None:
    assert (await webhook.post("/api/v1/requests", json=_request())).status_code == 401
    headers = {**_bearer(), "Idempotency-Key": "contact-form-17"}
    first = await webhook.post("/api/v1/requests", json=_request(), headers=headers)
    again = await webhook.post("/api/v1/requests", json=_request(), headers=headers)
    other = await webhook.post("/api/v1/requests", json=_request(text="another"), headers=headers)

    assert first.status_code == again.status_code == 202 and again.json() == first.json()
    assert again.headers["idempotent-replay"] == "true"
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert await _count(db, "support_threads") == 1 and await _count(db, "notifications") == 1


# --- the Mini App's API ------------------------------------------------------------------------------

async def _api_request(webhook: httpx.AsyncClient) -> int:
    answer = await webhook.post("/api/v1/requests", json=_request(), headers=_bearer())
    assert answer.status_code == 202, answer.text
    thread_id: int = answer.json()["id"]
    return thread_id


async def test_an_admin_reads_the_request_and_the_reply_is_queued_as_an_email_to_the_requester(
    webhook: httpx.AsyncClient, db: asyncpg.Pool, redis: aioredis.Redis,
) -> None:
    thread_id = await _api_request(webhook)
    shown = await webhook.get(f"/app/api/requests/{thread_id}", headers=_tma(_init_data()))
    assert shown.status_code == 200, shown.text
    assert {k: shown.json()[k] for k in ("id", "origin", "name", "email", "text", "status")} == {
        "id": thread_id, "origin": "api", "name": "Ada", "email": "ada@example.org",
        "text": "My order is late", "status": "open"}

    answer = await webhook.post("/app/api/replies", json={"thread": thread_id, "text": "It ships today."},
                                headers=_tma(_init_data()))

    assert answer.status_code == 202, answer.text
    notification_id = answer.json()["notificationId"]
    assert answer.json() == {"thread": thread_id, "status": "replying", "notificationId": notification_id}
    reply = await db.fetchrow(
        """SELECT n.*, ch.name AS channel FROM notifications n JOIN channels ch ON ch.id = n.channel_id
           WHERE n.id = $1""", notification_id)
    assert (reply["channel"], reply["recipient"], reply["reference"], reply["support_thread_id"],
            reply["lane"], reply["status"]) == (
        "mail", "ada@example.org", f"support-reply:{thread_id}", thread_id, "instant", "queued")
    assert (reply["content"]["subject"], reply["content"]["text"]) == ("Re: your request", "It ships today.")
    thread = await support.get_request(db, thread_id)
    assert thread is not None
    assert (thread.status, thread.replied_by, thread.replied_by_name, thread.reply_text,
            str(thread.reply_notification_id)) == (
        "replying", ADMIN, "Grace Hopper", "It ships today.", notification_id)
    assert await _stream(redis, "shop.mail") == [notification_id]
    audit = await db.fetchrow("SELECT * FROM audit_log WHERE action = 'support.reply_queued'")
    assert (audit["actor"], audit["subject"]) == (f"telegram:{ADMIN}", str(thread_id))


async def test_a_reply_to_a_dm_is_a_telegram_message_to_the_user_in_their_language(
    webhook: httpx.AsyncClient, db: asyncpg.Pool, redis: aioredis.Redis,
) -> None:
    channel_id = await db.fetchval("SELECT id FROM channels WHERE name = 'desk'")
    thread_id = await support.reserve_thread_id(db)
    await support.record_thread(db, channel_id, thread_id, user_chat_id=DM_USER, user_message_id=5,
                                admin_chat_id=GROUP_CHAT, admin_message_id=70, user_name="Ivan",
                                user_language="ru", body="Где мой заказ?", post_text="…")

    answer = await webhook.post("/app/api/replies", json={"thread": thread_id, "text": "Сегодня."},
                                headers=_tma(_init_data(start_param=f"t{thread_id}")))

    assert answer.status_code == 202, answer.text
    reply = await db.fetchrow("SELECT * FROM notifications WHERE id = $1", answer.json()["notificationId"])
    assert (reply["recipient"], reply["reference"], reply["support_thread_id"]) == (
        str(DM_USER), f"support-reply:{thread_id}", thread_id)
    assert reply["content"]["text"] == "Ответ службы поддержки:\n\nСегодня."
    assert reply["channel_id"] == channel_id
    assert await _stream(redis, "shop.desk") == [str(reply["id"])]


def _flipped(raw: str) -> str:
    return raw[:-1] + ("0" if raw[-1] != "0" else "1")


@pytest.mark.parametrize(("case", "status"), [
    ("no header", 401), ("another scheme", 401), ("flipped byte", 401), ("another bot's token", 401),
    ("stale auth_date", 401), ("missing hash", 401), ("no user", 401), ("unknown thread", 401),
    ("not an admin", 403), ("empty text", 422), ("too long text", 422),
])
async def test_refused_replies_store_and_queue_nothing(
    webhook: httpx.AsyncClient, db: asyncpg.Pool, redis: aioredis.Redis, case: str, status: int,
) -> None:
    thread_id = await _api_request(webhook)
    good = _init_data()
    no_user_fields = {"auth_date": str(int(time.time()))}
    headers = {
        "no header": {}, "another scheme": {"Authorization": f"Bearer {good}"},
        "flipped byte": _tma(_flipped(good)), "another bot's token": _tma(_init_data(token="654321:other")),
        "stale auth_date": _tma(_init_data(age=3601)), "missing hash": _tma(good.rpartition("&hash=")[0]),
        "no user": _tma(urlencode({**no_user_fields,
                                   "hash": sign_init_data(no_user_fields, webapp_secret(TOKEN))})),
        "unknown thread": _tma(good), "not an admin": _tma(_init_data(STRANGER)),
    }.get(case, _tma(good))
    body = {"thread": thread_id + 1000 if case == "unknown thread" else thread_id,
            "text": {"empty text": "", "too long text": "x" * 4001}.get(case, "It ships today.")}

    answer = await webhook.post("/app/api/replies", json=body, headers=headers)
    shown = await webhook.get(f"/app/api/requests/{body['thread']}", headers=headers)

    assert answer.status_code == status, answer.text
    assert shown.status_code == (200 if status == 422 else status)
    if status == 401:
        assert answer.json()["error"]["code"] == "unauthorized"
        assert answer.headers["www-authenticate"] == "tma"
    assert await db.fetchval("SELECT count(*) FROM notifications WHERE reference LIKE 'support-reply:%'") == 0
    assert await db.fetchval("SELECT status FROM support_threads WHERE id = $1", thread_id) == "open"
    assert await _stream(redis, "shop.mail") == []
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'support.reply_queued'") == 0


async def test_a_second_answer_while_the_first_is_on_its_way_is_a_409_and_queues_nothing(
    webhook: httpx.AsyncClient, db: asyncpg.Pool, redis: aioredis.Redis,
) -> None:
    thread_id = await _api_request(webhook)
    first = await webhook.post("/app/api/replies", json={"thread": thread_id, "text": "One"},
                               headers=_tma(_init_data()))
    second = await webhook.post("/app/api/replies", json={"thread": thread_id, "text": "Two"},
                                headers=_tma(_init_data()))

    assert first.status_code == 202 and second.status_code == 409
    assert second.json()["error"]["code"] == "not_answerable"
    assert await _stream(redis, "shop.mail") == [first.json()["notificationId"]]
    assert await db.fetchval("SELECT reply_text FROM support_threads WHERE id = $1", thread_id) == "One"


# --- the page ----------------------------------------------------------------------------------------

async def test_the_page_and_its_assets_are_served_with_the_configured_telegram_script(
    webhook: httpx.AsyncClient,
) -> None:
    page = await webhook.get("/app/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="https://telegram.org/js/telegram-web-app.js"></script>' in page.text
    assert 'id="reply-form"' in page.text and '"send": "Отправить"' in page.text
    assert "https://telegram.org" in page.headers["content-security-policy"]
    for asset, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        served = await webhook.get(f"/app/{asset}")
        assert served.status_code == 200 and served.headers["content-type"].startswith(kind)

    offline = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_miniapp("")), base_url="http://x")
    async with offline:
        bare = await offline.get("/")
    assert bare.status_code == 200 and "telegram.org" not in bare.text and "<script src=" in bare.text
