"""NotificationRoute (`nr`): which recipients of an event are notified, on which channel, with what text
(docs/events.md).

`POST /api/v1/events` fans an event out by the routes of the API key's namespace whose `eventType` and
`initiatorRole` match it: each recipient whose role a route lists (never the initiator) gets one
notification, on the first channel of the role's list they can be reached on, rendered from the
entry's template in their language.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Annotated, Self
from zoneinfo import ZoneInfo

from pydantic import ConfigDict, Field, model_validator

from clarion.models.base import (
    DNS_SUBDOMAIN,
    HTTP_URL,
    CamelModel,
    ResourceStatus,
    SecretKeyRef,
    cel,
    rules,
)
from clarion.models.campaign import ContentLanguage
from clarion.models.channel import MAX_TEMPLATES, TEMPLATE_NAME, ChannelTemplate

#: An event type or a role: a lower-case word with underscores (booking_created, specialist).
EVENT_WORD = r"^[a-z][a-z0-9_]{0,62}$"
#: The initiator role of events nobody in particular started (a timer, the backend itself).
SYSTEM_ROLE = "system"
#: A local time of day, 24-hour `HH:MM`.
CLOCK = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"

EventWord = Annotated[str, Field(min_length=1, max_length=63, pattern=EVENT_WORD)]


class RouteReason(StrEnum):
    """Reasons of a route's conditions (Ready) and Events."""

    ROUTE_READY = "RouteReady"
    CHANNEL_NOT_FOUND = "ChannelNotFound"
    CHANNEL_NOT_READY = "ChannelNotReady"
    TEMPLATE_NOT_FOUND = "TemplateNotFound"
    TEMPLATE_INVALID = "TemplateInvalid"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_NOT_FOUND = "SecretKeyNotFound"


class ButtonLabel(CamelModel):
    """A button's label in one language."""

    language: ContentLanguage = Field(description="Language of the label (ISO 639-1).")
    text: str = Field(min_length=1, max_length=64, description="Label shown on the button.")


class FollowUpButton(CamelModel):
    """An inline button of a Telegram card whose press becomes a follow-up event (docs/events.md)."""

    event_type: EventWord = Field(description="Type of the follow-up event a press records "
                                              "(e.g. booking_confirmed).")
    labels: list[ButtonLabel] = Field(
        min_length=1, max_length=8,
        description="The label per language; the first one is used for a language not listed.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["language"]})

    def label(self, language: str) -> str:
        primary = language.partition("-")[0].lower()
        found = next((lab for lab in self.labels if lab.language == primary), self.labels[0])
        return found.text


class RouteChannel(CamelModel):
    """One channel a role is reached on, and the template its message is rendered from."""

    channel_ref: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
                             description="A NotificationChannel of this namespace.")
    template: str = Field(
        min_length=1, max_length=63, pattern=TEMPLATE_NAME,
        description="A template of this route's spec.templates, else of the channel's spec.templates, by "
                    "name; rendered with the event's data (and eventId, eventType) as variables.")


class RouteRecipient(CamelModel):
    """A role the route notifies: its channels in order of preference."""

    role: EventWord = Field(description="Recipients of the event with this role are notified.")
    channels: list[RouteChannel] = Field(
        min_length=1, max_length=8,
        description="Channels in order of preference: each recipient gets the first one they can be "
                    "reached on (telegram: telegramChatId; email: email; webpush: a registered "
                    "pushSubscriptionId).")
    buttons: list[FollowUpButton] = Field(
        default_factory=list, max_length=4,
        description="Telegram: one row of buttons under the message; a press records a follow-up event.",
        json_schema_extra={"default": []})


class QuietHours(CamelModel):
    """A nightly window, read in the recipient's time zone, in which nothing is sent: a notification
    falling in it is scheduled for its end."""

    model_config = ConfigDict(json_schema_extra=rules(
        cel("self.start != self.end", "start and end must differ", reason="FieldValueInvalid")))

    start: str = Field(min_length=5, max_length=5, pattern=CLOCK, description="Local start, HH:MM.")
    end: str = Field(min_length=5, max_length=5, pattern=CLOCK,
                     description="Local end, HH:MM (earlier than start: the window crosses midnight).")

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.start == self.end:
            raise ValueError("start and end must differ")
        return self

    def quiet_until(self, now: datetime, zone: ZoneInfo) -> datetime | None:
        """The end of the window `now` falls in (aware, UTC), or None when `now` is outside it.

        Local times are taken on the recipient's wall clock: a window 22:00-08:00 is quiet from 22:00
        to 08:00 whatever the UTC offset of either night. An end that does not exist that day (a DST
        gap) is read with the offset before the gap, i.e. as much later on the wall clock as the gap
        is long; an end that occurs twice (the hour repeated in autumn) is its first occurrence.
        """
        local = now.astimezone(zone)
        start, end = time.fromisoformat(self.start), time.fromisoformat(self.end)
        clock = local.time().replace(tzinfo=None)
        if start < end:
            quiet = start <= clock < end
            end_day = local.date()
        else:
            quiet = clock >= start or clock < end
            end_day = local.date() + timedelta(days=1) if clock >= start else local.date()
        if not quiet:
            return None
        moment = datetime.combine(end_day, end, tzinfo=zone)
        return moment.astimezone(ZoneInfo("UTC"))


class RouteCallback(CamelModel):
    """Where the follow-up events of this route's cards are POSTed (docs/events.md, "Callbacks")."""

    url: str = Field(min_length=9, max_length=2048, pattern=HTTP_URL,
                     description="The backend's URL; each follow-up event is POSTed to it as JSON until it "
                                 "answers 2xx (retried with backoff up to an hour apart).")
    secret_ref: SecretKeyRef = Field(
        description="Secret key whose value signs each body: X-Clarion-Signature: sha256=<hex HMAC-SHA256>.")


class NotificationRouteSpec(CamelModel):
    """An event type from one initiator role, and who of its recipients is notified how."""

    event_type: EventWord = Field(description="The event type this route handles (e.g. booking_created).")
    initiator_role: EventWord = Field(
        description="The role of the initiator whose events this route handles; `system` for events "
                    "nobody in particular started.")
    enabled: bool = Field(default=True, description="False: matching events notify nobody "
                                                    "(the answer says route_disabled).")
    recipients: list[RouteRecipient] = Field(
        min_length=1, max_length=16, description="The roles notified, each with its channels.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["role"]})
    templates: list[ChannelTemplate] = Field(
        default_factory=list, max_length=MAX_TEMPLATES,
        description="Templates of this route, the same shape as a channel's (ADR 0007); a recipient "
                    "channel names one (or one of its channel's). Web push channels need one here: "
                    "subject renders the title, text the body.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                           "default": []})
    footer: str | None = Field(
        default=None, min_length=1, max_length=63, pattern=TEMPLATE_NAME,
        description="A template (of this route, else of the channel) whose text is appended to every "
                    "message after a blank line: e.g. an advertisement, per language.")
    callback: RouteCallback | None = Field(
        default=None, description="POST the follow-up events of this route's cards to the backend. Absent: "
                                  "read them with GET /api/v1/events?reference=<event id>.")
    quiet_hours: QuietHours | None = Field(
        default=None, description="No sending in this window of the recipient's local time "
                                  "(timeZone of the recipient, UTC when absent).")

    @model_validator(mode="after")
    def _unique(self) -> Self:
        roles = [r.role for r in self.recipients]
        if len(set(roles)) != len(roles):
            raise ValueError("each recipient role may be listed once")
        names = [t.name for t in self.templates]
        if len(set(names)) != len(names):
            raise ValueError("each template needs its own name")
        return self

    def template(self, name: str) -> ChannelTemplate | None:
        return next((t for t in self.templates if t.name == name), None)

    def recipient(self, role: str) -> RouteRecipient | None:
        return next((r for r in self.recipients if r.role == role), None)


class NotificationRouteStatus(ResourceStatus):
    """What the operator last found about the route's channels and templates."""

    ready: bool | None = Field(default=None, description="True when every channel exists and is Ready "
                                                         "and every template compiles.")
