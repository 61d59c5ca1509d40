"""Web push subscriptions through the API (docs/notifications.md, "Web push"):
`POST /api/v1/push-subscriptions` and `DELETE /api/v1/push-subscriptions/{id}`.

A browser's subscription (PushSubscription.toJSON()) is registered for one recipient of a webpush
channel; its id is what a web push notification's recipient names. Refusals, in order: 401/429 (the
key), 422 (the body: an https endpoint, p256dh a P-256 point, auth 16 bytes, all base64url), 403 (the
key may not use the channel), 422 (no such channel, or not a webpush one), 503 (Postgres away). Nothing
is stored on a refusal. The same endpoint again on the channel updates its row (200, same id): a browser
re-subscribing, or moving to another recipient, never leaves two rows.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from clarion.db import push_subscriptions as subs
from clarion.logging import get_logger
from clarion.metrics import counter
from clarion.models.notification import ErrorAnswer
from clarion.models.push import PushSubscriptionRequest, PushSubscriptionView
from fastapi import APIRouter, Body, FastAPI, Path, Request
from fastapi.responses import JSONResponse, Response

from clarion_webhook.api import Caller, _state, channel_for
from clarion_webhook.api_keys import authorize
from clarion_webhook.errors import DATABASE_ERRORS, Refused

log = get_logger("clarion.webhook.push_subscriptions")

SUBSCRIPTIONS = counter("clarion_api_push_subscriptions_total",
                        "Push subscription requests answered by the public API, by action and result.",
                        ["action", "result"])
PATH = "/push-subscriptions"

router = APIRouter()
#: The request example of the OpenAPI document (RFC 8291's example browser keys).
EXAMPLES = {"browser": {"summary": "A browser's PushSubscription.toJSON()", "value": {
    "channel": "shop/push", "recipient": "client-42", "subscription": {
        "endpoint": "https://push.example.net/wpush/v2/gAAAAABh", "expirationTime": None,
        "keys": {"p256dh": "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-"
                           "AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
                 "auth": "BTBZMqHH6r4Tts7J_aSIgg"}}}}}


def _unavailable() -> Refused:
    return Refused(503, "unavailable", "push subscriptions cannot be stored right now; try again",
                   headers={"Retry-After": "1"})


def _view(row: subs.Subscription, channel: str) -> PushSubscriptionView:
    return PushSubscriptionView(id=str(row.id), channel=channel, recipient=row.recipient,
                                endpoint=row.endpoint, expires_at=row.expires_at, created_at=row.created_at,
                                last_sent_at=row.last_sent_at)


@router.post(PATH, status_code=201, response_model=PushSubscriptionView,
             responses={200: {"model": PushSubscriptionView,
                              "description": "The endpoint was registered on the channel already: updated."},
                        201: {"description": "Registered.",
                              "headers": {"Location": {"schema": {"type": "string"}}}},
                        400: {"model": ErrorAnswer, "description": "The body is not UTF-8 JSON."},
                        403: {"model": ErrorAnswer}, 413: {"model": ErrorAnswer}, 415: {"model": ErrorAnswer},
                        422: {"model": ErrorAnswer}, 503: {"model": ErrorAnswer}})
async def register_push_subscription(
    request: Request, body: Annotated[PushSubscriptionRequest, Body(openapi_examples=EXAMPLES)],
    caller: Caller,
) -> JSONResponse:
    """Register a browser's push subscription for a recipient on a webpush channel; the answer's id is
    the recipient of web push notifications to that browser."""
    try:
        return await _register(request, body, caller)
    except Refused as refusal:
        SUBSCRIPTIONS.labels("register", refusal.code).inc()
        raise


async def _register(request: Request, body: PushSubscriptionRequest, caller: Caller) -> JSONResponse:
    state = _state(request)
    channel = await channel_for(state, caller, body)
    if channel.type != "webpush":
        raise Refused(422, "invalid_request", f"channel {body.channel} is a {channel.type} channel; push "
                                              "subscriptions are for webpush channels", field="channel")
    sub = body.subscription
    try:
        async with state.db.acquire() as conn:
            row, created = await subs.register(
                conn, channel_id=channel.id, recipient=body.recipient, endpoint=sub.endpoint,
                p256dh=sub.keys.p256dh, auth=sub.keys.auth, expires_at=sub.expires_at)
    except DATABASE_ERRORS as exc:
        raise _unavailable() from exc
    result = "created" if created else "updated"
    SUBSCRIPTIONS.labels("register", result).inc()
    log.info("push_subscription_registered", subscription=str(row.id), channel=channel.key,
             api_key=caller.key_id, result=result)
    view = _view(row, body.channel).model_dump(mode="json", by_alias=True)
    return JSONResponse(view, status_code=201 if created else 200,
                        headers={"Location": f"/api/v1{PATH}/{row.id}"})


@router.delete(PATH + "/{subscription_id}", status_code=204,
               responses={403: {"model": ErrorAnswer}, 404: {"model": ErrorAnswer},
                          503: {"model": ErrorAnswer}})
async def delete_push_subscription(
    request: Request, caller: Caller,
    subscription_id: Annotated[uuid.UUID, Path(description="The id `POST` answered with.")],
) -> Response:
    """Remove a subscription (the browser unsubscribed); web push notifications to it are then blocked."""
    state = _state(request)
    try:
        async with state.db.acquire() as conn:
            found = await subs.find(conn, subscription_id)
            if found is None or found[1] != caller.namespace:
                SUBSCRIPTIONS.labels("delete", "not_found").inc()
                raise Refused(404, "not_found", f"no push subscription {subscription_id}",
                              field="subscription_id")
            row, namespace, name = found
            authorize(caller, namespace, name)
            await subs.delete(conn, row.channel_id, row.id)
    except DATABASE_ERRORS as exc:
        raise _unavailable() from exc
    SUBSCRIPTIONS.labels("delete", "deleted").inc()
    log.info("push_subscription_deleted", subscription=str(subscription_id), api_key=caller.key_id)
    return Response(status_code=204)


def add_push_subscriptions_api(api: FastAPI) -> None:
    """`POST /push-subscriptions` and `DELETE /push-subscriptions/{id}` on the `/api/v1` app."""
    api.include_router(router)
