"""Who an event notifies, on which channel, with what content: a pure function of the event, the routes
that match it, the channels and what is known of push subscriptions (docs/events.md).

For each recipient, in order:

| the recipient ...                                   | outcome                                    |
|-----------------------------------------------------|--------------------------------------------|
| is the initiator (same role and id)                 | `initiator`, nothing else                  |
| has a role no matching route lists                  | `no_route`                                 |
| has a role listed only by disabled routes           | `route_disabled` (naming a route)          |
| for each enabled route listing the role:            |                                            |
|   can be reached on none of the role's channels     | `no_reachable_channel`                     |
|   is in the route's quiet hours (their time zone)   | a notification scheduled for the end, `quiet_hours` |
|   otherwise                                         | a notification on the first reachable channel |

A channel reaches a recipient when it exists, is Ready, and the event gives the recipient's address for
its type (telegram: telegramChatId, email: email, webpush: a pushSubscriptionId registered for that
channel). Content is rendered at once (route template first, then the channel's), the footer appended,
the card's buttons added; a template that cannot be rendered refuses the whole event (`FanOutProblem`).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from clarion import webpush
from clarion.db.channels import ChannelRecord, StoredTemplate
from clarion.db.events import RouteRow
from clarion.models.event import EventRecipient, EventRequest, SkipReason
from clarion.models.notification import TELEGRAM_TEXT_MAX
from clarion.models.route import RouteChannel, RouteRecipient
from clarion.templates import TemplateProblem, render_stored

#: Callback data of a card's button: `ev:<the event's uuid, hex>:<button index>` (37 bytes, within 64).
CALLBACK_PREFIX = "ev:"


def callback_data(event_uuid: uuid.UUID, button: int) -> str:
    return f"{CALLBACK_PREFIX}{event_uuid.hex}:{button}"


def parse_callback(data: str) -> tuple[uuid.UUID, int] | None:
    """(event uuid, button index) of a card's callback data; None for other data."""
    if not data.startswith(CALLBACK_PREFIX):
        return None
    hex_id, _, index = data[len(CALLBACK_PREFIX):].partition(":")
    try:
        return uuid.UUID(hex=hex_id), int(index)
    except ValueError:
        return None


class FanOutProblem(ValueError):
    """A route's template cannot render for a recipient: `field` names the recipient in the request."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Delivery:
    """A notification to create."""

    index: int  # the recipient's position in the request
    route: str
    channel: ChannelRecord
    address: str
    content: dict[str, Any]
    scheduled_for: datetime | None  # set: held back by quiet hours until then


@dataclass(frozen=True)
class Skip:
    """A recipient (of a route) that gets nothing, and why."""

    index: int
    route: str | None
    reason: SkipReason


@dataclass(frozen=True)
class Plan:
    outcomes: list[Delivery | Skip]
    follow_ups: list[str]  # the event types of the card's buttons (one card's worth), in order
    callback_route: str | None = None  # the card's route, when it has a callback


def _reachable(entry: RouteChannel, recipient: EventRecipient, channels: Mapping[str, ChannelRecord],
               push_known: Collection[tuple[int, uuid.UUID]]) -> tuple[ChannelRecord, str] | None:
    channel = channels.get(entry.channel_ref)
    if channel is None or not channel.ready:
        return None
    address = recipient.address(channel.type)
    if address is None:
        return None
    if channel.type == "webpush":
        assert recipient.push_subscription_id is not None
        if (channel.id, recipient.push_subscription_id) not in push_known:
            return None
    return channel, address


def _stored(route: RouteRow, channel: ChannelRecord, name: str) -> tuple[StoredTemplate, str]:
    own = route.spec.template(name)
    if own is not None:  # compiled (and checked) once per revision by render_stored's cache
        return StoredTemplate.of(own, None), f"of route {route.name}"
    stored = channel.templates.get(name)
    if stored is None:
        raise TemplateProblem("name", f"neither route {route.name} nor channel {channel.key} has a template "
                                      f"{name!r}")
    return stored, f"of channel {channel.key}"


def render(route: RouteRow, role: RouteRecipient, entry: RouteChannel, channel: ChannelRecord,
           language: str | None, variables: Mapping[str, object], event_uuid: uuid.UUID) -> dict[str, Any]:
    """The outbox content of the entry's template on `channel`, with the route's footer and the role's
    buttons; raises TemplateProblem."""
    stored, owner = _stored(route, channel, entry.template)
    content = render_stored(stored, channel.type, owner, language, variables)
    if route.spec.footer is not None:
        footer_stored, footer_owner = _stored(route, channel, route.spec.footer)
        footer = render_stored(footer_stored, channel.type, footer_owner, language, variables)["text"]
        content["text"] = f"{content['text']}\n\n{footer}"
        if channel.type == "telegram" and len(content["text"]) > TELEGRAM_TEXT_MAX:
            raise TemplateProblem("variables", "the message with its footer is longer than "
                                               f"{TELEGRAM_TEXT_MAX} characters")
    if channel.type == "webpush":
        pushed = webpush.notification_content(content["text"], content.get("subject"))
        problem = webpush.payload_problem(pushed)
        if problem is not None:
            raise TemplateProblem("variables", problem)
        return {**pushed, "template": content["template"], "language": content["language"]}
    if role.buttons and channel.type == "telegram":
        row = [{"text": b.label(content["language"]), "callbackData": callback_data(event_uuid, i)}
               for i, b in enumerate(role.buttons)]
        content["buttons"] = [*content.get("buttons", []), row]
    return content


def plan(event: EventRequest, routes: Sequence[RouteRow], channels: Mapping[str, ChannelRecord],
         push_known: Collection[tuple[int, uuid.UUID]], now: datetime, event_uuid: uuid.UUID) -> Plan:
    """The outcome of each recipient (of each route that lists its role); raises FanOutProblem."""
    variables: dict[str, object] = {**event.data, "eventId": event.id, "eventType": event.type}
    outcomes: list[Delivery | Skip] = []
    follow_ups: list[str] = []
    callback_route: str | None = None
    for index, recipient in enumerate(event.recipients):
        if (recipient.role, recipient.id) == (event.initiator.role, event.initiator.id):
            outcomes.append(Skip(index, None, "initiator"))
            continue
        listing = [(route, role) for route in routes if (role := route.spec.recipient(recipient.role))]
        enabled = [(route, role) for route, role in listing if route.spec.enabled]
        if not enabled:
            outcomes.append(Skip(index, listing[0][0].name if listing else None,
                                 "route_disabled" if listing else "no_route"))
            continue
        for route, role in enabled:
            found = next(((entry, hit) for entry in role.channels
                          if (hit := _reachable(entry, recipient, channels, push_known))), None)
            if found is None:
                outcomes.append(Skip(index, route.name, "no_reachable_channel"))
                continue
            entry, (channel, address) = found
            try:
                content = render(route, role, entry, channel, recipient.language, variables, event_uuid)
            except TemplateProblem as problem:
                raise FanOutProblem(f"recipients[{index}]", f"route {route.name}, template {entry.template}: "
                                                            f"{problem.message}") from problem
            if content.get("buttons") and role.buttons and not follow_ups:
                follow_ups = [b.event_type for b in role.buttons]
                callback_route = route.name if route.spec.callback is not None else None
            quiet = route.spec.quiet_hours
            until = None if quiet is None else quiet.quiet_until(now, ZoneInfo(recipient.time_zone or "UTC"))
            outcomes.append(Delivery(index, route.name, channel, address, content, until))
    return Plan(outcomes, follow_ups, callback_route)
