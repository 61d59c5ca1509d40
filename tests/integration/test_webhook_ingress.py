"""The webhook ingress on real Postgres and Redis: what Telegram gets back, what lands in the stream."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from clarion.keys import split_channel_key
from clarion.streams import (
    DEFAULT_PARTITIONS,
    UpdateEnvelope,
    update_dedup_key,
    update_partition,
    updates_stream,
)
from clarion_webhook.app import create_app
from clarion_webhook.settings import WebhookSettings

pytestmark = pytest.mark.integration

CHANNEL = "tests.bot"
SECRET = "s3cret-Token_value"
HEADERS = {"X-Telegram-Bot-Api-Secret-Token": SECRET}


async def insert_channel(db: Any, key: str = CHANNEL, secret: str = SECRET, *, deleted: bool = False) -> int:
    parts = split_channel_key(key)
    assert parts is not None, key
    channel_id: int = await db.fetchval(
        """INSERT INTO channels (namespace, name, type, bot_id, api_base_url, webhook_secret_sha256, config,
                                 ready, deleted_at)
           VALUES ($1, $2, 'telegram', 42, 'http://127.0.0.1:1', $3, $4, true,
                   CASE WHEN $5 THEN now() END) RETURNING id""",
        *parts, hashlib.sha256(secret.encode()).hexdigest(), {"defaultLanguage": "en"}, deleted,
    )
    return channel_id


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def client_for(database_url: str, redis_url: str) -> AsyncIterator[Any]:
    opened: list[Any] = []

    async def make(**overrides: Any) -> httpx.AsyncClient:
        options: dict[str, Any] = {"database_url": database_url, "redis_url": redis_url,
                                   "channel_cache_seconds": 0, **overrides}
        settings = WebhookSettings(**options)
        app = create_app(settings)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://webhook")
        opened.append((lifespan, client))
        return client

    yield make
    for lifespan, client in reversed(opened):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def client(client_for: Any, db: Any) -> httpx.AsyncClient:
    await insert_channel(db)
    made: httpx.AsyncClient = await client_for()
    return made


def message_update(update_id: int, chat_id: int = 1001, text: str = "hello") -> dict[str, Any]:
    return {"update_id": update_id, "message": {
        "message_id": update_id, "date": 1700000000, "text": text,
        "chat": {"id": chat_id, "type": "private"},
        "from": {"id": chat_id, "is_bot": False, "first_name": "A"}}}


async def all_entries(redis: Any, key: str = CHANNEL) -> list[UpdateEnvelope]:
    found = []
    for partition in range(DEFAULT_PARTITIONS):
        for _, fields in await redis.xrange(updates_stream(key, partition)):
            found.append(UpdateEnvelope.from_fields(fields))
    return found


async def test_update_is_enqueued_on_its_chats_partition_with_the_update_intact(
        client: httpx.AsyncClient, redis: Any) -> None:
    update = message_update(7, chat_id=-100555, text="Привет")
    response = await client.post(f"/tg/webhook/{CHANNEL}", json=update, headers=HEADERS)
    assert response.status_code == 200
    stream = updates_stream(CHANNEL, update_partition(-100555, DEFAULT_PARTITIONS))
    entries = await redis.xrange(stream)
    assert len(entries) == 1
    envelope = UpdateEnvelope.from_fields(entries[0][1])
    assert (envelope.channel, envelope.update_id, envelope.chat_id) == (CHANNEL, 7, -100555)
    assert envelope.update == update
    assert await redis.ttl(update_dedup_key(CHANNEL, 7)) > 0


async def test_same_update_twice_is_stored_once(client: httpx.AsyncClient, redis: Any) -> None:
    update = message_update(8)
    first = await client.post(f"/tg/webhook/{CHANNEL}", json=update, headers=HEADERS)
    second = await client.post(f"/tg/webhook/{CHANNEL}", json=update, headers=HEADERS)
    assert first.status_code == second.status_code == 200
    assert [e.update_id for e in await all_entries(redis)] == [8]


@pytest.mark.parametrize("headers", [{}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"},
                                     {"X-Telegram-Bot-Api-Secret-Token": SECRET + "x"}],
                         ids=["missing", "wrong", "longer"])
async def test_wrong_or_missing_secret_gets_401_and_enqueues_nothing(
        client: httpx.AsyncClient, redis: Any, headers: dict[str, str]) -> None:
    response = await client.post(f"/tg/webhook/{CHANNEL}", json=message_update(9), headers=headers)
    assert response.status_code == 401
    assert await redis.dbsize() == 0


async def test_unknown_and_deleted_channels_get_404(client_for: Any, db: Any, redis: Any) -> None:
    await insert_channel(db, "tests.gone", deleted=True)
    client = await client_for()
    for key in ("tests.gone", "tests.nobody", "no-dot", "UPPER.case"):
        response = await client.post(f"/tg/webhook/{key}", json=message_update(1), headers=HEADERS)
        assert response.status_code == 404, key
    assert await redis.dbsize() == 0


@pytest.mark.parametrize("body", [
    b"not json", b"[1, 2]", b'"text"', b"{}", b'{"update_id": "5"}', b'{"update_id": true}',
    b'{"update_id": -1}', b'{"update_id": 5.5}', b'{"update_id": NaN}', b"\xff\xfe{}", b"",
], ids=["text", "array", "string", "no-id", "string-id", "bool-id", "negative-id", "float-id", "nan",
        "not-utf8", "empty"])
async def test_malformed_body_gets_400_and_changes_nothing(
        client: httpx.AsyncClient, redis: Any, body: bytes) -> None:
    response = await client.post(f"/tg/webhook/{CHANNEL}", content=body, headers=HEADERS)
    assert response.status_code == 400
    assert response.json()["detail"]
    assert await redis.dbsize() == 0


async def test_oversized_body_gets_413_by_header_and_by_bytes_read(
        client_for: Any, db: Any, redis: Any) -> None:
    await insert_channel(db)
    client = await client_for(webhook_max_body_bytes=2048)
    big = json.dumps(message_update(10, text="x" * 4096)).encode()
    by_header = await client.post(f"/tg/webhook/{CHANNEL}", content=big, headers=HEADERS)
    assert by_header.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: only the bytes read can tell
        for start in range(0, len(big), 1000):
            yield big[start:start + 1000]

    by_bytes = await client.post(f"/tg/webhook/{CHANNEL}", content=chunks(), headers=HEADERS)
    assert by_bytes.status_code == 413
    assert await redis.dbsize() == 0


async def test_redis_down_gets_503_and_a_retry_after_recovery_is_stored_once(
        client_for: Any, db: Any, redis: Any) -> None:
    await insert_channel(db)
    down = await client_for(redis_url=f"redis://127.0.0.1:{closed_port()}/15", redis_timeout_seconds=0.5)
    response = await down.post(f"/tg/webhook/{CHANNEL}", json=message_update(11), headers=HEADERS)
    assert response.status_code == 503
    ready = await down.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["redis"] != "ok"
    assert await redis.dbsize() == 0

    up = await client_for()  # Telegram retries the same update once Redis is back
    retried = await up.post(f"/tg/webhook/{CHANNEL}", json=message_update(11), headers=HEADERS)
    assert retried.status_code == 200
    assert [e.update_id for e in await all_entries(redis)] == [11]


async def test_updates_without_a_chat_are_partitioned_by_user_or_go_to_partition_zero(
        client: httpx.AsyncClient, redis: Any) -> None:
    user = {"id": 777, "is_bot": False, "first_name": "U"}
    inline = {"update_id": 20, "inline_query": {"id": "q", "from": user, "query": "", "offset": ""}}
    poll = {"update_id": 21, "poll": {"id": "p", "question": "?", "options": [], "total_voter_count": 0,
                                      "is_closed": False, "is_anonymous": True, "type": "regular",
                                      "allows_multiple_answers": False}}
    callback = {"update_id": 22, "callback_query": {
        "id": "c", "from": {"id": 5, "is_bot": False, "first_name": "U"}, "chat_instance": "i", "data": "x",
        "message": {"message_id": 1, "date": 1, "chat": {"id": -300, "type": "group"}}}}
    for update in (inline, poll, callback):
        assert (await client.post(f"/tg/webhook/{CHANNEL}", json=update, headers=HEADERS)).status_code == 200
    assert len(await redis.xrange(updates_stream(CHANNEL, update_partition(777, DEFAULT_PARTITIONS)))) >= 1
    assert any(e.update_id == 21 for _, f in await redis.xrange(updates_stream(CHANNEL, 0))
               for e in [UpdateEnvelope.from_fields(f)])
    by_id = {e.update_id: e.chat_id for e in await all_entries(redis)}
    assert by_id == {20: 777, 21: None, 22: -300}


async def test_health_readiness_and_metrics_endpoints(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"redis": "ok", "postgres": "ok", "channels": "ok", "api_keys": "ok"}
    assert ready.json()["degraded"] is False
    await client.post(f"/tg/webhook/{CHANNEL}", json=message_update(30), headers=HEADERS)
    await client.post(f"/tg/webhook/{CHANNEL}", json=message_update(30), headers=HEADERS)
    await client.post(f"/tg/webhook/{CHANNEL}", json=message_update(31), headers={})
    text = (await client.get("/metrics")).text
    for result in ("accepted", "duplicate", "unauthorized"):
        assert f'clarion_webhook_updates_received_total{{channel="{CHANNEL}",result="{result}"}}' in text
    labels = [line[line.index("{"): line.index("}") + 1] for line in text.splitlines()
              if line.startswith("clarion_") and "{" in line]
    assert labels and not any("1001" in label for label in labels)  # no chat or user ids in labels


async def test_get_on_the_webhook_path_is_405(client: httpx.AsyncClient) -> None:
    assert (await client.get(f"/tg/webhook/{CHANNEL}")).status_code == 405


def metric_value(text: str, sample: str) -> float:
    """The value of one sample line (`name{labels}`) of a /metrics page; 0 when it is absent."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_deeply_nested_body_gets_400_counted_as_malformed(
        client: httpx.AsyncClient, redis: Any) -> None:
    malformed = f'clarion_webhook_updates_received_total{{channel="{CHANNEL}",result="malformed"}}'
    before = metric_value((await client.get("/metrics")).text, malformed)
    body = b'{"update_id": 40, "message": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    response = await client.post(f"/tg/webhook/{CHANNEL}", content=body, headers=HEADERS)
    assert response.status_code == 400
    assert response.json()["detail"]
    assert await redis.dbsize() == 0
    assert metric_value((await client.get("/metrics")).text, malformed) == before + 1
