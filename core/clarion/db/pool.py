"""asyncpg pool factory."""

from __future__ import annotations

import json
from typing import TypeAlias

import asyncpg
from pydantic import SecretStr

#: What the query modules take: a pool (each call on a connection of its own) or one connection (a
#: transaction the caller holds, or a pooled connection it acquired).
Db: TypeAlias = asyncpg.Pool | asyncpg.Connection


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: SecretStr | str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections decode json/jsonb columns to Python objects."""
    raw = dsn.get_secret_value() if isinstance(dsn, SecretStr) else dsn
    pool = await asyncpg.create_pool(raw, min_size=min_size, max_size=max_size, init=_init_connection)
    assert pool is not None
    return pool
