"""`POST /api/v1/events` on the real webhook app (ASGI), Postgres and Redis: quiet hours create a
scheduled notification, web push reaches a registered subscription of that channel, a disabled route and
a narrow key are reported, a template that cannot render stores nothing, and route rows follow the
resource's uid (docs/events.md)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from clarion.db import api_keys as keys
from clarion.db import events
from clarion.models import ApiKeySecret, NotificationRouteSpec
from clarion_webhook.app import create_app
from clarion_webhook.settings import WebhookSettings

pytestmark = pytest.mark.integration

KEY, NARROW = "k" * 40, "n" * 40
SUBSCRIPTION = uuid.uuid4()


def _route(**extra: Any) -> NotificationRouteSpec:
    return NotificationRouteSpec.model_validate(
        {
            "eventType": "booking_created",
            "initiatorRole": "admin",
            "recipients": [
                {
                    "role": "client",
                    "channels": [
                        {"channelRef": "bot", "template": "t"},
                        {"channelRef": "push", "template": "t"},
                    ],
                }
            ],
            "templates": [
                {
                    "name": "t",
                    "variables": [{"name": "when"}],
                    "variants": [{"language": "en", "subject": "Booked", "text": "See you {{ when }}"}],
                }
            ],
            **extra,
        }
    )


@pytest.fixture
async def api(db: asyncpg.Pool, database_url: str, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    await db.execute(
        "INSERT INTO channels (namespace, name, type, config, ready) "
        "VALUES ('salon', 'bot', 'telegram', '{}', true)"
    )
    push = await db.fetchval(
        "INSERT INTO channels (namespace, name, type, config, ready) "
        "VALUES ('salon', 'push', 'webpush', '{}', true) RETURNING id"
    )
    await db.execute(
        "INSERT INTO push_subscriptions (id, channel_id, recipient, endpoint, p256dh, auth) "
        "VALUES ($1, $2, 'c1', 'https://push.example/1', 'p', 'a')",
        SUBSCRIPTION,
        push,
    )
    for name, key, channels in (("site", KEY, ("*",)), ("narrow", NARROW, ("bot",))):
        await keys.sync_api_key(
            db,
            ApiKeySecret(
                namespace="salon",
                name=name,
                uid=f"uid-{name}",
                key_sha256=hashlib.sha256(key.encode()).hexdigest(),
                channels=channels,
                rate_per_minute=None,
            ),
        )
    app = create_app(WebhookSettings(database_url=database_url, redis_url=redis_url, channel_cache_seconds=0))
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://clarion",
        headers={"Authorization": f"Bearer {KEY}"},
    )
    try:
        yield client
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


def _event(event_id: str, *recipients: dict[str, Any], data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "booking_created",
        "id": event_id,
        "initiator": {"role": "admin", "id": "a"},
        "recipients": list(recipients),
        "data": {"when": "tomorrow"} if data is None else data,
    }


async def test_quiet_hours_schedule_the_notification_for_the_end_of_the_recipient_s_night(
    api: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    # a window around now in Tokyo's wall clock, so the test holds at any time of day
    tokyo_now = datetime.now(UTC) + timedelta(hours=9)
    start, end = (
        (tokyo_now - timedelta(hours=1)).strftime("%H:%M"),
        (tokyo_now + timedelta(hours=1)).strftime("%H:%M"),
    )
    await events.upsert_route(
        db, namespace="salon", name="r", uid="u1", spec=_route(quietHours={"start": start, "end": end})
    )
    answer = await api.post(
        "/api/v1/events",
        json=_event("e-quiet", {"role": "client", "id": "c", "telegramChatId": 5, "timeZone": "Asia/Tokyo"}),
    )
    assert answer.status_code == 202, answer.text
    [outcome] = answer.json()["recipients"]
    assert outcome["reason"] == "quiet_hours"
    assert outcome["notification"]["status"] == "created"
    send_at = datetime.fromisoformat(outcome["sendAt"])
    assert timedelta(minutes=59) <= send_at - datetime.now(UTC) <= timedelta(minutes=61)
    row = await db.fetchrow("SELECT status, scheduled_for, recipient FROM notifications")
    assert (row["status"], row["scheduled_for"], row["recipient"]) == ("created", send_at, "5")


async def test_web_push_reaches_a_registered_subscription_of_that_channel_only(
    api: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    await events.upsert_route(db, namespace="salon", name="r", uid="u1", spec=_route())
    answer = await api.post(
        "/api/v1/events",
        json=_event(
            "e-push",
            {"role": "client", "id": "c1", "pushSubscriptionId": str(SUBSCRIPTION)},
            {"role": "client", "id": "c2", "pushSubscriptionId": str(uuid.uuid4())},
        ),
    )
    assert answer.status_code == 202, answer.text
    pushed, unknown = answer.json()["recipients"]
    assert pushed["notification"]["channel"] == "salon/push"
    assert unknown["reason"] == "no_reachable_channel"
    row = await db.fetchrow("SELECT recipient, content FROM notifications")
    assert row["recipient"] == str(SUBSCRIPTION)
    assert {k: row["content"][k] for k in ("title", "body")} == {
        "title": "Booked",
        "body": "See you tomorrow",
    }


async def test_a_disabled_route_notifies_nobody_and_says_so(api: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    await events.upsert_route(db, namespace="salon", name="r", uid="u1", spec=_route(enabled=False))
    answer = await api.post(
        "/api/v1/events", json=_event("e-off", {"role": "client", "id": "c", "telegramChatId": 5})
    )
    assert answer.json()["recipients"] == [
        {"role": "client", "id": "c", "route": "r", "reason": "route_disabled"}
    ]
    assert await db.fetchval("SELECT count(*) FROM notifications") == 0


async def test_a_template_that_cannot_render_is_refused_and_nothing_is_stored(
    api: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    await events.upsert_route(db, namespace="salon", name="r", uid="u1", spec=_route())
    answer = await api.post(
        "/api/v1/events", json=_event("e-bad", {"role": "client", "id": "c", "telegramChatId": 5}, data={})
    )
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["field"] == "recipients[0]"
    assert "needs variable when" in error["message"]
    assert await db.fetchval("SELECT count(*) FROM notifications") == 0
    assert await db.fetchval("SELECT count(*) FROM events") == 0


async def test_a_key_that_may_not_use_the_chosen_channel_is_refused(
    api: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    await events.upsert_route(db, namespace="salon", name="r", uid="u1", spec=_route())
    answer = await api.post(
        "/api/v1/events",
        headers={"Authorization": f"Bearer {NARROW}"},
        json=_event("e-narrow", {"role": "client", "id": "c1", "pushSubscriptionId": str(SUBSCRIPTION)}),
    )
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "forbidden_channel"
    assert await db.fetchval("SELECT count(*) FROM events") == 0


async def test_a_bad_body_names_the_field(api: httpx.AsyncClient) -> None:
    answer = await api.post(
        "/api/v1/events", json=_event("e", {"role": "client", "id": "c", "timeZone": "Mars/Olympus"})
    )
    assert answer.status_code == 422
    assert "unknown time zone 'Mars/Olympus'" in answer.json()["error"]["message"]


async def test_a_route_row_follows_its_resource_s_uid(api: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    await events.upsert_route(db, namespace="salon", name="r", uid="old", spec=_route())
    await events.upsert_route(db, namespace="salon", name="r", uid="new", spec=_route())  # re-created
    assert not await events.mark_route_deleted(db, "salon", "r", "old")  # the old object's late delete
    assert [r.name for r in await events.matching_routes(db, "salon", "booking_created", "admin")] == ["r"]
    assert await events.mark_route_deleted(db, "salon", "r", "new")
    assert await events.matching_routes(db, "salon", "booking_created", "admin") == []
    answer = await api.post(
        "/api/v1/events", json=_event("e-gone", {"role": "client", "id": "c", "telegramChatId": 5})
    )
    assert answer.json()["recipients"] == [{"role": "client", "id": "c", "reason": "no_route"}]


async def test_get_event_of_another_namespace_is_not_found(api: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    await db.execute(
        "INSERT INTO events (id, namespace, event_id, type, initiator, result) "
        "VALUES ($1, 'other', 'x', 't', '{}', '{}')",
        uuid.uuid4(),
    )
    assert (await api.get("/api/v1/events/x")).status_code == 404
    assert (await api.get("/api/v1/events", params={"reference": "x"})).json() == {"items": []}
