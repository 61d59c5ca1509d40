"""What every handler shares, kept in kopf's `memo`: settings, pools, the API client.

kopf gives each object its own shallow copy of the operator's memo: `memo.ctx` is the one Context,
while what a handler stores in `memo` itself (its lock, the last rate sample) belongs to one object.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from clarion_operator.k8s import Kube
from clarion_operator.settings import OperatorSettings


@dataclass
class Context:
    """Settings, the Postgres pool, Redis, the Kubernetes API client."""

    settings: OperatorSettings
    db: asyncpg.Pool
    redis: aioredis.Redis
    kube: Kube
    reconciling: asyncio.Semaphore
    """Bounds the passes running at once (campaigns and channels): memory and API load."""
    runtime_secret_namespaces: set[str] = field(default_factory=set)
    """Namespaces whose runtime Secret this process has applied (campaigns skip it there; channel
    checks apply it every time, so a deleted one comes back with the next check)."""

    def runtime_urls(self) -> tuple[str, str]:
        """Where pods reach Postgres and Redis; `tenancy` puts the namespace's credentials into them."""
        database = self.settings.runtime_database_url or self.settings.database_url.get_secret_value()
        redis_url = self.settings.runtime_redis_url or self.settings.redis_url.get_secret_value()
        return database, redis_url


def context(memo: Any) -> Context:
    """The operator's Context from a handler's `memo`."""
    ctx: Context = memo.ctx
    return ctx


def object_lock(memo: Any) -> asyncio.Lock:
    """The lock of the object whose memo this is: its change handlers and timer never overlap."""
    lock: asyncio.Lock | None = memo.get("lock")
    if lock is None:
        lock = memo["lock"] = asyncio.Lock()
    return lock
