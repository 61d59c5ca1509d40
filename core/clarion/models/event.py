"""`POST /api/v1/events`: an event of the backend, and the answer saying who was notified how
(docs/events.md). One model each; the OpenAPI schema comes from them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal, Self

from pydantic import Field, model_validator

from clarion.models.base import CamelModel, unknown_time_zone
from clarion.models.campaign import LANGUAGE_CODE
from clarion.models.channel import Lane
from clarion.models.notification import EMAIL_ADDRESS, MAX_VARIABLES, VariableName, VariableValue
from clarion.models.route import EventWord
from clarion.models.timezones import TIME_ZONES

#: A backend's id of an event or a person.
EVENT_ID = r"^[^\s\x00]{1,128}$"
MAX_EVENT_RECIPIENTS = 100

#: Why a recipient got no notification (or, quiet_hours, got one scheduled for later).
SkipReason = Literal["no_route", "route_disabled", "initiator", "no_reachable_channel", "quiet_hours"]


class Person(CamelModel):
    """Someone by role and the backend's own id."""

    role: EventWord = Field(description="The person's role (client, specialist, admin, system, ...).")
    id: str = Field(min_length=1, max_length=128, pattern=EVENT_ID,
                    description="The backend's id of the person.")


class EventRecipient(Person):
    """A person the event may concern, with the addresses they can be reached at."""

    telegram_chat_id: int | None = Field(default=None, ge=-(2**52), le=2**52,
                                         description="Their Telegram chat id (telegram channels).")
    email: str | None = Field(default=None, max_length=254, pattern=EMAIL_ADDRESS,
                              description="Their email address (email channels).")
    push_subscription_id: uuid.UUID | None = Field(
        default=None, description="A subscription registered with POST /api/v1/push-subscriptions "
                                  "(webpush channels).")
    language: str | None = Field(default=None, min_length=2, max_length=35, pattern=LANGUAGE_CODE,
                                 description="Language of their messages (e.g. de, pt-BR).")
    time_zone: str | None = Field(default=None, max_length=64,
                                  description="IANA time zone quiet hours are read in (absent: UTC).")

    @model_validator(mode="after")
    def _known_zone(self) -> Self:
        if self.time_zone is not None and self.time_zone not in TIME_ZONES:
            raise ValueError(unknown_time_zone(self.time_zone))
        return self

    def address(self, channel_type: str) -> str | None:
        """Where this recipient is reached on a channel of `channel_type` (the outbox row's recipient),
        None when the event gives no address for it (a push subscription is checked to exist apart)."""
        if channel_type == "telegram" and self.telegram_chat_id is not None:
            return str(self.telegram_chat_id)
        if channel_type == "email":
            return self.email
        if channel_type == "webpush" and self.push_subscription_id is not None:
            return str(self.push_subscription_id)
        return None


class EventRequest(CamelModel):
    """`POST /api/v1/events`: something happened; notify whom the routes say."""

    type: EventWord = Field(description="The event type (booking_created, ...).")
    id: str = Field(min_length=1, max_length=128, pattern=EVENT_ID,
                    description="The backend's id of the event: the same id again is answered as the first "
                                "time, without a second fan-out.")
    initiator: Person = Field(description="Who caused the event; never notified of it. Role system: "
                                          "nobody in particular.")
    recipients: list[EventRecipient] = Field(
        min_length=1, max_length=MAX_EVENT_RECIPIENTS,
        description="The people concerned; the routes pick whom to notify.")
    data: dict[VariableName, VariableValue] = Field(
        default_factory=dict, max_length=MAX_VARIABLES,
        description="Values the templates read (scalars); eventId and eventType are added.")
    reference: str | None = Field(default=None, min_length=1, max_length=256,
                                  description="Given to every notification created (else the event id).")


class CreatedNotification(CamelModel):
    """The notification a recipient got."""

    id: str
    channel: str = Field(description="namespace/name of the channel.")
    lane: Lane
    status: str


class RecipientOutcome(CamelModel):
    """What one recipient got from one route: a notification, or why none (quiet_hours: one scheduled for
    `sendAt`)."""

    role: str
    id: str
    route: str | None = Field(default=None, description="The NotificationRoute that decided it.")
    notification: CreatedNotification | None = None
    reason: SkipReason | None = Field(default=None, description="Why no notification was sent now.")
    send_at: datetime | None = Field(default=None, description="quiet_hours: when it will be sent.")


class EventAnswer(CamelModel):
    """What became of an event: one entry per recipient (per route that lists their role)."""

    id: str = Field(description="The event's id (yours).")
    type: str
    reference: str | None = Field(default=None, description="A follow-up event: the id of the event whose "
                                                            "card's button was pressed.")
    initiator: Person
    data: dict[str, VariableValue] = Field(default_factory=dict)
    received_at: datetime
    recipients: list[RecipientOutcome] = Field(default_factory=list)


class EventPage(CamelModel):
    """`GET /api/v1/events?reference=…`: the follow-up events of an event, newest first."""

    items: list[EventAnswer]
