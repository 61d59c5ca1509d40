"""Events through the API (docs/events.md): `POST /api/v1/events` fans an event out by the namespace's
NotificationRoutes; `GET /api/v1/events/{id}` and `GET /api/v1/events?reference=` read events back
(a card's follow-ups among them).

The accept path: the key (401/429, as every route), the body (422 naming the field), the routes matching
the event's type and initiator role (from Postgres), the channels they name (the webhook's followed copy)
and the push subscriptions the recipients give; `clarion.fanout.plan` decides and renders every
notification (a template that cannot render: 422, nothing stored), the key must be allowed every channel
used (403). Then one transaction: the event row (keyed by the namespace and the event's id: the same id
again reads the stored answer back, 200 with `Idempotent-Replay: true`), every notification
(`clarion.db.notifications.accept_many`), the answer. After the commit the queued rows go on their
streams (the replayer puts any that fail there later). Postgres away: 503, nothing stored (no inbox).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from clarion.db import events as ev
from clarion.db import notifications as q
from clarion.db import push_subscriptions
from clarion.db.api_keys import ApiKeyRow
from clarion.db.channels import ChannelRecord
from clarion.fanout import Delivery, FanOutProblem, Plan, plan
from clarion.keys import channel_key
from clarion.logging import get_logger
from clarion.metrics import counter
from clarion.models.event import (
    CreatedNotification,
    EventAnswer,
    EventPage,
    EventRequest,
    Person,
    RecipientOutcome,
)
from clarion.models.notification import ErrorAnswer
from clarion.streams import add_tasks
from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse

from clarion_webhook.api import DEFAULT_MAX_ATTEMPTS, ApiState, Caller, _state, _trace_id
from clarion_webhook.api_keys import authorize
from clarion_webhook.errors import DATABASE_ERRORS, Refused

log = get_logger("clarion.webhook.events")

EVENTS = counter("clarion_api_events_total", "POST /api/v1/events answered, by result.", ["result"])
EVENT_NOTIFICATIONS = counter("clarion_api_event_outcomes_total",
                              "Recipients of events, by outcome (notified or the reason they were not).",
                              ["outcome"])

router = APIRouter()


def _unavailable() -> Refused:
    return Refused(503, "unavailable", "the event cannot be stored right now; try again",
                   headers={"Retry-After": "1"})


async def _channels(state: ApiState, namespace: str, names: set[str]) -> dict[str, ChannelRecord]:
    found = {}
    for name in sorted(names):
        record = await state.channels.get(channel_key(namespace, name))
        if record is not None:
            found[name] = record
    return found


def _answer(body: EventRequest, received_at: datetime, decided: Plan,
            rows: dict[int, q.Row]) -> EventAnswer:
    outcomes = []
    for i, outcome in enumerate(decided.outcomes):
        recipient = body.recipients[outcome.index]
        entry = RecipientOutcome(role=recipient.role, id=recipient.id, route=outcome.route)
        if isinstance(outcome, Delivery):
            row = rows[i]
            entry.notification = CreatedNotification(
                id=str(row.id), channel=row.channel_key.replace(".", "/", 1), lane="instant",
                status=row.status)
            if outcome.scheduled_for is not None:
                entry.reason, entry.send_at = "quiet_hours", outcome.scheduled_for
        else:
            entry.reason = outcome.reason
        outcomes.append(entry)
    return EventAnswer(id=body.id, type=body.type, initiator=body.initiator, data=body.data,
                       received_at=received_at, recipients=outcomes)


def stored_answer(row: ev.EventRow) -> EventAnswer:
    """The answer of a stored event: its result's outcomes with the event's own fields."""
    result = row.result or {}
    return EventAnswer(id=row.event_id, type=row.type, reference=row.reference,
                       initiator=Person.model_validate(row.initiator), data=row.data,
                       received_at=row.received_at,
                       recipients=[RecipientOutcome.model_validate(r) for r in result.get("recipients", ())])


@router.post("/events", status_code=202, response_model=EventAnswer,
             responses={200: {"model": EventAnswer, "description": "This event id was received before: "
                                                                   "the first answer (Idempotent-Replay)."},
                        202: {"description": "Fanned out: the notifications are stored, each recipient's "
                                             "outcome listed."},
                        **{code: {"model": ErrorAnswer} for code in (400, 403, 413, 415, 422, 503)}})
async def post_event(request: Request, body: EventRequest, caller: Caller) -> JSONResponse:
    """Notify the event's recipients as your namespace's NotificationRoutes say: each one reached on the
    first channel of their role's list they can be reached on, never the initiator."""
    try:
        return await _accept(request, body, caller)
    except Refused as refusal:
        EVENTS.labels(refusal.code).inc()
        raise


async def _accept(request: Request, body: EventRequest, caller: ApiKeyRow) -> JSONResponse:
    state = _state(request)
    namespace = caller.namespace
    trace_id = _trace_id(request.headers.get("traceparent"))
    try:
        earlier = await ev.get_event(state.db, namespace, body.id)
        if earlier is not None and earlier.result is not None:
            return _replayed(earlier)
        routes = await ev.matching_routes(state.db, namespace, body.type, body.initiator.role)
        names = {entry.channel_ref for route in routes for role in route.spec.recipients
                 for entry in role.channels}
        channels = await _channels(state, namespace, names)
        wanted = [(c.id, r.push_subscription_id) for c in channels.values() if c.type == "webpush"
                  for r in body.recipients if r.push_subscription_id is not None]
        push_known = await push_subscriptions.known(state.db, wanted)
    except DATABASE_ERRORS as exc:
        raise _unavailable() from exc
    event_uuid = uuid.uuid4()
    try:
        decided = plan(body, routes, channels, push_known, datetime.now(UTC), event_uuid)
    except FanOutProblem as problem:
        raise Refused(422, "invalid_template", f"{problem.field}: {problem.message}",
                      field=problem.field) from problem
    deliveries = [(i, o) for i, o in enumerate(decided.outcomes) if isinstance(o, Delivery)]
    for _, delivery in deliveries:
        authorize(caller, namespace, delivery.channel.key.partition(".")[2])
    news = [q.NewNotification(
        id=uuid.uuid4(), channel_id=d.channel.id, lane="instant", recipient=d.address, content=d.content,
        reference=body.reference or body.id, api_key_id=caller.key_id, trace_id=trace_id,
        scheduled_for=d.scheduled_for, max_attempts=DEFAULT_MAX_ATTEMPTS) for _, d in deliveries]
    try:
        async with state.db.acquire() as conn, conn.transaction():
            row, new = await ev.claim_event(
                conn, id=event_uuid, namespace=namespace, event_id=body.id, type=body.type,
                initiator=body.initiator.model_dump(mode="json"), data=dict(body.data),
                api_key_id=caller.key_id)
            if not new:
                if row.result is None:  # claimed by a request that failed to finish: cannot happen in
                    raise _unavailable()  # one transaction, kept as a guard
                return _replayed(row)
            stored = await q.accept_many(conn, news) if news else []
            by_outcome = {i: r for (i, _), r in zip(deliveries, stored, strict=True)}
            answer = _answer(body, row.received_at, decided, by_outcome)
            dumped = answer.model_dump(mode="json", by_alias=True, exclude_none=True)
            await ev.finish_event(conn, event_uuid, {"recipients": dumped["recipients"]}, decided.follow_ups,
                                  decided.callback_route)
    except DATABASE_ERRORS as exc:
        raise _unavailable() from exc
    queued = [r for r in stored if r.status == "queued"]
    if queued:
        try:
            await add_tasks(state.redis, [r.entry() for r in queued])
        except Exception as exc:  # stored: the replayer enqueues them
            log.warning("event_enqueue_failed", event_id=body.id, error=type(exc).__name__)
    for outcome in answer.recipients:
        EVENT_NOTIFICATIONS.labels(outcome.reason or "notified").inc()
    EVENTS.labels("accepted").inc()
    log.info("event_accepted", event_id=body.id, event_type=body.type, namespace=namespace,
             notifications=len(stored), api_key=caller.key_id, trace_id=trace_id)
    return JSONResponse(dumped, status_code=202)


def _replayed(row: ev.EventRow) -> JSONResponse:
    EVENTS.labels("replayed").inc()
    body = stored_answer(row).model_dump(mode="json", by_alias=True, exclude_none=True)
    return JSONResponse(body, status_code=200, headers={"Idempotent-Replay": "true"})


@router.get("/events/{event_id}", response_model=EventAnswer,
            responses={404: {"model": ErrorAnswer}, 503: {"model": ErrorAnswer}})
async def get_event(request: Request, caller: Caller,
                    event_id: Annotated[str, Path(min_length=1, max_length=256)]) -> dict[str, Any]:
    """An event of your namespace and what it did; a follow-up's id is `<event id>:<its type>`."""
    try:
        row = await ev.get_event(_state(request).db, caller.namespace, event_id)
    except DATABASE_ERRORS as exc:
        raise _unavailable() from exc
    if row is None or row.result is None:
        raise Refused(404, "not_found", f"no event {event_id}", field="event_id")
    return stored_answer(row).model_dump(mode="json", by_alias=True, exclude_none=True)


@router.get("/events", response_model=EventPage, responses={503: {"model": ErrorAnswer}})
async def list_events(request: Request, caller: Caller,
                      reference: Annotated[str, Query(min_length=1, max_length=256, pattern=r"^[^\x00]+$")],
                      limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
    """The follow-up events of the event `reference` (a card's button presses), newest first."""
    try:
        rows = await ev.list_by_reference(_state(request).db, caller.namespace, reference, limit)
    except DATABASE_ERRORS as exc:
        raise _unavailable() from exc
    return EventPage(items=[stored_answer(r) for r in rows]).model_dump(mode="json", by_alias=True,
                                                                          exclude_none=True)


def add_events_api(api: FastAPI) -> None:
    """`POST /events`, `GET /events/{id}`, `GET /events?reference=` on the `/api/v1` app."""
    api.include_router(router)
