"""NotificationRoute handlers: store the route for the API, check its channels and templates, report
status (docs/events.md).

Every pass reads the callback's Secret (a change to it is seen by the next timer pass), stores the
spec and the callback's signing key in `notification_routes` (the API reads routes from there; a route that is
not Ready is stored too, see `routes_logic`), reads the channel rows it names and writes the status
`routes_logic` builds, with an Event when Ready changes. The timer checks again every
`route_check_seconds`, so a channel becoming Ready makes the route Ready without a spec change. Delete
marks the row deleted (by uid), so the API stops routing by it; events already fanned out stay.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf
from clarion.db import events as rows
from clarion.db.channels import ChannelRecord, get_channel
from clarion.keys import channel_key
from clarion.models import NOTIFICATION_ROUTE, InvalidSpec, NotificationRoute, RouteReason

from clarion_operator.channels import secret_value
from clarion_operator.context import context, object_lock
from clarion_operator.routes_logic import ready_condition, route_problems, route_status
from clarion_operator.settings import OperatorSettings
from clarion_operator.status import announce_conditions, typed, write_status

ROUTES = NOTIFICATION_ROUTE.selector


async def reconcile_route(route: NotificationRoute, body: kopf.Body, memo: Any, patch: kopf.Patch,
                          logger: kopf.Logger) -> None:
    ctx = context(memo)
    secret, callback_problem = None, None
    if route.spec.callback is not None:
        value = await secret_value(ctx, route.namespace, route.spec.callback.secret_ref)
        if isinstance(value, str):
            secret = value.encode()
        else:
            callback_problem = RouteReason(value.reason.value), value.message
    await rows.upsert_route(ctx.db, namespace=route.namespace, name=route.name, uid=route.uid,
                            spec=route.spec, callback_secret=secret)
    names = {entry.channel_ref for role in route.spec.recipients for entry in role.channels}
    channels: dict[str, ChannelRecord | None] = {
        name: await get_channel(ctx.db, channel_key(route.namespace, name)) for name in sorted(names)}
    ready = ready_condition(route_problems(route.spec, channels, callback_problem))
    status = route_status(route.status, ready, generation=route.generation, now=datetime.now(UTC))
    write_status(patch, route.status, status)
    announce_conditions(body, route.status.conditions, [ready])
    logger.info("route %s checked: ready=%s (%s)", route.key, ready.status, ready.reason)


@kopf.on.resume(*ROUTES)
@kopf.on.create(*ROUTES)
@kopf.on.update(*ROUTES)
@typed(NotificationRoute)
async def route_changed(route: NotificationRoute, *, body: kopf.Body, memo: Any, patch: kopf.Patch,
                        logger: kopf.Logger, **_: Any) -> None:
    """Created, edited, or the operator restarted: store and check."""
    async with object_lock(memo):
        await reconcile_route(route, body, memo, patch, logger)


@typed(NotificationRoute)
async def route_tick(route: NotificationRoute, *, body: kopf.Body, memo: Any, patch: kopf.Patch,
                     logger: kopf.Logger, **_: Any) -> None:
    """Every route_check_seconds: the channels' readiness and templates again."""
    async with object_lock(memo):
        await reconcile_route(route, body, memo, patch, logger)


def register(settings: OperatorSettings) -> None:
    """Register the timer, whose interval is a setting (`route_check_seconds`)."""
    kopf.timer(*ROUTES, interval=settings.route_check_seconds,
               initial_delay=settings.route_check_seconds)(route_tick)


@kopf.on.delete(*ROUTES)
async def route_deleted(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Mark the row deleted; a spec that does not parse still names the row by its metadata."""
    try:
        meta = NotificationRoute.parse(body).metadata
    except InvalidSpec as error:
        meta = error.meta
    if await rows.mark_route_deleted(context(memo).db, meta.namespace, meta.name, meta.uid):
        logger.info("route %s/%s deleted: row marked", meta.namespace, meta.name)
