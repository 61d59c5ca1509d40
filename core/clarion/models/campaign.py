"""BroadcastCampaign (`bc`): one message, sent once to an audience, at a time."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal, Self
from zoneinfo import ZoneInfo

from pydantic import ConfigDict, Field, field_validator, model_validator

from clarion.models.base import (
    CamelModel,
    ChatId,
    Count,
    LocalObjectRef,
    ResourceStatus,
    Timestamp,
    cel,
    rules,
    time_zone_rule,
    unknown_time_zone,
)
from clarion.models.timezones import TIME_ZONES

ParseMode = Literal["HTML", "MarkdownV2", "None"]
# Languages a message variant may be written in (ISO 639-1).
ContentLanguage = Literal[
    "en",
    "ru",
    "uk",
    "de",
    "fr",
    "es",
    "it",
    "pt",
    "pl",
    "nl",
    "tr",
    "ar",
    "fa",
    "he",
    "hi",
    "id",
    "ja",
    "ko",
    "zh",
]


class Phase(StrEnum):
    """Where a campaign is in its life (status.phase; the campaigns row holds the same words)."""

    DRAFT = "Draft"
    SCHEDULED = "Scheduled"
    SENDING = "Sending"
    PAUSED = "Paused"
    COMPLETED = "Completed"
    PARTIALLY_FAILED = "PartiallyFailed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


# Phases after which spec.message and spec.audience are frozen (the admission policy enforces it).
STARTED_PHASES = (Phase.SENDING, Phase.PAUSED, Phase.COMPLETED, Phase.PARTIALLY_FAILED, Phase.FAILED,
                  Phase.CANCELLED)
# Phases in which nothing more will be sent (until spec.retryFailed is bumped).
FINISHED_PHASES = (Phase.COMPLETED, Phase.PARTIALLY_FAILED, Phase.FAILED, Phase.CANCELLED)


class CampaignReason(StrEnum):
    """Reasons of a campaign's conditions and Events (CamelCase, as `kubectl describe` shows them)."""

    SUSPENDED = "Suspended"
    WAITING_FOR_START_TIME = "WaitingForStartTime"
    WAITING_FOR_CHANNEL = "WaitingForChannel"
    CHANNEL_NOT_READY = "ChannelNotReady"
    STARTED = "Started"
    SENDING = "Sending"
    PAUSED = "Paused"
    RESUMED = "Resumed"
    CANCELLED = "Cancelled"
    COMPLETED = "Completed"
    PARTIALLY_FAILED = "PartiallyFailed"
    FAILED = "Failed"
    SENDER_JOB_FAILED = "SenderJobFailed"
    SENDERS_RESTARTED = "SendersRestarted"
    SENDERS_STOPPED = "SendersStopped"
    SENDERS_STOPPING = "SendersStopping"
    RETRYING_FAILED = "RetryingFailed"
    NOTHING_TO_RETRY = "NothingToRetry"
    EDITED_AFTER_START = "EditedAfterStart"


TEXT_MAX = 4096
CAPTION_MAX = 1024
CAPTION_ERROR = (
    f"with mediaUrl the text (and every variant's text) is a caption of at most {CAPTION_MAX} characters"
)
# A point in time: RFC 3339 with offset, or a wall-clock time read in schedule.timeZone.
SCHEDULE_AT = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?$"
)
TAG = r"^[A-Za-z0-9]([A-Za-z0-9_.:/-]*[A-Za-z0-9])?$"
LANGUAGE_CODE = r"^[a-z]{2,3}(-[A-Za-z0-9]{1,8})*$"

Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=TAG)]
LanguageCode = Annotated[str, Field(min_length=2, max_length=35, pattern=LANGUAGE_CODE)]


def parse_schedule_time(at: str, time_zone: str) -> datetime:
    """The moment `at` names, in UTC; a time without an offset is read in `time_zone`."""
    moment = datetime.fromisoformat(at)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(time_zone))
    return moment.astimezone(UTC)


class Button(CamelModel):
    """An inline keyboard button: opens a URL, sends callback data back to the bot, or opens a Mini App
    (`webAppUrl`: Telegram allows those only in private chats between a user and the bot)."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "(has(self.url) ? 1 : 0) + (has(self.callbackData) ? 1 : 0) + (has(self.webAppUrl) ? 1 : 0)"
                " == 1",
                "exactly one of url, callbackData or webAppUrl must be set",
                reason="FieldValueInvalid",
            )
        )
    )

    text: str = Field(min_length=1, max_length=128, description="Label shown on the button.")
    url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^(https?|tg)://[^\s]+$",
        description="URL opened by the button (http, https or tg).",
    )
    callback_data: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Data sent to the bot when the button is pressed (Telegram allows 1-64 bytes).",
    )
    web_app_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https://[^\s]+$",
        description="HTTPS URL of a Mini App the button opens (private chats only).",
    )

    @model_validator(mode="after")
    def _one_action(self) -> Self:
        if [self.url, self.callback_data, self.web_app_url].count(None) != 2:
            raise ValueError("exactly one of url, callbackData or webAppUrl must be set")
        return self


ButtonRow = Annotated[list[Button], Field(min_length=1, max_length=8)]


class MessageVariant(CamelModel):
    """The message in another language, sent to subscribers whose language matches."""

    language: ContentLanguage = Field(description="Subscriber language this variant is for (ISO 639-1).")
    text: str = Field(
        min_length=1, max_length=TEXT_MAX, description="Text of the variant, in message.parseMode."
    )
    buttons: list[ButtonRow] | None = Field(
        default=None,
        max_length=10,
        description="Inline keyboard of the variant. Absent: message.buttons.",
    )


class Message(CamelModel):
    """What is sent. With mediaUrl the text becomes the media caption (at most 1024 characters)."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                f"!has(self.mediaUrl) || (size(self.text) <= {CAPTION_MAX} && "
                f"(!has(self.variants) || self.variants.all(v, size(v.text) <= {CAPTION_MAX})))",
                CAPTION_ERROR,
                field_path=".text",
                reason="FieldValueInvalid",
            )
        )
    )

    text: str = Field(min_length=1, max_length=TEXT_MAX, description="Text of the message, in parseMode.")
    parse_mode: ParseMode = Field(default="None", description="HTML, MarkdownV2, or None for plain text.")
    buttons: list[ButtonRow] = Field(
        default_factory=list, max_length=10, description="Inline keyboard: up to 10 rows of up to 8 buttons."
    )
    media_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="Photo or document URL Telegram fetches; the text becomes its caption.",
    )
    disable_notification: bool = Field(default=False, description="Deliver silently.")
    variants: list[MessageVariant] = Field(
        default_factory=list,
        max_length=20,
        description="Per-language versions of the message; one per language.",
        json_schema_extra=rules(
            cel(
                "self.all(v, self.exists_one(w, w.language == v.language))",
                "each language may have only one variant",
                reason="FieldValueInvalid",
            )
        ),
    )

    @model_validator(mode="after")
    def _caption_and_languages(self) -> Self:
        if self.media_url is not None and any(
            len(text) > CAPTION_MAX for text in [self.text, *(v.text for v in self.variants)]
        ):
            raise ValueError(CAPTION_ERROR)
        languages = [v.language for v in self.variants]
        if len(set(languages)) != len(languages):
            raise ValueError("each language may have only one variant")
        return self

    def for_language(self, language: str | None) -> tuple[str, list[list[Button]]]:
        """Text and keyboard for a subscriber language: its variant if one exists, else the main message."""
        for variant in self.variants:
            if language is not None and language.split("-")[0].lower() == variant.language:
                return variant.text, variant.buttons if variant.buttons is not None else self.buttons
        return self.text, self.buttons


class Audience(CamelModel):
    """Who receives the campaign: the union of the selectors, minus excludeTags, filtered by languages."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "(has(self.allSubscribers) && self.allSubscribers) || (has(self.tags) && size(self.tags) > 0)"
                " || (has(self.chatIds) && size(self.chatIds) > 0)"
                " || (has(self.groupRefs) && size(self.groupRefs) > 0)",
                "audience is empty: set allSubscribers, tags, chatIds or groupRefs",
                reason="FieldValueRequired",
            )
        )
    )

    all_subscribers: bool = Field(default=False, description="Every subscriber of the channel.")
    tags: list[Tag] = Field(
        default_factory=list, max_length=50, description="Subscribers with any of these tags."
    )
    exclude_tags: list[Tag] = Field(
        default_factory=list, max_length=50, description="Leave out subscribers with any of these tags."
    )
    chat_ids: list[ChatId] = Field(
        default_factory=list, max_length=10000, description="These Telegram chats."
    )
    group_refs: list[LocalObjectRef] = Field(
        default_factory=list, max_length=100, description="Members of these ManagedGroups."
    )
    languages: list[LanguageCode] = Field(
        default_factory=list,
        max_length=20,
        description="Only subscribers whose language is one of these (empty: any language).",
    )

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if not (self.all_subscribers or self.tags or self.chat_ids or self.group_refs):
            raise ValueError("audience is empty: set allSubscribers, tags, chatIds or groupRefs")
        return self


class Schedule(CamelModel):
    """When sending starts."""

    at: str = Field(
        min_length=19,
        max_length=35,
        pattern=SCHEDULE_AT,
        description=(
            'Start time: RFC 3339 ("2026-12-01T09:00:00Z") or local "YYYY-MM-DDTHH:MM:SS" read in timeZone.'
        ),
    )
    time_zone: str = Field(
        default="UTC",
        max_length=64,
        description="IANA time zone for a local start time (for example Europe/Berlin).",
        json_schema_extra=rules(time_zone_rule()),
    )

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if value not in TIME_ZONES:
            raise ValueError(unknown_time_zone(value))
        return value

    @model_validator(mode="after")
    def _real_time(self) -> Self:
        try:
            self.start_time()
        except ValueError as exc:
            raise ValueError(f"at {self.at!r} is not a valid time: {exc}") from exc
        return self

    def start_time(self) -> datetime:
        """The start time in UTC."""
        return parse_schedule_time(self.at, self.time_zone)


class Delivery(CamelModel):
    """How fast and how hard the sender Job works."""

    rate_per_second: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Messages per second for this campaign. Absent: the channel's limit.",
    )
    parallelism: int = Field(default=2, ge=1, le=32, description="Sender pods (indexed Job completions).")
    batch_size: int = Field(default=100, ge=1, le=1000, description="Deliveries a sender claims at once.")
    max_attempts: int = Field(
        default=5, ge=1, le=20, description="Attempts per recipient on temporary errors before giving up."
    )
    paid_broadcast: bool = Field(
        default=False,
        description="Use Telegram paid broadcasts (allow_paid_broadcast, up to 1000 msg/s, costs Stars).",
    )
    retry_backoff_seconds: int = Field(
        default=5, ge=1, le=3600, description="First retry delay; doubles with each attempt."
    )


class Retention(CamelModel):
    """What is kept after the campaign finishes."""

    keep_deliveries: bool = Field(
        default=True, description="Keep per-recipient delivery rows in Postgres after completion."
    )


class BroadcastCampaignSpec(CamelModel):
    """A message to an audience, sent once. message and audience are frozen once sending starts."""

    channel_ref: LocalObjectRef = Field(description="The NotificationChannel that sends the campaign.")
    message: Message = Field(description="What is sent.")
    audience: Audience = Field(description="Who receives it.")
    schedule: Schedule | None = Field(default=None, description="When sending starts. Absent: at once.")
    suspend: bool = Field(
        default=False,
        description="true: a draft before the start, paused while sending. false: go (or resume).",
    )
    cancel: bool = Field(
        default=False,
        description="true: stop for good; unsent deliveries are marked cancelled. Cannot be undone.",
        json_schema_extra=rules(
            cel("self || !oldSelf", "cancel cannot be undone", reason="FieldValueForbidden")
        ),
    )
    retry_failed: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Bump to re-send only the failed deliveries of a finished campaign.",
        json_schema_extra=rules(
            cel("self >= oldSelf", "retryFailed can only increase", reason="FieldValueInvalid")
        ),
    )
    delivery: Delivery = Field(
        default_factory=Delivery,
        description="Rate, parallelism and retries of the sender Job.",
        json_schema_extra={"default": {}},
    )
    retention: Retention = Field(
        default_factory=Retention,
        description="What is kept after completion.",
        json_schema_extra={"default": {}},
    )

    @property
    def start_at(self) -> datetime | None:
        """When sending starts, in UTC; None: at once."""
        return self.schedule.start_time() if self.schedule is not None else None

    def content_hash(self) -> str:
        """sha256 of the message and audience, every default filled in: an edit after the start shows
        as a different hash, spelling out a default does not."""
        frozen = {"message": self.message.to_k8s(), "audience": self.audience.to_k8s()}
        return hashlib.sha256(json.dumps(frozen, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class BroadcastCampaignStatus(ResourceStatus):
    """Progress of the campaign, counted from the delivery rows in Postgres."""

    phase: Phase | None = Field(
        default=None,
        description="Draft, Scheduled, Sending, Paused, Completed, PartiallyFailed, Failed or Cancelled.",
    )
    total: Count | None = Field(default=None, description="Recipients in the audience snapshot.")
    sent: Count | None = Field(default=None, description="Deliveries Telegram accepted.")
    failed: Count | None = Field(default=None, description="Deliveries that failed for good.")
    blocked: Count | None = Field(
        default=None, description="Recipients who blocked the bot or were deactivated (not retried)."
    )
    cancelled: Count | None = Field(
        default=None, description="Deliveries left unsent because the campaign was cancelled."
    )
    pending: Count | None = Field(default=None, description="Deliveries not settled yet.")
    progress: int | None = Field(default=None, ge=0, le=100, description="Settled deliveries, percent.")
    rate_per_second: float | None = Field(
        default=None, ge=0, le=1_000_000, description="Recent sending rate, messages per second."
    )
    eta: Timestamp | None = Field(default=None, description="Expected completion time at the current rate.")
    scheduled_at: Timestamp | None = Field(default=None, description="Resolved start time (UTC).")
    started_at: Timestamp | None = Field(default=None, description="When sending started.")
    completed_at: Timestamp | None = Field(default=None, description="When every delivery was settled.")
    job_name: str | None = Field(default=None, max_length=63, description="Sender Job of the current run.")
    run: int | None = Field(
        default=None, ge=0, le=10000, description="Run number: 1, plus one per retryFailed."
    )
    retry_failed_observed: int | None = Field(
        default=None, ge=0, le=1000, description="spec.retryFailed the current run answers."
    )
    message: str | None = Field(default=None, max_length=4096, description="Human-readable summary.")
