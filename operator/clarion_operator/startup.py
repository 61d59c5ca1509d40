"""Operator-wide setup: kopf settings, shared clients in `memo`, liveness probes, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import kopf
from clarion.db import apply_migrations, create_pool
from clarion.metrics import serve_metrics
from clarion.redis import create_redis

from clarion_operator import tenancy
from clarion_operator.context import Context, context
from clarion_operator.k8s import Kube, load_client
from clarion_operator.settings import OperatorSettings

FINALIZER = "clarion.io/finalizer"
ANNOTATION_PREFIX = "clarion.io"
WATCHES_PER_NAMESPACE = 8
"""Connections kept free for kopf's watch streams, per watched namespace (it watches four kinds)."""


class QuietTimers(logging.Filter):
    """Drops kopf's "Timer '…' succeeded." lines: the channel and group timers run every few seconds per
    object, so at INFO they would be most of the log. Failures and everything else still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        message = record.getMessage()
        return not (message.startswith("Timer '") and message.endswith("' succeeded."))


# Retried every 3 s, not kopf's default 60: in a fresh install the database's name resolves only once
# its pod is ready (a headless Service), and a minute's wait would outlast the liveness probe.
@kopf.on.startup(backoff=3)
async def configure(settings: kopf.OperatorSettings, memo: Any, logger: kopf.Logger,
                    **_: Any) -> None:
    """kopf settings, migrations, pools; `memo.settings` is put there by `main`."""
    config: OperatorSettings = memo.settings
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.posting.level = logging.WARNING
    logging.getLogger("kopf.objects").addFilter(QuietTimers())
    db = await create_pool(config.database_url, min_size=config.db_pool_min, max_size=config.db_pool_max)
    async with db.acquire() as conn:
        applied = await apply_migrations(conn)
    if applied:
        logger.info("applied migrations %s", applied)
    serve_metrics(config.metrics_port)
    memo.ctx = Context(settings=config, db=db, redis=create_redis(config.redis_url), kube=Kube(load_client()),
                       reconciling=asyncio.Semaphore(config.max_concurrent_reconciles))
    await tenancy.prepare_database(memo.ctx, logger)
    memo.tenancy_sweeper = tenancy.start_sweeper(memo.ctx)


@kopf.on.login()
async def login(memo: Any, logger: kopf.Logger, settings: kopf.OperatorSettings,
                **_: Any) -> kopf.AiohttpSession | None:
    """kopf's usual login (through the kubernetes client's config), over a bounded connection pool.

    kopf's own session opens a new TLS connection for every concurrent request (about 400 at once
    when 1,000 campaigns arrive), which costs memory here and CPU in the API server; requests
    beyond the bound wait for a free keep-alive connection instead (docs/operator.md, "Scale").
    """
    config: OperatorSettings = memo.settings
    info = kopf.login_via_client(logger=logger, settings=settings)
    if info is None:
        return None
    limit = config.kube_api_connections + WATCHES_PER_NAMESPACE * max(1, len(memo.namespaces))
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(), proxy=info.proxy_url, trust_env=info.trust_env)
    return kopf.AiohttpSession(aiohttp_session=session, server=info.server, priority=info.priority,
                               default_namespace=info.default_namespace, expiration=info.expiration)


@kopf.on.probe(id="postgres")
async def postgres_alive(memo: Any, **_: Any) -> bool:
    return bool(await context(memo).db.fetchval("SELECT true"))


@kopf.on.probe(id="redis")
async def redis_alive(memo: Any, **_: Any) -> bool:
    return bool(await context(memo).redis.ping())


@kopf.on.cleanup()
async def close(memo: Any, **_: Any) -> None:
    ctx: Context | None = memo.get("ctx")
    if ctx is None:
        return
    sweeper: asyncio.Task[None] | None = memo.get("tenancy_sweeper")
    if sweeper is not None:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
    await ctx.db.close()
    await ctx.redis.aclose()
    ctx.kube.close()
