"""Fixtures that give a test module a Postgres and a Redis of its own, to stop, kill and restart
without disturbing other tests. A module takes them by naming both at its top level:

    from . import private_servers
    database_url = private_servers.database_url
    redis_url = private_servers.redis_url
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from clarion.db import apply_migrations
from clarion_dev.testing.servers import PrivatePostgres, PrivateRedis


@pytest.fixture
async def database_url(private_postgres: PrivatePostgres) -> AsyncIterator[str]:
    """The test's own migrated Postgres (replaces the shared server's database for the module)."""
    dsn = private_postgres.dsn()
    conn = await asyncpg.connect(dsn)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    yield dsn


@pytest.fixture
def redis_url(private_redis: PrivateRedis) -> str:
    """The test's own Redis, without persistence: a restart loses everything in it."""
    return private_redis.url()
