"""`POST /api/v1/push-subscriptions` and `DELETE /api/v1/push-subscriptions/{id}` against real Postgres
and Redis: a browser's subscription is stored once per endpoint, bad keys and wrong channels are refused
with the field at fault and change nothing, and only the key's namespace can delete."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from clarion.db import api_keys as keys
from clarion.models import ApiKeySecret
from clarion_dev.push_service import PushService
from clarion_webhook.app import create_app
from clarion_webhook.settings import WebhookSettings

pytestmark = pytest.mark.integration

KEY = "p" * 40
MAIL_ONLY_KEY = "m" * 40
OTHER_KEY = "o" * 40
PATH = "/api/v1/push-subscriptions"
#: RFC 8291's example browser key, a valid P-256 point.
UA_PUBLIC = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"


def _bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def api(db: asyncpg.Pool, database_url: str, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    await db.execute(
        """INSERT INTO channels (namespace, name, type, config, ready)
           VALUES ('shop', 'push', 'webpush', '{"subject": "mailto:ops@shop.example"}', true),
                  ('shop', 'alerts', 'telegram', '{}', true),
                  ('other', 'push', 'webpush', '{"subject": "mailto:ops@other.example"}', true)""")
    for name, key, channels, namespace in (("backend", KEY, ("*",), "shop"),
                                           ("mail", MAIL_ONLY_KEY, ("alerts",), "shop"),
                                           ("other", OTHER_KEY, ("*",), "other")):
        await keys.sync_api_key(db, ApiKeySecret(
            namespace=namespace, name=name, uid=f"uid-{name}",
            key_sha256=hashlib.sha256(key.encode()).hexdigest(), channels=channels, rate_per_minute=None))
    app = create_app(WebhookSettings(database_url=database_url, redis_url=redis_url, channel_cache_seconds=0))
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://clarion")
    try:
        yield client
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


def _body(push: PushService, *, recipient: str = "client-7", channel: str = "shop/push",
          **subscription: Any) -> dict[str, Any]:
    browser = push.subscribe()
    sub = browser.to_json()
    # the API takes only https endpoints, as real push services have; the keys are a real browser's
    sub["endpoint"] = "https://push.example.net/wpush/v2/" + browser.token
    sub.update(subscription)
    return {"channel": channel, "recipient": recipient, "subscription": sub}


async def _rows(db: asyncpg.Pool) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch("SELECT * FROM push_subscriptions ORDER BY created_at")
    return rows


async def test_a_subscription_is_registered_once_per_endpoint_and_updated_when_sent_again(
    api: httpx.AsyncClient, db: asyncpg.Pool, push_service: PushService,
) -> None:
    body = _body(push_service, expirationTime=1_893_456_000_000)
    created = await api.post(PATH, json=body, headers=_bearer())
    assert created.status_code == 201, created.text
    view = created.json()
    assert view["channel"] == "shop/push" and view["recipient"] == "client-7"
    assert view["expiresAt"].startswith("2030-01-01")
    assert created.headers["Location"] == f"{PATH}/{view['id']}"

    body["recipient"] = "client-8"
    body["subscription"]["expirationTime"] = None
    again = await api.post(PATH, json=body, headers=_bearer())
    assert again.status_code == 200, again.text
    assert again.json()["id"] == view["id"] and again.json()["recipient"] == "client-8"

    [row] = await _rows(db)
    assert (str(row["id"]), row["recipient"], row["expires_at"]) == (view["id"], "client-8", None)
    assert (row["p256dh"], row["auth"]) == (body["subscription"]["keys"]["p256dh"],
                                            body["subscription"]["keys"]["auth"])


@pytest.mark.parametrize(("change", "field", "says"), [
    ({"endpoint": "http://push.example.net/x"}, "subscription.endpoint", "should match pattern"),
    ({"keys": {"p256dh": UA_PUBLIC[:-3],
               "auth": "BTBZMqHH6r4Tts7J_aSIgg"}}, "subscription.keys.p256dh", "65-byte uncompressed"),
    ({"keys": {"p256dh": "B" + "A" * 86, "auth": "BTBZMqHH6r4Tts7J_aSIgg"}},
     "subscription.keys.p256dh", "not a point on the P-256 curve"),
    ({"keys": {"p256dh": UA_PUBLIC,
               "auth": "BTBZMqHH6r4Tts7J_aSI"}}, "subscription.keys.auth", "16-byte secret, not 15 bytes"),
    ({"keys": {"p256dh": UA_PUBLIC,
               "auth": "BTBZMqHH6r4Tts7J/aSIgg"}}, "subscription.keys.auth", "not base64url"),
])
async def test_bad_subscriptions_are_refused_naming_the_field_and_nothing_is_stored(
    api: httpx.AsyncClient, db: asyncpg.Pool, push_service: PushService,
    change: dict[str, Any], field: str, says: str,
) -> None:
    answer = await api.post(PATH, json=_body(push_service, **change), headers=_bearer())
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"] == field and says in error["message"]
    assert await _rows(db) == []


@pytest.mark.parametrize(("key", "channel", "status", "code"), [
    (KEY, "shop/alerts", 422, "invalid_request"),
    (KEY, "shop/nothing", 422, "unknown_channel"),
    (MAIL_ONLY_KEY, "shop/push", 403, "forbidden_channel"),
    (OTHER_KEY, "shop/push", 403, "forbidden_channel"),
])
async def test_channels_that_are_not_the_key_s_webpush_channels_are_refused(
    api: httpx.AsyncClient, db: asyncpg.Pool, push_service: PushService,
    key: str, channel: str, status: int, code: str,
) -> None:
    answer = await api.post(PATH, json=_body(push_service, channel=channel), headers=_bearer(key))
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    assert await _rows(db) == []


async def test_a_subscription_is_deleted_by_its_namespace_only(
    api: httpx.AsyncClient, db: asyncpg.Pool, push_service: PushService,
) -> None:
    ident = (await api.post(PATH, json=_body(push_service), headers=_bearer())).json()["id"]

    foreign = await api.delete(f"{PATH}/{ident}", headers=_bearer(OTHER_KEY))
    assert foreign.status_code == 404 and len(await _rows(db)) == 1
    not_allowed = await api.delete(f"{PATH}/{ident}", headers=_bearer(MAIL_ONLY_KEY))
    assert not_allowed.status_code == 403 and len(await _rows(db)) == 1

    deleted = await api.delete(f"{PATH}/{ident}", headers=_bearer())
    assert deleted.status_code == 204
    assert await _rows(db) == []
    gone = await api.delete(f"{PATH}/{ident}", headers=_bearer())
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


async def test_the_openapi_document_describes_the_push_subscription_routes(api: httpx.AsyncClient) -> None:
    document = (await api.get("/api/v1/openapi.json")).json()
    post = document["paths"]["/push-subscriptions"]["post"]  # the paths of the app mounted at /api/v1
    assert set(post["responses"]) >= {"200", "201", "403", "422"}
    assert "delete" in document["paths"]["/push-subscriptions/{subscription_id}"]
    assert "PushSubscriptionRequest" in document["components"]["schemas"]


async def test_a_web_push_is_sent_through_the_notifications_api_to_a_registered_subscription(
    api: httpx.AsyncClient, db: asyncpg.Pool, push_service: PushService,
) -> None:
    subscription = (await api.post(PATH, json=_body(push_service), headers=_bearer())).json()["id"]
    answer = await api.post("/api/v1/notifications", headers=_bearer(), json={
        "channel": "shop/push", "recipient": {"pushSubscriptionId": subscription},
        "content": {"subject": "Order 1042", "text": "It is on its way.",
                    "url": "https://shop.example/orders/1042"}})
    assert answer.status_code == 202, answer.text
    row = await db.fetchrow("SELECT recipient, content, status FROM notifications WHERE id = $1::uuid",
                            answer.json()["id"])
    assert (row["recipient"], row["status"]) == (subscription, "queued")
    assert row["content"] == {"title": "Order 1042", "body": "It is on its way.",
                              "url": "https://shop.example/orders/1042"}

    untitled = await api.post("/api/v1/notifications", headers=_bearer(), json={
        "channel": "shop/push", "recipient": {"pushSubscriptionId": subscription},
        "content": {"text": "Your table is ready"}})
    assert untitled.status_code == 202, untitled.text
    assert await db.fetchval("SELECT content FROM notifications WHERE id = $1::uuid",
                             untitled.json()["id"]) == {"title": "Your table is ready", "body": ""}


@pytest.mark.parametrize(("request_body", "status", "field", "says"), [
    ({"channel": "shop/push", "recipient": {"pushSubscriptionId": "8a7f6e0b-3c1d-4e2f-9a8b-7c6d5e4f3a2b"},
      "content": {"text": "hi"}}, 422, "recipient.pushSubscriptionId", "no push subscription"),
    ({"channel": "shop/push", "recipient": {"chatId": 42}, "content": {"text": "hi"}},
     422, "recipient", "set recipient.pushSubscriptionId"),
    ({"channel": "shop/alerts", "recipient": {"pushSubscriptionId": "8a7f6e0b-3c1d-4e2f-9a8b-7c6d5e4f3a2b"},
      "content": {"text": "hi"}}, 422, "recipient", "set recipient.chatId"),
    ({"channel": "shop/alerts", "recipient": {"chatId": 42},
      "content": {"text": "hi", "url": "https://shop.example/"}}, 422, "content.url", "only a web push"),
    ({"channel": "shop/push", "recipient": {"pushSubscriptionId": "not-a-uuid"}, "content": {"text": "hi"}},
     422, "recipient.pushSubscriptionId", "UUID"),
    ({"channel": "shop/push", "recipient": {"chatId": 42, "pushSubscriptionId":
                                            "8a7f6e0b-3c1d-4e2f-9a8b-7c6d5e4f3a2b"},
      "content": {"text": "hi"}}, 422, "recipient", "exactly one of chatId, email or pushSubscriptionId"),
])
async def test_a_web_push_the_api_cannot_send_is_refused_naming_the_field_and_nothing_is_stored(
    api: httpx.AsyncClient, db: asyncpg.Pool, request_body: dict[str, Any], status: int, field: str,
    says: str,
) -> None:
    answer = await api.post("/api/v1/notifications", headers=_bearer(), json=request_body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["field"] == field and says in error["message"], error
    assert await db.fetchval("SELECT count(*) FROM notifications") == 0


async def test_a_web_push_longer_than_one_push_message_is_refused_and_one_that_fits_is_taken(
    api: httpx.AsyncClient, db: asyncpg.Pool, push_service: PushService,
) -> None:
    subscription = (await api.post(PATH, json=_body(push_service), headers=_bearer())).json()["id"]

    def body(text: str) -> dict[str, Any]:
        return {"channel": "shop/push", "recipient": {"pushSubscriptionId": subscription},
                "content": {"subject": "News", "text": text}}

    # {"title":"News","body":"…","id":"<36>"}: 3993 bytes in all when the text has 3923 of them
    fits = await api.post("/api/v1/notifications", headers=_bearer(), json=body("é" * 1961 + "x"))
    assert fits.status_code == 202, fits.text
    too_long = await api.post("/api/v1/notifications", headers=_bearer(), json=body("é" * 1962))
    assert too_long.status_code == 422, too_long.text
    assert too_long.json()["error"]["field"] == "content"
    assert "at most 3993 bytes" in too_long.json()["error"]["message"]
    assert await db.fetchval("SELECT count(*) FROM notifications") == 1
