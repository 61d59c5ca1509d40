"""The public API's notification request and answer: one model each, the OpenAPI schema and the outbox
row's `content` come from them (docs/notifications.md)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import Field, model_validator

from clarion.models.base import CamelModel
from clarion.models.campaign import LANGUAGE_CODE, ButtonRow, ParseMode
from clarion.models.channel import TEMPLATE_NAME, Lane, NotificationLane

NotificationState = Literal["created", "queued", "sending", "sent", "failed", "blocked", "cancelled"]

#: `namespace/name` of a NotificationChannel.
CHANNEL_REF = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$"
#: An address as SMTP takes it: no spaces, no angle brackets, one @, a dotted domain.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_ADDRESS = rf"^[^@\s<>\"(),;:\[\]\\]{{1,64}}@{_LABEL}(?:\.{_LABEL})+$"
TELEGRAM_TEXT_MAX = 4096
EMAIL_TEXT_MAX = 100_000


RecipientKind = Literal["telegram", "email", "webpush"]
#: The recipient field each channel type takes.
RECIPIENT_FIELD: dict[str, str] = {"telegram": "recipient.chatId", "email": "recipient.email",
                                   "webpush": "recipient.pushSubscriptionId"}


class Recipient(CamelModel):
    """Who receives it: a Telegram chat (telegram channels), an email address (email channels) or a
    registered browser subscription (webpush channels)."""

    chat_id: int | None = Field(default=None, ge=-(2**52), le=2**52, description="Telegram chat id.")
    email: str | None = Field(default=None, max_length=254, pattern=EMAIL_ADDRESS,
                              description="Email address.")
    push_subscription_id: uuid.UUID | None = Field(
        default=None, description="Web push: the id POST /api/v1/push-subscriptions gave the browser's "
                                  "subscription on this channel.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if sum(v is not None for v in (self.chat_id, self.email, self.push_subscription_id)) != 1:
            raise ValueError("exactly one of chatId, email or pushSubscriptionId must be set")
        return self

    @property
    def kind(self) -> RecipientKind:
        if self.chat_id is not None:
            return "telegram"
        return "email" if self.email is not None else "webpush"

    @property
    def address(self) -> str:
        """The recipient as the outbox row stores it."""
        return str(next(v for v in (self.chat_id, self.email, self.push_subscription_id) if v is not None))


#: Text Postgres can store (jsonb and text hold no NUL character).
_NO_NUL = r"^[^\x00]*$"
#: A template variable's name and value as the API takes them.
VariableName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\s\x00]+$")]
VariableValue = (Annotated[str, Field(max_length=EMAIL_TEXT_MAX, pattern=_NO_NUL)]
                 | Annotated[int, Field(ge=-(2**53), le=2**53)] | float | bool)
MAX_VARIABLES = 64
#: The literal content fields a template gives instead.
_TEMPLATE_GIVES = ("text", "parse_mode", "buttons", "subject", "html")


class TemplateRef(CamelModel):
    """A template of the channel (`spec.templates`) by name, in a language (ADR 0007)."""

    name: str = Field(min_length=1, max_length=63, pattern=TEMPLATE_NAME, description="The template's name.")
    language: str | None = Field(
        default=None, min_length=2, max_length=35, pattern=LANGUAGE_CODE,
        description="Language wanted (e.g. de, pt-BR); one the template lacks gets its defaultLanguage.")


class TemplateUse(TemplateRef):
    """A template and the values of its variables, rendered at accept time (ADR 0007)."""

    variables: dict[VariableName, VariableValue] = Field(
        default_factory=dict, max_length=MAX_VARIABLES,
        description="Values of the template's variables: every variable without a default is required; "
                    "names the template does not declare are ignored.")


class Content(CamelModel):
    """What is sent: literal content or a template, exactly one. Telegram: text (parseMode, inline
    buttons). Email: subject, text, optional html. Web push: the subject is the title and the text its
    body (without a subject the text is the title), and a url to open. A template gives text, subject
    and the rest itself; disableNotification, pin and url may be set with either."""

    text: str | None = Field(default=None, min_length=1, max_length=EMAIL_TEXT_MAX,
                             description="Message text (Telegram: at most 4096 characters, in parseMode).")
    parse_mode: ParseMode = Field(default="None", description="Telegram: HTML, MarkdownV2 or None.")
    buttons: list[ButtonRow] = Field(default_factory=list, max_length=10,
                                     description="Telegram: inline keyboard, up to 10 rows of 8 buttons.")
    disable_notification: bool = Field(default=False, description="Telegram: deliver silently.")
    # Stored only when true: the outbox content of a message that is not pinned stays as it was.
    pin: bool = Field(default=False, exclude_if=lambda pin: not pin,
                      description="Telegram: pin the message in its chat once sent, silently (in a group "
                                  "the bot needs the can_pin_messages right).")
    subject: str | None = Field(default=None, min_length=1, max_length=998,
                                pattern=r"^[^\r\n]*$", description="Email: subject line (required).")
    html: str | None = Field(default=None, min_length=1, max_length=EMAIL_TEXT_MAX,
                             description="Email: HTML alternative of the text.")
    url: str | None = Field(default=None, max_length=2048, pattern=r"^https://[^\s\x00]+$",
                            description="Web push: the page opened when the notification is clicked.")
    template: TemplateUse | None = Field(default=None, description="A template of the channel instead of "
                                                                   "text: name, variables, language.")

    @model_validator(mode="after")
    def _literal_or_template(self) -> Self:
        if self.template is None:
            if self.text is None:
                raise ValueError("set text, or a template")
            return self
        given = [f for f in _TEMPLATE_GIVES if f in self.model_fields_set]
        if given:
            names = ", ".join(type(self).model_fields[f].alias or f for f in given)
            raise ValueError(f"a template gives the content itself: leave out {names}")
        return self

    def problem_for(self, channel_type: str) -> tuple[str, str] | None:
        """(field, why) this literal content cannot go through a `channel_type` channel; None when it can."""
        if channel_type == "telegram" and self.text is not None and len(self.text) > TELEGRAM_TEXT_MAX:
            return "text", f"Telegram messages hold at most {TELEGRAM_TEXT_MAX} characters"
        if channel_type == "email" and self.subject is None:
            return "subject", "a subject is required for an email channel"
        if self.url is not None and channel_type != "webpush":
            return "url", "only a web push opens a url; put links in the text or buttons"
        return None


class ChannelRef(CamelModel):
    """A request's channel, as namespace/name."""

    channel: str = Field(max_length=317, pattern=CHANNEL_REF,
                         description="The NotificationChannel, as namespace/name.")

    @property
    def namespace(self) -> str:
        return self.channel.partition("/")[0]

    @property
    def channel_name(self) -> str:
        return self.channel.partition("/")[2]


class ThroughChannel(ChannelRef):
    """What a request sends through: a channel, and when (now, or at `scheduledFor`)."""

    scheduled_for: datetime | None = Field(default=None, description="Send at or after this time "
                                                                     "(RFC 3339 with an offset).")

    @model_validator(mode="after")
    def _aware_time(self) -> Self:
        _check_aware(self.scheduled_for)
        return self


def _check_aware(when: datetime | None) -> None:
    if when is not None and when.tzinfo is None:
        raise ValueError("scheduledFor needs a UTC offset (e.g. 2026-12-05T09:00:00Z)")


class NotificationRequest(ThroughChannel):
    """`POST /api/v1/notifications`: one message to one recipient through one channel."""

    recipient: Recipient
    content: Content
    lane: Lane = Field(default="instant", description="instant (the default) or bulk (throttled, never "
                                                       "ahead of instant work).")
    reference: str | None = Field(default=None, min_length=1, max_length=256,
                                  description="Your own reference; list by it with ?reference=.")

    def check_for(self, channel_type: str) -> tuple[str, str] | None:
        """(field, why) this request cannot go through a channel of `channel_type`; None when it can."""
        nul = _nul_field(self.model_dump(by_alias=True, exclude_none=True))
        if nul is not None:
            return nul, "text cannot contain the NUL character (U+0000)"
        if channel_type not in RECIPIENT_FIELD:
            return "channel", f"{self.channel} is a {channel_type} channel, which this API cannot send"
        if self.recipient.kind != channel_type:
            wanted = RECIPIENT_FIELD[channel_type]
            return "recipient", f"channel {self.channel} is a {channel_type} channel: set {wanted}"
        if self.content.url is not None and channel_type != "webpush":
            return "content.url", "only a web push opens a url; put links in the text or buttons"
        if self.content.pin and channel_type != "telegram":
            return "content.pin", "only a Telegram message can be pinned"
        problem = None if self.content.template is not None else self.content.problem_for(channel_type)
        if problem is not None:
            return f"content.{problem[0]}", problem[1]
        return None


class GroupPostRequest(CamelModel):
    """`POST /api/v1/groups/{name}/posts`: a one-off post in a ManagedGroup of your namespace, sent by
    its channel on the lane group-posts (at most 20 a minute per group; ADR 0010)."""

    text: str = Field(min_length=1, max_length=TELEGRAM_TEXT_MAX, pattern=_NO_NUL,
                      description="The post, in parseMode (at most 4096 characters).")
    parse_mode: ParseMode = Field(default="None", description="HTML, MarkdownV2 or None.")
    pin: bool = Field(default=False, description="Pin the post once sent, silently (the bot needs the "
                                                 "can_pin_messages right in the group).")
    scheduled_for: datetime | None = Field(default=None, description="Post at or after this time (RFC 3339 "
                                                                     "with an offset). Absent: now.")

    @model_validator(mode="after")
    def _aware_time(self) -> Self:
        _check_aware(self.scheduled_for)
        return self


def _nul_field(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string in `value` holding U+0000, which Postgres text and jsonb
    cannot store; None when there is none."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    children = (value.items() if isinstance(value, dict)
                else enumerate(value) if isinstance(value, list) else ())
    for key, child in children:
        found = _nul_field(child, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


class NotificationView(CamelModel):
    """A notification as the API shows it."""

    id: str
    channel: str
    lane: NotificationLane = Field(description="instant or bulk; group-posts for a ManagedGroup's posts.")
    status: NotificationState
    recipient: str
    reference: str | None = None
    attempts: int
    last_error: str | None = None
    provider_message_id: str | None = None
    trace_id: str
    scheduled_for: datetime | None = None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None = None


class NotificationPage(CamelModel):
    """One page of `GET /api/v1/notifications?reference=…`, newest first."""

    items: list[NotificationView]
    next_cursor: str | None = Field(default=None, description="Pass as ?cursor= for the next page.")


class ErrorBody(CamelModel):
    code: str
    message: str
    field: str | None = None


class ErrorAnswer(CamelModel):
    """Every refusal: a code, a message, and the field at fault when there is one."""

    error: ErrorBody


def outbox_content(request: NotificationRequest) -> dict[str, Any]:
    """The `notifications.content` stored for a request with literal content: the content as the worker
    sends it. Template content is rendered by `clarion.templates.render_template` instead."""
    return request.content.to_k8s()



# --- Bulk: POST /api/v1/bulk and GET /api/v1/bulk/{id} ---

MAX_BULK_ROWS = 100_000
BulkJobState = Literal["accepted", "expanding", "done", "failed"]


class BulkRow(CamelModel):
    """One recipient of a bulk job and the variables its message is rendered with."""

    recipient: Recipient
    variables: dict[VariableName, VariableValue] = Field(default_factory=dict, max_length=MAX_VARIABLES)
    reference: str | None = Field(default=None, min_length=1, max_length=256, pattern=_NO_NUL,
                                  description="This row's own reference (else the job's).")


class BulkOptions(ThroughChannel):
    """What applies to every row of a bulk job: in the JSON body, or the query of the CSV form."""

    template: TemplateRef
    reference: str | None = Field(default=None, min_length=1, max_length=256, pattern=_NO_NUL,
                                  description="Your own reference, given to every notification.")


class BulkRequest(BulkOptions):
    """`POST /api/v1/bulk` as JSON: the options and up to 100,000 rows. (The API reads it as its parts,
    `BulkOptions` and each `BulkRow`, so that 100,000 rows are never all held as models at once.)"""

    rows: list[BulkRow] = Field(min_length=1, max_length=MAX_BULK_ROWS)


class BulkJobView(CamelModel):
    """A bulk job and its progress: rows expanded into notifications, and those by status."""

    id: str
    channel: str
    status: BulkJobState = Field(description="accepted, expanding (notifications being created), done "
                                             "(all created) or failed (see lastError).")
    template: TemplateRef
    reference: str | None = None
    scheduled_for: datetime | None = None
    trace_id: str
    total: int = Field(description="Rows accepted.")
    expanded: int = Field(description="Rows turned into notifications so far.")
    queued: int = Field(description="Notifications waiting to be sent (created or queued).")
    sending: int
    sent: int
    failed: int
    blocked: int
    cancelled: int
    last_error: str | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = Field(default=None, description="When the last notification was created.")
