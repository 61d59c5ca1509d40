"""Fixtures shared by every tier.

Servers are real: Postgres and Redis started by scripts/local-services.sh, the Telegram emulator and
the SMTP sink from devtools, and (cluster tier) a local kube-apiserver. When a server is missing, a
test fails in CI (CI=true) and is skipped with the reason on a developer box.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from clarion.db import apply_migrations

pytest_plugins = [
    "clarion_dev.testing.telegram",
    "clarion_dev.testing.smtp",
    "clarion_dev.testing.push",
    "clarion_dev.testing.cluster",
    "clarion_dev.testing.operator",
    "clarion_dev.testing.servers",
    "clarion_dev.testing.browser",
    "clarion_dev.testing.node",
]

IN_CI = os.environ.get("CI", "").lower() == "true"
BASE_DSN = os.environ.get("CLARION_DATABASE_URL", "postgresql://clarion@127.0.0.1:55432/postgres")
REDIS_URL = os.environ.get("CLARION_TEST_REDIS_URL", "redis://127.0.0.1:56379/15")


# The tiers run in this order: the fast ones first, so that a broken unit shows at once; the tests that
# need the Kubernetes binaries or the node's images last (marked `helm`, and the cluster, e2e and node
# tiers), so that a cold `make test`, which builds those in the background (scripts/bootstrap.sh), has
# meanwhile built them.
TIER_ORDER = ("unit", "integration", "cluster", "e2e", "node")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def position(item: pytest.Item) -> float:
        tier = next((n for n, name in enumerate(TIER_ORDER) if item.get_closest_marker(name)), None)
        if tier is None:  # `-m unit` and the like would leave it out unseen
            raise pytest.UsageError(f"{item.nodeid} has no tier marker (one of {', '.join(TIER_ORDER)})")
        if item.get_closest_marker("helm"):
            return max(tier, TIER_ORDER.index("cluster") - 0.5)
        return tier

    items.sort(key=position)  # stable: each tier keeps its files' order


def require_server(what: str, error: BaseException) -> None:
    """Fail loudly in CI, skip with the reason elsewhere."""
    message = f"{what} is not reachable ({error!r}); start it with `bash scripts/local-services.sh start`"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _dsn_for(database: str) -> str:
    head, _, _ = BASE_DSN.rpartition("/")
    return f"{head}/{database}"


@pytest.fixture(scope="session")
async def template_database() -> AsyncIterator[str]:
    """A migrated database that each test's database is copied from."""
    try:
        admin = await asyncpg.connect(BASE_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        require_server("Postgres", exc)
        raise
    name = f"clarion_tmpl_{os.getpid()}"
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(_dsn_for(name))
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    try:
        yield name
    finally:
        # A fresh connection: one held idle for the whole session may have been closed by then.
        admin = await asyncpg.connect(BASE_DSN, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def database_url(template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test, dropped afterwards."""
    admin = await asyncpg.connect(BASE_DSN)
    name = f"clarion_t_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    try:
        yield _dsn_for(name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    from clarion.db import create_pool

    pool = await create_pool(database_url, min_size=1, max_size=20)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A Redis database emptied before and after the test."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, aioredis.ConnectionError) as exc:
        await client.aclose()
        require_server("Redis", exc)
        raise
    await client.flushdb()
    try:
        yield REDIS_URL
    finally:
        await client.flushdb()
        await client.aclose()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
