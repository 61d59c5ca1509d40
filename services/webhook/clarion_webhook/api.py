"""The public API, `/api/v1` of the webhook service: notifications in, status out (docs/notifications.md).

A FastAPI application mounted at `/api/v1`, so its OpenAPI 3.1 document is `/api/v1/openapi.json` and
its docs `/api/v1/docs`. Every refusal has one body shape (`ErrorAnswer`): a code, a message and the
field at fault. The accept path:

1. the key (`Authorization: Bearer`, 401), its rate limit (429 + Retry-After, shared by all replicas),
   the channel in the key's scope (403), the body against the channel (422 naming the field);
2. with an `Idempotency-Key`: a Redis marker while the first request is being accepted (a second one
   meanwhile gets 409 + Retry-After), then the key's record in Postgres, in the same transaction as
   the row: the same key with the same body returns the first answer (`Idempotent-Replay: true`), with
   another body 422;
3. the row is committed (the durable record), then its id is put on its lane's stream; if that fails
   the replayer puts it there later. 202 with the id, the status and a Location header. While
   Postgres is away the record goes to the Redis inbox instead (`clarion_webhook.inbox`: 202, status
   `created`), and is drained into Postgres once it is back; both away: 503.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import redis.asyncio as aioredis
from clarion import webpush
from clarion.db import notifications as q
from clarion.db import push_subscriptions
from clarion.db.api_keys import ApiKeyRow
from clarion.db.channels import ChannelRecord
from clarion.keys import channel_key
from clarion.logging import get_logger
from clarion.metrics import counter, histogram
from clarion.models.notification import (
    ChannelRef,
    ErrorAnswer,
    NotificationPage,
    NotificationRequest,
    NotificationView,
)
from clarion.outages import store_unavailable
from clarion.templates import TemplateProblem, request_content
from fastapi import Body, Depends, FastAPI, Header, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from clarion_webhook.api_keys import ApiKeyGuard, authorize
from clarion_webhook.batcher import AcceptBatcher
from clarion_webhook.channels import ChannelCache
from clarion_webhook.errors import Refused, refused_handler
from clarion_webhook.inbox import Inbox
from clarion_webhook.inbox import enqueue as _enqueue

log = get_logger("clarion.webhook.api")

ACCEPTED = counter("clarion_api_notifications_total",
                   "Notification requests answered by the public API, by channel, lane and result.",
                   ["channel", "lane", "result"])
ACCEPT_SECONDS = histogram("clarion_api_accept_seconds", "Time to answer POST /api/v1/notifications.",
                           ["result"])

API_PREFIX = "/api/v1"
#: The API key as the OpenAPI document declares it; `ApiKeyGuard` reads and checks the header itself.
BEARER = HTTPBearer(auto_error=False, scheme_name="apiKey",
                    description="An API key (docs/api-keys.md): `Authorization: Bearer <key>`.")
#: The request examples of the OpenAPI document (the docs page offers them; schemathesis sends them).
REQUEST_EXAMPLES: dict[str, Any] = {
    "telegram": {"summary": "A Telegram message", "value": {
        "channel": "shop/alerts", "recipient": {"chatId": 100000},
        "content": {"text": "Your order *1042* shipped", "parseMode": "MarkdownV2"},
        "reference": "order-1042"}},
    "email": {"summary": "An email", "value": {
        "channel": "shop/mail", "recipient": {"email": "ada@example.org"},
        "content": {"subject": "Your order shipped", "text": "Order 1042 is on its way."},
        "lane": "bulk", "reference": "order-1042"}},
}
MAX_BODY_BYTES = 256 * 1024
IDEMPOTENCY_LOCK_SECONDS = 10
DEFAULT_MAX_ATTEMPTS = 3

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class ApiState:
    """What the API's handlers use; the webhook app's lifespan puts it in `api.state.clarion`."""

    db: asyncpg.Pool
    redis: aioredis.Redis
    channels: ChannelCache
    guard: ApiKeyGuard
    batcher: AcceptBatcher
    inbox: Inbox


def _state(request: Request) -> ApiState:
    state: ApiState = request.app.state.clarion
    return state


async def _caller(request: Request) -> ApiKeyRow:
    """The API key's row (401), within its rate limit (429)."""
    return await _state(request).guard.caller(request)


Caller = Annotated[ApiKeyRow, Depends(_caller)]


def _view(row: q.Row) -> NotificationView:
    namespace, _, name = row.channel_key.partition(".")
    return NotificationView(
        id=str(row.id), channel=f"{namespace}/{name}", lane=row.lane, status=row.status,
        recipient=row.recipient, reference=row.reference, attempts=row.attempts, last_error=row.last_error,
        provider_message_id=row.provider_message_id, trace_id=row.trace_id, scheduled_for=row.scheduled_for,
        created_at=row.created_at, updated_at=row.updated_at, sent_at=row.sent_at)


def _trace_id(traceparent: str | None) -> str:
    """The W3C trace id of `traceparent` when it is well formed, else a new one."""
    if traceparent:
        parts = traceparent.strip().split("-")
        if (len(parts) >= 4 and len(parts[0]) == 2 and len(parts[1]) == 32
                and all(c in "0123456789abcdef" for c in parts[1]) and parts[1] != "0" * 32):
            return parts[1]
    return os.urandom(16).hex()


def _request_digest(path: str, body: bytes) -> str:
    """What an Idempotency-Key is bound to: the route and the body's JSON value (not its spacing)."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"))
    except ValueError:
        canonical = body.decode(errors="replace")
    return hashlib.sha256(f"{path}\n{canonical}".encode()).hexdigest()


def _idempotency_lock(key_id: int, idempotency_key: str) -> str:
    """The Redis marker held while a request with this Idempotency-Key (of this API key) is accepted."""
    return f"api:idempotency:{key_id}:{hashlib.sha256(idempotency_key.encode()).hexdigest()}"


def _location(notification_id: uuid.UUID) -> str:
    return f"{API_PREFIX}/notifications/{notification_id}"


def _cursor(row: q.Row) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, ident = raw.partition("|")
        return datetime.fromisoformat(created), uuid.UUID(ident)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(422, "invalid_cursor", "cursor is not one this API gave out", field="cursor") from exc


@dataclass(frozen=True)
class BodyRule:
    """What POST bodies of a route may be: their media types and their largest size in bytes."""

    media_types: tuple[bytes, ...] = (b"application/json",)
    limit: int = MAX_BODY_BYTES


JSON_BODY = BodyRule()


class BodyGuard:
    """ASGI middleware of the API: a POST body must be of its route's media types (415; JSON unless
    `routes` says otherwise for the route's path) and at most its limit (413); a POST without a body
    (`…/retry`) needs no content type."""

    def __init__(self, app: Any, default: BodyRule = JSON_BODY, routes: dict[str, BodyRule] | None = None,
                 ) -> None:
        self.app, self.default, self.routes = app, default, routes or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        rule = self.routes.get(path.removeprefix(scope.get("root_path", "")), self.default)
        headers = dict(scope["headers"])
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        length = headers.get(b"content-length")
        has_body = b"transfer-encoding" in headers or (length is not None and length != b"0")
        if has_body and media not in rule.media_types:
            wanted = " or ".join(m.decode() for m in rule.media_types)
            await Refused(415, "unsupported_media_type", f"send the body as {wanted}").response()(
                scope, receive, send)
            return
        limit = rule.limit
        if length is not None and (not length.isdigit() or len(length) > 12 or int(length) > limit):
            await Refused(413, "too_large", f"the body is larger than {limit} bytes").response()(
                scope, receive, send)
            return
        # The body is read here, bounded, and handed on whole: a refusal raised while the app reads
        # would reach its error middleware as a 500.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > limit:
                await Refused(413, "too_large", f"the body is larger than {limit} bytes").response()(
                    scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def http_error(_: Request, exc: Exception) -> JSONResponse:
    """Starlette's and FastAPI's own refusals (a body that is not UTF-8, an unknown path or method) in the
    API's one shape. The webhook app registers it too: a path it cannot route to the API (a control
    character in it) is answered there."""
    assert isinstance(exc, HTTPException)
    code = {400: "malformed_body", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code,
                                                                                    "refused")
    return Refused(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {})).response()


async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
    """A body, query or header FastAPI's validation refused: 422 naming the first field at fault."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "header", "path")]
    field = ".".join(loc) or None
    message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
    return Refused(422, "invalid_request", message, field=field).response()


def create_api() -> FastAPI:
    """The `/api/v1` application; its `state.clarion` (an `ApiState`) is set by the webhook's lifespan."""
    api = FastAPI(
        title="Clarion API", version="1.0.0", openapi_url="/openapi.json", docs_url="/docs", redoc_url=None,
        description="Send notifications through Clarion's channels. Authenticate with "
                    "`Authorization: Bearer <API key>` (docs/api-keys.md).",
        dependencies=[Security(BEARER)],
        responses={401: {"model": ErrorAnswer, "description": "Missing, unknown or revoked API key."},
                   429: {"model": ErrorAnswer, "description": "Over the key's rate limit (Retry-After)."}},
    )

    api.add_exception_handler(Refused, refused_handler)

    api.add_exception_handler(HTTPException, http_error)

    api.add_exception_handler(RequestValidationError, invalid_request)

    @api.post("/notifications", status_code=202, response_model=NotificationView,
              responses={202: {"description": "Accepted: stored, and queued unless scheduled.",
                               "headers": {"Location": {"schema": {"type": "string"}},
                                           "Idempotent-Replay": {"schema": {"type": "string"}}}},
                         400: {"model": ErrorAnswer, "description": "The body is not UTF-8 JSON."},
                         403: {"model": ErrorAnswer}, 409: {"model": ErrorAnswer},
                         413: {"model": ErrorAnswer}, 415: {"model": ErrorAnswer},
                         422: {"model": ErrorAnswer}, 503: {"model": ErrorAnswer}})
    async def create_notification(
        request: Request, body: Annotated[NotificationRequest, Body(openapi_examples=REQUEST_EXAMPLES)],
        caller: Caller,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1,
                                                      max_length=255)] = None,
        traceparent: Annotated[str | None, Header(max_length=256)] = None,
    ) -> JSONResponse:
        """Accept one notification. 202 once it is stored in Postgres (or, while Postgres is away, in
        the Redis inbox); see Location for its status."""
        started = time.perf_counter()
        outcome = "error"
        try:
            answer = await accept_one(request, body, caller, idempotency_key, traceparent)
            outcome = "replayed" if "Idempotent-Replay" in answer.headers else "accepted"
            return answer
        except Refused as refusal:
            outcome = refusal.code
            raise
        finally:
            ACCEPT_SECONDS.labels(outcome).observe(time.perf_counter() - started)

    async def accept_one(request: Request, body: NotificationRequest, caller: ApiKeyRow,
                         idempotency_key: str | None, traceparent: str | None) -> JSONResponse:
        state = _state(request)
        channel = await channel_for(state, caller, body)
        key = channel.key
        problem = body.check_for(channel.type)
        if problem is not None:
            field, why = problem
            raise Refused(422, "invalid_request", f"{field}: {why}", field=field)
        try:
            content = request_content(channel, body)
        except TemplateProblem as refusal:
            if idempotency_key is not None:  # accepted before the template changed: the first answer
                earlier = await _earlier_answer(state, caller, idempotency_key, request)
                if earlier is not None:
                    return earlier
            field = f"content.template.{refusal.field}"
            raise Refused(422, "invalid_template", f"{field}: {refusal.message}", field=field) from refusal
        if channel.type == "webpush":
            await _check_push_recipient(state, channel, body, content)
        raw = await request.body()
        idempotency = None
        lock = None
        if idempotency_key is not None:
            idempotency = q.Idempotency(idempotency_key, _request_digest(request.url.path, raw))
            lock = _idempotency_lock(caller.key_id, idempotency_key)
            try:
                taken = await state.redis.set(lock, "1", nx=True, ex=IDEMPOTENCY_LOCK_SECONDS)
            except RedisError:  # no marker: the key's primary key in Postgres still decides
                taken, lock = True, None
            if not taken:
                return await _replay_or_conflict(state, caller, idempotency)
        new = q.NewNotification(
            id=uuid.uuid4(), channel_id=channel.id, lane=body.lane, recipient=body.recipient.address,
            content=content, reference=body.reference, api_key_id=caller.key_id,
            trace_id=_trace_id(traceparent), scheduled_for=body.scheduled_for,
            max_attempts=DEFAULT_MAX_ATTEMPTS)

        def answer(row: q.Row) -> tuple[int, dict[str, Any], str | None]:
            return 202, _view(row).model_dump(mode="json", by_alias=True), _location(row.id)

        async def store() -> tuple[q.Row | None, q.Idempotency | None]:
            if idempotency is None:
                return await state.batcher.accept(new), None
            async with state.db.acquire() as conn:
                return await q.accept(conn, new, idempotency, answer)

        try:
            stored = await state.inbox.accept(new, key, idempotency, answer, store)
        except Refused as refusal:
            ACCEPTED.labels(key, body.lane, refusal.code).inc()
            raise
        finally:
            if lock is not None:
                with contextlib.suppress(RedisError):
                    await state.redis.delete(lock)
        if stored.existing is not None:
            assert idempotency is not None
            return _replayed(stored.existing, idempotency)
        row = stored.row
        assert row is not None
        if row.status == "queued" and idempotency is not None:  # the batcher enqueued its own; an
            # inboxed one is `created`: the drainer enqueues it
            await _enqueue(state.redis, row)
        result = "inboxed" if stored.inboxed else "accepted"
        ACCEPTED.labels(key, body.lane, result).inc()
        log.info("notification_accepted", notification_id=str(row.id), channel=key, lane=row.lane,
                 trace_id=row.trace_id, api_key=caller.key_id, result=result)
        status_code, view, location = answer(row)
        return JSONResponse(view, status_code=status_code, headers={"Location": location or ""})

    @api.get("/notifications/{notification_id}", response_model=NotificationView,
             responses={404: {"model": ErrorAnswer}, 503: {"model": ErrorAnswer}})
    async def get_notification(request: Request, notification_id: uuid.UUID,
                               caller: Caller) -> NotificationView:
        """A notification's status, attempts, times, last error and the provider's message id."""
        row = await _state(request).inbox.get(notification_id, caller.namespace)
        if row is None:
            raise Refused(404, "not_found", f"no notification {notification_id}", field="notification_id")
        return _view(row)

    @api.post("/notifications/{notification_id}/retry", status_code=202, response_model=NotificationView,
              responses={404: {"model": ErrorAnswer}, 409: {"model": ErrorAnswer}})
    async def retry_notification(request: Request, notification_id: uuid.UUID,
                                 caller: Caller) -> JSONResponse:
        """Send a failed notification again, with up to 3 more attempts (audited)."""
        state = _state(request)
        async with state.db.acquire() as conn:
            requeued = await q.requeue_failed(conn, [notification_id], actor=f"api-key:{caller.key_id}",
                                              namespace=caller.namespace)
            row = requeued[0] if requeued else await q.get(conn, notification_id, caller.namespace)
        if row is None:
            raise Refused(404, "not_found", f"no notification {notification_id}", field="notification_id")
        if not requeued:
            raise Refused(409, "not_failed", f"notification {notification_id} is {row.status}: only a failed "
                                             "one can be retried")
        await _enqueue(state.redis, row)
        log.info("notification_retried", notification_id=str(row.id), api_key=caller.key_id)
        return JSONResponse(_view(row).model_dump(mode="json", by_alias=True), status_code=202,
                            headers={"Location": _location(row.id)})

    @api.get("/notifications", response_model=NotificationPage)
    async def list_notifications(
        request: Request,
        caller: Caller,
        reference: Annotated[str, Query(min_length=1, max_length=256, pattern=r"^[^\x00]+$")],
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> NotificationPage:
        """Notifications of your namespace with this reference, newest first."""
        before = _parse_cursor(cursor) if cursor else None
        async with _state(request).db.acquire() as conn:
            rows = await q.list_by_reference(conn, caller.namespace, reference, limit + 1, before)
        page = rows[:limit]
        more = len(rows) > limit
        return NotificationPage(items=[_view(r) for r in page],
                                next_cursor=_cursor(page[-1]) if more else None)

    from clarion_webhook.bulk import add_bulk_api  # the bulk routes build on this module's helpers

    add_bulk_api(api)
    from clarion_webhook.support import add_support_api  # POST /requests (docs/support.md)

    add_support_api(api)
    from clarion_webhook.group_posts import add_group_posts_api  # POST /groups/{name}/posts (ADR 0010)

    add_group_posts_api(api)
    from clarion_webhook.push_subscriptions import add_push_subscriptions_api  # web push (issue 17)

    add_push_subscriptions_api(api)
    from clarion_webhook.events import add_events_api  # POST /events, GET /events (docs/events.md)

    add_events_api(api)
    return api


def _replayed(existing: q.Idempotency, wanted: q.Idempotency) -> JSONResponse:
    if existing.request_sha256 != wanted.request_sha256:
        raise Refused(422, "idempotency_key_reused", "this Idempotency-Key was used with another request",
                      field="Idempotency-Key")
    if existing.status_code is None or existing.response is None:
        raise Refused(409, "in_progress", "a request with this Idempotency-Key is still being accepted",
                      headers={"Retry-After": "1"})
    headers = {"Idempotent-Replay": "true"}
    if existing.location:
        headers["Location"] = existing.location
    return JSONResponse(existing.response, status_code=existing.status_code, headers=headers)


async def channel_for(state: ApiState, caller: ApiKeyRow, request: ChannelRef) -> ChannelRecord:
    """The channel a request names, once the caller's key may use it (403); 422 when it does not exist,
    503 when it is not in the copy and Postgres cannot say."""
    authorize(caller, request.namespace, request.channel_name)
    try:
        channel = await state.channels.get(channel_key(request.namespace, request.channel_name))
    except Exception as exc:
        raise Refused(503, "unavailable", "channels cannot be read right now; try again") from exc
    if channel is None:
        raise Refused(422, "unknown_channel", f"channel {request.channel} does not exist", field="channel")
    return channel


async def _check_push_recipient(state: ApiState, channel: ChannelRecord, body: NotificationRequest,
                                content: dict[str, Any]) -> None:
    """A web push fits one push message and goes to a subscription registered on this channel (422).
    With Postgres away the subscription is not checked: the request is accepted into the inbox, and the
    worker blocks a row whose subscription does not exist."""
    problem = webpush.payload_problem(content)
    if problem is not None:
        raise Refused(422, "invalid_request", f"content: {problem}", field="content")
    subscription = body.recipient.push_subscription_id
    assert subscription is not None  # check_for: a webpush channel's recipient is a subscription
    try:
        known = await push_subscriptions.known(state.db, [(channel.id, subscription)])
    except Exception as exc:
        if store_unavailable(exc):
            return
        raise
    if not known:
        field = "recipient.pushSubscriptionId"
        raise Refused(422, "invalid_request", f"{field}: no push subscription {subscription} on channel "
                                              f"{body.channel} (register it with POST "
                                              "/api/v1/push-subscriptions)", field=field)


async def _earlier_answer(state: ApiState, caller: ApiKeyRow, idempotency_key: str,
                          request: Request) -> JSONResponse | None:
    """The answer an Idempotency-Key already has (in the inbox or Postgres), or None when it has none
    (or Postgres is away and the inbox does not hold it)."""
    existing = await state.inbox.find_idempotency(caller.key_id, idempotency_key)
    if existing is None or existing.status_code is None:
        return None
    wanted = q.Idempotency(idempotency_key, _request_digest(request.url.path, await request.body()))
    return _replayed(existing, wanted)


async def _replay_or_conflict(state: ApiState, caller: ApiKeyRow, wanted: q.Idempotency) -> JSONResponse:
    """Another request holds the key's marker: its stored answer if it has one, else 409."""
    existing = await state.inbox.find_idempotency(caller.key_id, wanted.key)
    return _replayed(existing or q.Idempotency(wanted.key, wanted.request_sha256), wanted)
