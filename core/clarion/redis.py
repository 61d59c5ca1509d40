"""Redis client factory."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from pydantic import SecretStr


def create_redis(url: SecretStr | str, *, max_connections: int = 64, **options: Any) -> aioredis.Redis:
    """An asyncio Redis client whose replies are bytes (stream payloads are JSON bytes).

    `options` go to `redis.asyncio.Redis.from_url` (e.g. `socket_timeout`).
    """
    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    return aioredis.Redis.from_url(raw, max_connections=max_connections, health_check_interval=30, **options)
