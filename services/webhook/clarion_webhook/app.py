"""The webhook's ASGI application: `/tg/webhook/{channel}`, the public API under `/api/v1`
(`clarion_webhook.api`), the support Mini App under `/app/` (`clarion_webhook.support`), `/healthz`,
`/readyz`, `/metrics`.

The Telegram route is a plain ASGI callable that the app calls before its middleware stack and router
(the hot path); it parses only what it needs (`update_id` and the chat) and leaves the rest of the
update as the bytes Telegram sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from clarion.db import create_pool
from clarion.logging import get_logger
from clarion.metrics import counter, histogram
from clarion.ratelimit import SharedRateLimit
from clarion.redis import create_redis
from clarion.streams import (
    DEDUP_TTL_SECONDS,
    update_dedup_key,
    update_envelope_fields,
    update_partition,
    updates_stream,
)
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic_core import from_json
from starlette.exceptions import HTTPException

from clarion_webhook.api import API_PREFIX, ApiState, BodyGuard, create_api, http_error
from clarion_webhook.api_keys import ApiKeyGuard, ApiKeyStore, ApiKeyUsage, KeyUseCounter
from clarion_webhook.batcher import AcceptBatcher
from clarion_webhook.bulk import BODY_RULES, BulkExpander
from clarion_webhook.callbacks import CallbackDeliverer
from clarion_webhook.channels import ChannelCache
from clarion_webhook.inbox import Inbox, InboxDrainer
from clarion_webhook.ingest import StreamWriter, update_chat_id
from clarion_webhook.settings import WebhookSettings
from clarion_webhook.support import MiniAppState, create_miniapp, mount_miniapp

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

WEBHOOK_PREFIX = "/tg/webhook/"
SECRET_HEADER = b"x-telegram-bot-api-secret-token"
RESULTS = ("accepted", "duplicate", "unauthorized", "too_large", "malformed", "unavailable",
           "unknown_channel")

UPDATES_RECEIVED = counter("clarion_webhook_updates_received_total",
                           "Telegram updates received by the webhook, by channel and outcome.",
                           ["channel", "result"])
INGEST_SECONDS = histogram("clarion_webhook_ingest_seconds",
                           "Time from request start to answer for Telegram updates.", ["result"])

log = get_logger("clarion.webhook")


class _Malformed(ValueError):
    pass


#: Telegram's update ids are positive 32-bit numbers; anything past a signed 64-bit one is not an update.
MAX_UPDATE_ID = 2**63 - 1
#: Deepest nesting of objects and arrays accepted (the update itself is level 1). Telegram's updates
#: stay under ten levels; the bot's reader (pydantic-core) refuses past 200, counting the envelope.
MAX_DEPTH = 64


def parse_update(body: bytes) -> tuple[int, dict[str, Any]]:
    """(update_id, update) of a body that is one strict-JSON object with an integer `update_id`.

    Whatever this accepts, the bot can read back (`UpdateEnvelope.from_fields`): it is parsed with the
    same parser (pydantic-core's), which refuses, as a ValueError, what Python's `json` would crash on
    or let through: deep nesting (`json` raises RecursionError), numbers past ~4,300 digits, lone
    surrogates, invalid UTF-8, a byte order mark, NaN and Infinity. Nesting is bounded by MAX_DEPTH.
    """
    try:
        update = from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        raise _Malformed(f"body is not UTF-8 JSON: {exc}") from exc
    if not isinstance(update, dict):
        raise _Malformed("body is not a JSON object")
    update_id = update.get("update_id")
    if not isinstance(update_id, int) or isinstance(update_id, bool) or not 0 <= update_id <= MAX_UPDATE_ID:
        raise _Malformed("update_id is missing or not a non-negative 64-bit integer")
    if _nested_deeper_than(update, MAX_DEPTH):
        raise _Malformed(f"body is nested deeper than {MAX_DEPTH} levels")
    return update_id, update


def _nested_deeper_than(value: dict[str, Any], limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


class TelegramIngress:
    """`POST /tg/webhook/{channel}`: authenticate, bound, check, dedup, enqueue, answer."""

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self.max_body = settings.webhook_max_body_bytes
        self.partitions = settings.update_partitions
        self.channels: ChannelCache | None = None
        self.writer: StreamWriter | None = None
        self._counters: dict[tuple[str, str], Any] = {}
        self._histograms = {result: INGEST_SECONDS.labels(result) for result in RESULTS}

    async def _finish(self, send: Send, started: float, channel: str, result: str, status: int, body: bytes,
                      **context: Any) -> None:
        """Count the outcome, write the request's one (debug) log line, answer."""
        child = self._counters.get((channel, result))
        if child is None:
            child = self._counters[(channel, result)] = UPDATES_RECEIVED.labels(channel, result)
        child.inc()
        self._histograms[result].observe(time.perf_counter() - started)
        log.debug("webhook_request", channel=channel, result=result, status=status, **context)
        await _respond(send, status, body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await _respond(send, 405, b'{"detail":"method not allowed"}', allow=True)
            return
        path: str = scope["path"]
        key = path[len(WEBHOOK_PREFIX):]
        if not key or "/" in key:
            await _respond(send, 404, b'{"detail":"not found"}')
            return
        assert self.channels is not None and self.writer is not None
        try:
            channel = await self.channels.get(key)
        except Exception as exc:  # not in the copy and Postgres unreachable: Telegram retries later
            log.warning("channel_lookup_failed", error=type(exc).__name__)
            await self._finish(send, started, "", "unavailable", 503, b'{"detail":"channels unavailable"}')
            return
        if channel is None or channel.type != "telegram":
            await self._finish(send, started, "", "unknown_channel", 404, b'{"detail":"unknown channel"}')
            return
        token = b""
        content_length = -1
        for name, value in scope["headers"]:
            if name == SECRET_HEADER:
                token = value
            elif name == b"content-length":
                # Past 18 digits it is too large anyway (and int() of 4,301 digits raises).
                if not value.isdigit():
                    content_length = -2
                else:
                    content_length = int(value) if len(value) <= 18 else self.max_body + 1
        expected = channel.webhook_secret_sha256
        if not token or not expected or not hmac.compare_digest(
                hashlib.sha256(token).hexdigest().encode(), expected.lower().encode()):
            await self._finish(send, started, key, "unauthorized", 401, b'{"detail":"wrong secret token"}')
            return
        if content_length > self.max_body:
            await self._finish(send, started, key, "too_large", 413, b'{"detail":"body too large"}')
            return
        try:
            body = await _read_body(receive, self.max_body)
        except _Disconnected:
            return
        if body is None:
            await self._finish(send, started, key, "too_large", 413, b'{"detail":"body too large"}')
            return
        try:
            update_id, update = parse_update(body)
        except _Malformed as exc:
            detail = json.dumps({"detail": str(exc)}).encode()
            await self._finish(send, started, key, "malformed", 400, detail, reason=str(exc))
            return
        chat_id = update_chat_id(update)
        trace_id = os.urandom(8).hex()
        fields = update_envelope_fields(key, update_id, chat_id, time.time(), trace_id, body)
        stream = updates_stream(key, update_partition(chat_id, self.partitions))
        try:
            dedup_key = update_dedup_key(key, update_id)
            stored = await self.writer.ingest(dedup_key, stream, DEDUP_TTL_SECONDS, fields)
        except Exception as exc:  # Redis unreachable or failing: nothing stored, Telegram retries
            log.warning("enqueue_failed", channel=key, update_id=update_id, error=type(exc).__name__)
            await self._finish(send, started, key, "unavailable", 503, b'{"detail":"queue unavailable"}',
                               update_id=update_id)
            return
        await self._finish(send, started, key, "accepted" if stored else "duplicate", 200, b'{"ok":true}',
                           update_id=update_id, stream=stream, trace_id=trace_id)


class _Disconnected(Exception):
    """The client went away before its body arrived."""


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once it grows past `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes, *, allow: bool = False) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if allow:
        headers.append((b"allow", b"POST"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _copy_check(copy: ChannelCache | ApiKeyStore) -> str:
    """A table copy as readiness shows it: ok (in sync), stale <seconds>s (served), not loaded."""
    if copy.in_sync:
        return "ok"
    return f"stale {copy.stale_seconds():.0f}s" if copy.loaded else "not loaded"


class WebhookApp(FastAPI):
    """A FastAPI app that hands `/tg/webhook/*` straight to the Telegram ingress.

    Middleware added to this app does not see those requests; every other path is ordinary FastAPI.
    """

    def __init__(self, ingress: TelegramIngress, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ingress = ingress

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(WEBHOOK_PREFIX):
            await self.ingress(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: WebhookSettings) -> FastAPI:
    """The webhook application; Postgres and Redis clients live for the app's lifespan."""
    ingress = TelegramIngress(settings)
    state: dict[str, Any] = {}
    api = create_api()
    miniapp = create_miniapp(settings.webapp_script_url)
    usage = ApiKeyUsage(replica=settings.pod_name, flush_seconds=settings.api_key_usage_seconds)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # min_size=0: the process starts (and /readyz says why it is not ready) while Postgres is down.
        db = await create_pool(settings.database_url, min_size=0, max_size=min(settings.db_pool_max, 4))
        redis = create_redis(settings.redis_url, socket_timeout=settings.redis_timeout_seconds,
                             socket_connect_timeout=settings.redis_timeout_seconds)
        channels = ChannelCache(db, settings.database_url.get_secret_value(),
                                miss_ttl=settings.channel_cache_seconds,
                                check_seconds=settings.channel_check_seconds,
                                reload_seconds=settings.channel_reload_seconds)
        await channels.start()
        api_keys = ApiKeyStore(db, settings.database_url.get_secret_value(),
                               check_seconds=settings.channel_check_seconds,
                               reload_seconds=settings.channel_reload_seconds)
        await api_keys.start()
        ingress.channels = channels
        ingress.writer = StreamWriter(redis)
        batcher = AcceptBatcher(db, redis, writers=max(1, min(settings.db_pool_max, 4) - 1))
        inbox = Inbox(db, redis, settings)
        drainer = InboxDrainer(inbox)
        await drainer.start()
        api.state.clarion = ApiState(db=db, redis=redis, channels=channels,
                                     guard=ApiKeyGuard(api_keys, SharedRateLimit(redis)), batcher=batcher,
                                     inbox=inbox)
        expander = BulkExpander(db, redis, lease_seconds=settings.bulk_lease_seconds,
                                chunk_rows=settings.bulk_chunk_rows, poll_seconds=settings.bulk_poll_seconds)
        api.state.bulk_expander = expander
        miniapp.state.clarion = MiniAppState(db=db, redis=redis, channels=channels,
                                             max_age=settings.webapp_max_age_seconds)
        expander.start()
        callbacks = CallbackDeliverer(db, poll_seconds=settings.callback_poll_seconds,
                                      timeout_seconds=settings.callback_timeout_seconds,
                                      max_backoff_seconds=settings.callback_max_backoff_seconds)
        callbacks.start()
        state.update(db=db, redis=redis, channels=channels, api_keys=api_keys, inbox=inbox)
        await usage.start(db)
        try:
            yield
        finally:
            await batcher.close()
            await drainer.stop()
            await expander.stop()
            await callbacks.stop()
            await usage.stop()
            await api_keys.stop()
            await channels.stop()
            await redis.aclose()
            await db.close()

    app = WebhookApp(ingress, title="Clarion webhook", lifespan=lifespan, docs_url=None, redoc_url=None,
                     telemetry={"tracing": False, "metrics": False, "logs": False})

    app.mount(API_PREFIX, BodyGuard(KeyUseCounter(api, usage), routes=BODY_RULES))
    mount_miniapp(app, miniapp)
    app.add_exception_handler(HTTPException, http_error)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready when Redis answers and the channel copy is loaded; degraded while Postgres is not reached.

        Postgres down does not make the pod unready: every replica would be, at once, and Kubernetes would
        send Telegram's updates nowhere, while each replica can still take them for the channels it has,
        and API notifications into the inbox (`inbox`: its entries, and whether accepts go straight there).
        """
        channels: ChannelCache = state["channels"]
        checks: dict[str, str] = {}
        redis: aioredis.Redis = state["redis"]
        try:
            await asyncio.wait_for(redis.ping(), settings.redis_timeout_seconds)
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = type(exc).__name__
        try:
            await asyncio.wait_for(state["db"].fetchval("SELECT 1"), 2.0)
            checks["postgres"] = "ok"
        except Exception as exc:
            checks["postgres"] = type(exc).__name__
        checks["channels"] = _copy_check(channels)
        checks["api_keys"] = _copy_check(state["api_keys"])
        ready = checks["redis"] == "ok" and channels.loaded
        degraded = any(value != "ok" for value in checks.values())
        inbox: Inbox = state["inbox"]
        body = {"ready": ready, "degraded": degraded, "channels": len(channels), "checks": checks,
                "inbox": {"entries": inbox.depth, "circuit": "open" if inbox.circuit_open else "closed"}}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics of this process."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
