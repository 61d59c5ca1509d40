"""Redis client factory."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from pydantic import SecretStr

#: How long a caller waits for a free pooled connection before the call fails.
POOL_WAIT_SECONDS = 20.0


def create_redis(url: SecretStr | str, *, max_connections: int = 64,
                 pool_wait_seconds: float = POOL_WAIT_SECONDS, **options: Any) -> aioredis.Redis:
    """An asyncio Redis client whose replies are bytes (stream payloads are JSON bytes).

    Its pool holds at most `max_connections`; a caller beyond them waits for one to be free (up to
    `pool_wait_seconds`) instead of failing at once, as redis-py's default pool does ("Too many
    connections": a burst of 1,000 API requests would get 500s). `options` go to the pool
    (e.g. `socket_timeout`).
    """
    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    pool = aioredis.BlockingConnectionPool.from_url(raw, max_connections=max_connections,
                                                    timeout=pool_wait_seconds, health_check_interval=30,
                                                    **options)
    return aioredis.Redis(connection_pool=pool)
