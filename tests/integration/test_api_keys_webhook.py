"""API keys in the webhook: the copy follows the table by NOTIFY, outlives a Postgres outage, and the
FastAPI dependencies answer 401 / 403 / 429 the way the public API promises (docs/api-keys.md).

The routes below are wired exactly as docs/api-keys.md tells the API to wire them. No
`from __future__ import annotations` here: FastAPI must see the route's `Annotated[..., Depends(...)]`
built inside `api()` as an object, not as a string it would look up in the module's globals.
"""

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from clarion.db import api_keys as q
from clarion.db import apply_migrations, create_pool
from clarion.db.api_keys import ApiKeyRow
from clarion.models import ApiKeySecret
from clarion.ratelimit import SharedRateLimit
from clarion_dev.testing.servers import PrivatePostgres
from clarion_dev.testing.waiting import async_wait_for
from clarion_webhook.api_keys import ApiKeyGuard, ApiKeyStore, authorize
from clarion_webhook.errors import Refused, refused_handler
from fastapi import Depends, FastAPI

pytestmark = pytest.mark.integration

ORDERS_KEY = "orders-key-" + "o" * 32
ALL_KEY = "all-channels-key-" + "a" * 32
LIMITED_KEY = "limited-key-" + "l" * 32


def secret(name: str, key: str, channels: tuple[str, ...], *, rate: int | None = None,
           namespace: str = "shop") -> ApiKeySecret:
    return ApiKeySecret(namespace=namespace, name=name, uid=f"uid-{name}",
                        key_sha256=hashlib.sha256(key.encode()).hexdigest(), channels=channels,
                        rate_per_minute=rate)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api(guard: ApiKeyGuard) -> FastAPI:
    """A stand-in for `/api/v1`, wired as docs/api-keys.md says."""
    app = FastAPI()
    app.add_exception_handler(Refused, refused_handler)
    Caller = Annotated[ApiKeyRow, Depends(guard.caller)]

    @app.post("/api/v1/namespaces/{namespace}/channels/{channel}/notifications")
    async def send(namespace: str, channel: str, caller: Caller) -> dict[str, Any]:
        authorize(caller, namespace, channel)
        return {"key_id": caller.key_id}

    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def store(db: asyncpg.Pool, database_url: str) -> AsyncIterator[ApiKeyStore]:
    """A started copy that only NOTIFY can update within a test (no full reload for an hour)."""
    copy = ApiKeyStore(db, database_url, check_seconds=5, reload_seconds=3600)
    await copy.start()
    try:
        yield copy
    finally:
        await copy.stop()


async def test_a_revocation_written_to_the_table_reaches_the_store_within_5_s(
        db: asyncpg.Pool, store: ApiKeyStore) -> None:
    assert store.in_sync and len(store) == 0
    await q.sync_api_key(db, secret("backend", ORDERS_KEY, ("orders",)))
    row: ApiKeyRow = await async_wait_for(lambda: store.lookup(digest(ORDERS_KEY)), timeout=5,
                                          what="the new key in the copy")
    assert row.subject == "shop/backend" and row.channels == ("orders",)

    await q.revoke_api_key(db, "shop", "backend", reason="test")
    await async_wait_for(lambda: store.lookup(digest(ORDERS_KEY)) is None, timeout=5,
                         what="the revocation in the copy")
    assert len(store) == 0


async def test_a_rotated_key_replaces_the_old_one_in_the_store(db: asyncpg.Pool, store: ApiKeyStore) -> None:
    await q.sync_api_key(db, secret("backend", ORDERS_KEY, ("orders",)))
    await async_wait_for(lambda: store.lookup(digest(ORDERS_KEY)), timeout=5, what="the key")
    await q.sync_api_key(db, secret("backend", ALL_KEY, ("*",)))
    await async_wait_for(lambda: store.lookup(digest(ALL_KEY)), timeout=5, what="the rotated key")
    assert store.lookup(digest(ORDERS_KEY)) is None and len(store) == 1


async def test_the_dependencies_answer_401_403_and_pass_the_key_on(db: asyncpg.Pool, store: ApiKeyStore,
                                                                   redis: aioredis.Redis) -> None:
    await q.sync_api_key(db, secret("orders", ORDERS_KEY, ("orders", "alerts")))
    await q.sync_api_key(db, secret("all", ALL_KEY, ("*",)))
    revoked = "revoked-key-" + "r" * 32
    await q.sync_api_key(db, secret("old", revoked, ("*",)).model_copy(update={"revoked": True}))
    await async_wait_for(lambda: len(store) == 2, timeout=5, what="two usable keys in the copy")
    path = "/api/v1/namespaces/shop/channels/orders/notifications"

    async with client(api(ApiKeyGuard(store, SharedRateLimit(redis)))) as http:
        ok = await http.post(path, headers=bearer(ORDERS_KEY))
        known = store.lookup(digest(ORDERS_KEY))
        assert ok.status_code == 200 and known is not None and ok.json()["key_id"] == known.key_id
        assert (await http.post("/api/v1/namespaces/shop/channels/anything/notifications",
                                headers=bearer(ALL_KEY))).status_code == 200

        refusals = {
            "missing": await http.post(path),
            "basic": await http.post(path, headers={"Authorization": "Basic dXNlcjpwYXNz"}),
            "empty": await http.post(path, headers={"Authorization": "Bearer "}),
            "spaces": await http.post(path, headers={"Authorization": "Bearer two words"}),
            "unknown": await http.post(path, headers=bearer("unknown-key-" + "u" * 32)),
            "revoked": await http.post(path, headers=bearer(revoked)),
        }
        for case, answer in refusals.items():
            assert answer.status_code == 401, case
            assert answer.headers["WWW-Authenticate"].startswith("Bearer"), case
            assert list(answer.json()) == ["error"], case
            assert set(answer.json()["error"]) == {"code", "message"}, case
        assert refusals["missing"].json()["error"]["code"] == "missing_api_key"
        assert refusals["basic"].json()["error"]["code"] == "malformed_authorization"
        assert refusals["unknown"].json()["error"]["code"] == "invalid_api_key"
        assert refusals["revoked"].json() == refusals["unknown"].json()  # revoked or unknown: the same answer

        other_channel = await http.post("/api/v1/namespaces/shop/channels/billing/notifications",
                                        headers=bearer(ORDERS_KEY))
        other_namespace = await http.post("/api/v1/namespaces/other/channels/orders/notifications",
                                          headers=bearer(ALL_KEY))
    for answer in (other_channel, other_namespace):
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "forbidden_channel"
    assert "shop/billing" in other_channel.json()["error"]["message"]


async def test_two_replicas_share_one_rate_limit_and_answer_429_with_retry_after(
        db: asyncpg.Pool, database_url: str, store: ApiKeyStore, redis_url: str) -> None:
    await q.sync_api_key(db, secret("limited", LIMITED_KEY, ("*",), rate=6))  # 6/min: a burst of 1
    second_store = ApiKeyStore(db, database_url, check_seconds=5, reload_seconds=3600)
    await second_store.start()
    redis_a, redis_b = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
    try:
        replicas = [client(api(ApiKeyGuard(s, SharedRateLimit(r)))) for s, r in
                    ((store, redis_a), (second_store, redis_b))]
        await async_wait_for(lambda: store.lookup(digest(LIMITED_KEY)) and second_store.lookup(
            digest(LIMITED_KEY)), timeout=5, what="the key in both copies")
        path = "/api/v1/namespaces/shop/channels/orders/notifications"
        first = await replicas[0].post(path, headers=bearer(LIMITED_KEY))
        second = await replicas[1].post(path, headers=bearer(LIMITED_KEY))
        third = await replicas[0].post(path, headers=bearer(LIMITED_KEY))
        for http in replicas:
            await http.aclose()
    finally:
        await second_store.stop()
        await redis_a.aclose()
        await redis_b.aclose()
    assert first.status_code == 200
    for answer in (second, third):
        assert answer.status_code == 429
        assert answer.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(answer.headers["Retry-After"]) <= 10


async def test_without_a_loaded_copy_the_api_answers_503_not_401(db: asyncpg.Pool,
                                                                  redis: aioredis.Redis) -> None:
    never_started = ApiKeyStore(db, "postgresql://nobody@127.0.0.1:1/none")
    async with client(api(ApiKeyGuard(never_started, SharedRateLimit(redis)))) as http:
        answer = await http.post("/api/v1/namespaces/shop/channels/orders/notifications",
                                 headers=bearer(ORDERS_KEY))
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "unavailable"
    assert int(answer.headers["Retry-After"]) >= 1


@pytest.fixture
async def outage_dsn(private_postgres: PrivatePostgres) -> str:
    conn = await asyncpg.connect(private_postgres.dsn())
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    return private_postgres.dsn()


async def test_the_store_answers_from_its_copy_while_postgres_is_stopped(
        private_postgres: PrivatePostgres, outage_dsn: str, redis: aioredis.Redis) -> None:
    pool = await create_pool(outage_dsn, min_size=0, max_size=2)
    copy = ApiKeyStore(pool, outage_dsn, check_seconds=0.5, reload_seconds=3600)
    try:
        await q.sync_api_key(pool, secret("backend", ORDERS_KEY, ("orders",)))
        await copy.start()
        assert copy.in_sync and copy.lookup(digest(ORDERS_KEY)) is not None
        path = "/api/v1/namespaces/shop/channels/orders/notifications"
        async with client(api(ApiKeyGuard(copy, SharedRateLimit(redis)))) as http:
            await asyncio.to_thread(private_postgres.stop)
            await async_wait_for(lambda: not copy.in_sync, timeout=15, what="the copy to notice the outage")
            during = await http.post(path, headers=bearer(ORDERS_KEY))
            unknown_during = await http.post(path, headers=bearer("unknown-key-" + "u" * 32))
            stale = copy.stale_seconds()
            await asyncio.to_thread(private_postgres.start)

            async def revoke() -> bool:  # the pool reconnects at its own pace
                await q.revoke_api_key(pool, "shop", "backend", reason="after the outage")
                return True

            done: bool = await async_wait_for(revoke, timeout=15, what="Postgres back",
                                              ignore=(OSError, asyncpg.PostgresError, asyncpg.InterfaceError))
            assert done
            await async_wait_for(lambda: copy.lookup(digest(ORDERS_KEY)) is None, timeout=15,
                                 what="the revocation after the outage")
            after = await http.post(path, headers=bearer(ORDERS_KEY))
    finally:
        await copy.stop()
        await pool.close()
    assert during.status_code == 200
    assert unknown_during.status_code == 401
    assert stale > 0
    assert after.status_code == 401 and copy.in_sync
