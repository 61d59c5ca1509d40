"""What a NotificationRoute's status should say: a pure function of its spec and the channel rows it names.

The route is Ready when every channel it names exists and is Ready, every template it names (its
recipients' and its footer) is one of its own that compiles, or one of that channel's that compiles, and
its callback's Secret key can be read. The first problem found, in the spec's order, is Ready's reason:
ChannelNotFound, ChannelNotReady, TemplateNotFound, TemplateInvalid, SecretNotFound, SecretKeyNotFound;
the message lists every problem. A route that is not Ready is still
stored and used: `POST /api/v1/events` skips the channels it cannot use (no_reachable_channel) and
refuses an event whose template does not render.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from clarion.db.channels import ChannelRecord
from clarion.models import Condition, ConditionType, RouteReason, merge_conditions
from clarion.models.route import NotificationRouteSpec, NotificationRouteStatus
from clarion.templates import template_problem


def _template_problem(spec: NotificationRouteSpec, name: str, channel: ChannelRecord,
                      channel_name: str) -> tuple[RouteReason, str] | None:
    own = spec.template(name)
    if own is not None:
        why = template_problem(own)
        return None if why is None else (RouteReason.TEMPLATE_INVALID, f"template {name}: {why}")
    stored = channel.templates.get(name)
    if stored is None:
        return RouteReason.TEMPLATE_NOT_FOUND, (f"template {name} is neither in spec.templates nor in "
                                                f"channel {channel_name}")
    if stored.error is not None:
        return RouteReason.TEMPLATE_INVALID, f"template {name} of channel {channel_name}: {stored.error}"
    return None


def route_problems(spec: NotificationRouteSpec, channels: Mapping[str, ChannelRecord | None],
                   callback_problem: tuple[RouteReason, str] | None = None) -> list[tuple[RouteReason, str]]:
    """Every problem of the route, in spec order; `channels` has each channel the route names (None: no
    such channel); `callback_problem`: why the callback's Secret cannot be read (checked last)."""
    problems: list[tuple[RouteReason, str]] = []
    for template in spec.templates:
        why = template_problem(template)
        if why is not None:
            problems.append((RouteReason.TEMPLATE_INVALID, f"template {template.name}: {why}"))
    for role in spec.recipients:
        for entry in role.channels:
            channel = channels.get(entry.channel_ref)
            where = f"role {role.role}: NotificationChannel {entry.channel_ref}"
            if channel is None:
                problems.append((RouteReason.CHANNEL_NOT_FOUND, f"{where} does not exist"))
                continue
            if not channel.ready:
                problems.append((RouteReason.CHANNEL_NOT_READY, f"{where} is not Ready"))
            for name in (entry.template, spec.footer):
                if name is None or spec.template(name) is not None:
                    continue
                found = _template_problem(spec, name, channel, entry.channel_ref)
                if found is not None:
                    problems.append((found[0], f"role {role.role}: {found[1]}"))
    if callback_problem is not None:
        problems.append((callback_problem[0], f"callback: {callback_problem[1]}"))
    return list(dict.fromkeys(problems))


def ready_condition(problems: list[tuple[RouteReason, str]]) -> Condition:
    if not problems:
        return Condition.of(ConditionType.READY, True, RouteReason.ROUTE_READY,
                            "every channel is Ready and every template compiles")
    return Condition.of(ConditionType.READY, False, problems[0][0], "; ".join(m for _, m in problems))


def route_status(old: NotificationRouteStatus, ready: Condition, *, generation: int | None,
                 now: datetime) -> NotificationRouteStatus:
    """The whole new status."""
    return NotificationRouteStatus(
        conditions=merge_conditions(old.conditions, [ready], generation=generation, now=now),
        observed_generation=generation, ready=ready.is_true)
