"""One-off posts in managed groups through the API (ADR 0010, docs/notifications.md "Group posts"):
`POST /api/v1/groups/{name}/posts`.

The group is a ManagedGroup of the key's namespace; the post is a notification on the lane
`group-posts` of the group's channel (`clarion.db.group_posts.queue_post`), so it is sent by the
channel's group-posts workers within the group's 20 messages a minute, and read back like any
notification (`GET /api/v1/notifications/{id}`). Refusals, in order: 401/429 (the key), 422 (the
body), 404 (no such live group in the namespace), 403 (the key may not use the group's channel), 409
(that channel is not ready), 503 (Postgres away: unlike `POST /api/v1/notifications` there is no
inbox to fall back on). Nothing is stored on a refusal. An Idempotency-Key works as for
`POST /api/v1/notifications`: its record is written in the transaction that stores the post.
"""

from __future__ import annotations

from typing import Annotated, Any

from clarion.db import group_posts, groups
from clarion.db import notifications as q
from clarion.db.api_keys import ApiKeyRow
from clarion.logging import get_logger
from clarion.metrics import counter
from clarion.models.notification import ErrorAnswer, GroupPostRequest, NotificationView
from fastapi import APIRouter, FastAPI, Header, Path, Request
from fastapi.responses import JSONResponse

from clarion_webhook.api import (
    Caller,
    _location,
    _replayed,
    _request_digest,
    _state,
    _trace_id,
    _view,
)
from clarion_webhook.api_keys import authorize
from clarion_webhook.errors import DATABASE_ERRORS, Refused
from clarion_webhook.inbox import enqueue

log = get_logger("clarion.webhook.group_posts")

POSTS = counter("clarion_api_group_posts_total", "POST /api/v1/groups/{name}/posts answered, by result.",
                ["result"])


def _unavailable() -> Refused:
    return Refused(503, "unavailable", "the post cannot be stored right now; try again",
                   headers={"Retry-After": "1"})


router = APIRouter()


@router.post("/groups/{name}/posts", status_code=202, response_model=NotificationView,
             responses={202: {"description": "Accepted: the post is stored, and queued unless scheduled.",
                              "headers": {"Location": {"schema": {"type": "string"}},
                                          "Idempotent-Replay": {"schema": {"type": "string"}}}},
                        400: {"model": ErrorAnswer, "description": "The body is not UTF-8 JSON."},
                        403: {"model": ErrorAnswer}, 404: {"model": ErrorAnswer},
                        409: {"model": ErrorAnswer}, 413: {"model": ErrorAnswer}, 415: {"model": ErrorAnswer},
                        422: {"model": ErrorAnswer}, 503: {"model": ErrorAnswer}})
async def create_group_post(
    request: Request,
    name: Annotated[str, Path(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$",
                              description="The ManagedGroup's name (in the key's namespace).")],
    body: GroupPostRequest,
    caller: Caller,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1,
                                                  max_length=255)] = None,
    traceparent: Annotated[str | None, Header(max_length=256)] = None,
) -> JSONResponse:
    """Post once in a managed group of your namespace, now or at `scheduledFor`, optionally pinned.
    The answer is the post's notification (lane group-posts); follow it at Location."""
    try:
        return await _accept(request, name, body, caller, idempotency_key, traceparent)
    except Refused as refusal:
        POSTS.labels(refusal.code).inc()
        raise


async def _accept(request: Request, name: str, body: GroupPostRequest, caller: ApiKeyRow,
                  idempotency_key: str | None, traceparent: str | None) -> JSONResponse:
    state = _state(request)
    namespace = caller.namespace
    try:
        async with state.db.acquire() as conn:
            group = await groups.get_group_by_name(conn, namespace, name)
        channel = None if group is None else await state.channels.get_by_id(group.channel_id)
    except DATABASE_ERRORS as exc:
        raise _unavailable() from exc
    if group is None:
        raise Refused(404, "not_found", f"no managed group {namespace}/{name}", field="name")
    channel_name = group.spec.channel_ref.name
    authorize(caller, namespace, channel_name)
    if channel is None or not channel.ready:
        raise Refused(409, "channel_not_ready",
                      f"the group's channel {namespace}/{channel_name} is not ready")
    idempotency = None
    if idempotency_key is not None:
        idempotency = q.Idempotency(idempotency_key, _request_digest(request.url.path, await request.body()))
    try:
        async with state.db.acquire() as conn, conn.transaction():
            if idempotency is not None:
                existing = await q.take_idempotency_key(conn, caller.key_id, idempotency)
                if existing is not None:
                    return _replayed(existing, idempotency)
            row = await group_posts.queue_post(
                conn, group, name=None, due_at=body.scheduled_for, text=body.text, parse_mode=body.parse_mode,
                pin=body.pin, trace_id=_trace_id(traceparent), api_key_id=caller.key_id)
            assert row is not None  # a one-off post is never an occurrence stored before
            view: dict[str, Any] = _view(row).model_dump(mode="json", by_alias=True)
            if idempotency is not None:
                await q.remember_answer(conn, caller.key_id, idempotency.key, 202, view, _location(row.id))
    except DATABASE_ERRORS as exc:
        raise _unavailable() from exc
    if row.status == "queued":
        await enqueue(state.redis, row)
    POSTS.labels("accepted").inc()
    log.info("group_post_accepted", notification_id=str(row.id), group=f"{namespace}/{name}",
             channel=row.channel_key, api_key=caller.key_id, trace_id=row.trace_id, pin=body.pin)
    return JSONResponse(view, status_code=202, headers={"Location": _location(row.id)})


def add_group_posts_api(api: FastAPI) -> None:
    """`POST /groups/{name}/posts` on the `/api/v1` app."""
    api.include_router(router)
