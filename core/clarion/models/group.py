"""ManagedGroup (`mg`): a Telegram group whose joins, inactivity and posts are automated."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal, Self

from croniter import CroniterError, croniter
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
from clarion.models.campaign import SCHEDULE_AT, TEXT_MAX, LanguageCode, ParseMode, parse_schedule_time
from clarion.models.timezones import TIME_ZONES

JoinPolicy = Literal["approve", "decline", "manual", "rules"]
GroupPhase = Literal["Growth", "Monitoring"]
# Five cron fields: minute hour day-of-month month day-of-week.
CRON = r"^\S+(\s+\S+){4}$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class GroupReason(StrEnum):
    """Reasons of a ManagedGroup's conditions (ChannelReady, BotHasRights, Ready) and Events."""

    CHANNEL_NOT_FOUND = "ChannelNotFound"
    CHANNEL_NOT_TELEGRAM = "ChannelNotTelegram"
    CHANNEL_NOT_READY = "ChannelNotReady"
    CHANNEL_READY = "ChannelReady"
    RIGHTS_GRANTED = "RightsGranted"
    NOT_ADMINISTRATOR = "NotAdministrator"
    MISSING_RIGHTS = "MissingRights"
    CHAT_NOT_FOUND = "ChatNotFound"
    CHAT_TAKEN = "ChatTaken"
    TELEGRAM_ERROR = "TelegramError"
    TELEGRAM_UNREACHABLE = "TelegramUnreachable"
    NOT_CHECKED = "NotChecked"
    GROUP_READY = "GroupReady"
    PHASE_CHANGED = "PhaseChanged"
    DRY_RUN = "DryRun"
    POST_QUEUED = "PostQueued"
    POST_SKIPPED = "PostSkipped"


AnswerText = Annotated[str, Field(min_length=1, max_length=200)]


class JoinQuestion(CamelModel):
    """A question the bot asks the requester in a direct message (the request's user_chat_id)."""

    text: str = Field(min_length=1, max_length=TEXT_MAX, description="The question.")
    answer_within_minutes: int = Field(
        default=10, ge=1, le=1440, description="Minutes to answer; no answer in time declines the request."
    )
    accepted_answers: list[AnswerText] = Field(
        default_factory=list,
        max_length=20,
        description="Answers that approve (case and surrounding spaces ignored); any other declines. "
        "Empty: any answer approves.",
    )

    def accepts(self, answer: str) -> bool:
        """Whether `answer` approves the request."""
        if not self.accepted_answers:
            return True
        given = answer.strip().casefold()
        return any(given == accepted.strip().casefold() for accepted in self.accepted_answers)


class JoinRules(CamelModel):
    """Checks applied to a join request under policy rules; a request passing all of them is approved."""

    require_username: bool = Field(default=False, description="Decline users without a @username.")
    allowed_languages: list[LanguageCode] = Field(
        default_factory=list,
        max_length=20,
        description="Decline users whose Telegram language is not one of these (empty: any).",
    )
    decline_message: str | None = Field(
        default=None, max_length=TEXT_MAX, description="Direct message sent to a declined user."
    )
    question: JoinQuestion | None = Field(
        default=None, description="Asked in a direct message once the checks above passed."
    )


class JoinRequests(CamelModel):
    """What the bot does with requests to join the group."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "!has(self.policy) || self.policy != 'rules' || has(self.rules)",
                "rules is required when policy is rules",
                field_path=".rules",
                reason="FieldValueRequired",
            )
        )
    )

    policy: JoinPolicy = Field(
        default="manual",
        description="approve: all; decline: all; manual: leave to admins; rules: apply rules.",
    )
    rules: JoinRules | None = Field(default=None, description="The checks for policy rules.")
    admin_chat_id: ChatId | None = Field(
        default=None,
        description="Chat where policy manual posts each request with Approve and Decline buttons "
        "(pressed by the channel's adminChatIds). Absent: the channel's supportChatId.",
    )

    @model_validator(mode="after")
    def _rules_present(self) -> Self:
        if self.policy == "rules" and self.rules is None:
            raise ValueError("rules is required when policy is rules")
        return self


class WelcomeTranslation(CamelModel):
    """The welcome in one language."""

    language: LanguageCode = Field(description="Telegram language code of the members it is for.")
    text: str = Field(min_length=1, max_length=TEXT_MAX, description="Text, as `text`.")


class WelcomeMessage(CamelModel):
    """Message posted in the group when someone joins."""

    text: str = Field(
        min_length=1, max_length=TEXT_MAX, description="Text; {name} is replaced by the member's first name."
    )
    translations: list[WelcomeTranslation] = Field(
        default_factory=list,
        max_length=20,
        description="The text in other languages, picked by the member's Telegram language; others get text.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["language"]},
    )
    parse_mode: ParseMode = Field(default="None", description="HTML, MarkdownV2, or None for plain text.")
    delete_after_seconds: int | None = Field(
        default=None, ge=1, le=172800, description="Delete the welcome after this many seconds (max 48 h)."
    )

    @field_validator("translations")
    @classmethod
    def _one_per_language(cls, translations: list[WelcomeTranslation]) -> list[WelcomeTranslation]:
        languages = [t.language for t in translations]
        if len(set(languages)) != len(languages):
            raise ValueError("one translation per language")
        return translations

    def text_for(self, language: str | None) -> str:
        """The text for a member whose Telegram language is `language` (its base language too: pt-br → pt)."""
        if language:
            by_language = {t.language.lower(): t.text for t in self.translations}
            code = language.lower()
            for candidate in (code, code.split("-")[0]):
                if candidate in by_language:
                    return by_language[candidate]
        return self.text


class Inactivity(CamelModel):
    """Members silent for too long are warned, then removed (applies in phase Monitoring)."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.removeAfterDays > self.warnAfterDays",
                "removeAfterDays must be greater than warnAfterDays",
                field_path=".removeAfterDays",
                reason="FieldValueInvalid",
            )
        )
    )

    warn_after_days: int = Field(ge=1, le=3650, description="Days of silence before a warning.")
    remove_after_days: int = Field(ge=1, le=3650, description="Days of silence before removal.")
    exempt_user_ids: list[ChatId] = Field(
        default_factory=list, max_length=1000, description="Telegram user ids never warned or removed."
    )
    warning_text: str | None = Field(
        default=None,
        max_length=TEXT_MAX,
        description="Warning posted in the group, mentioning the member; {name} is the member's first name. "
        "Absent: a built-in text in the member's language.",
    )
    dry_run: bool = Field(
        default=False,
        description="Warn and remove nobody: list the members who would be removed in status and an Event.",
    )
    removals_per_minute: int = Field(
        default=10, ge=1, le=60, description="At most this many removals per minute in the group."
    )

    @model_validator(mode="after")
    def _remove_after_warn(self) -> Self:
        if self.remove_after_days <= self.warn_after_days:
            raise ValueError("removeAfterDays must be greater than warnAfterDays")
        return self


class Lifecycle(CamelModel):
    """Growth (gather members) then Monitoring (enforce inactivity), switched by thresholds.

    Growth → Monitoring when any Growth threshold set is reached; Monitoring → Growth when the member
    count falls below `regrowBelowMembers`. No threshold set: the group stays in its phase.
    """

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "!has(self.regrowBelowMembers) || !has(self.growthUntilMembers)"
                " || self.regrowBelowMembers < self.growthUntilMembers",
                "regrowBelowMembers must be less than growthUntilMembers",
                field_path=".regrowBelowMembers",
                reason="FieldValueInvalid",
            )
        )
    )

    phase: GroupPhase = Field(default="Growth", description="Phase the group starts in.")
    growth_until_members: int | None = Field(
        default=None,
        ge=1,
        le=200000,
        description="The Growth target: switch to Monitoring when the group reaches this many members.",
    )
    growth_until: Timestamp | None = Field(default=None, description="Switch to Monitoring at this time.")
    growth_for_days: int | None = Field(
        default=None,
        ge=1,
        le=3650,
        description="Switch to Monitoring once the group has been in Growth this many days.",
    )
    min_growth_per_day: float | None = Field(
        default=None,
        ge=0.01,
        le=100000,
        description="Switch to Monitoring when the group gained fewer members per day than this over the "
        "last growthWindowDays (measured once it has been in Growth that long).",
    )
    growth_window_days: int = Field(
        default=7, ge=1, le=90, description="Days over which minGrowthPerDay is measured."
    )
    regrow_below_members: int | None = Field(
        default=None,
        ge=1,
        le=200000,
        description="Switch back from Monitoring to Growth when the member count falls below this.",
    )
    monitoring_join_requests: JoinRequests | None = Field(
        default=None,
        description="Join request handling in Monitoring (stricter rules). Absent: joinRequests.",
    )

    @model_validator(mode="after")
    def _regrow_below_target(self) -> Self:
        if (
            self.regrow_below_members is not None
            and self.growth_until_members is not None
            and self.regrow_below_members >= self.growth_until_members
        ):
            raise ValueError("regrowBelowMembers must be less than growthUntilMembers")
        return self


class InviteLinks(CamelModel):
    """Invite links the bot creates (createChatInviteLink) and rotates, revoking the previous one.

    In Growth a link admits whoever opens it (up to memberLimit); in Monitoring the link creates join
    requests, decided by the phase's join policy.
    """

    rotate_every_hours: int = Field(
        default=24, ge=1, le=8760, description="A new link every this many hours; the old one is revoked."
    )
    expire_after_hours: int | None = Field(
        default=None,
        ge=1,
        le=8760,
        description="The link expires this many hours after it is made. Absent: at the next rotation.",
    )
    member_limit: int | None = Field(
        default=None, ge=1, le=99999, description="Members who may join through one link (Growth only)."
    )
    name: str = Field(default="clarion", max_length=32, description="Name of the link, shown to admins.")


class ScheduledPost(CamelModel):
    """A message the bot posts in the group once (at) or repeatedly (cron)."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.at) != has(self.cron)",
                "exactly one of at or cron must be set",
                reason="FieldValueInvalid",
            )
        )
    )

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL, description="Unique name of the post.")
    at: str | None = Field(
        default=None,
        min_length=19,
        max_length=35,
        pattern=SCHEDULE_AT,
        description='One-off time: RFC 3339 or local "YYYY-MM-DDTHH:MM:SS" read in timeZone.',
    )
    cron: str | None = Field(
        default=None,
        max_length=100,
        pattern=CRON,
        description='Repeating schedule, five cron fields ("0 9 * * 1" = Mondays 09:00) in timeZone.',
    )
    time_zone: str = Field(
        default="UTC",
        max_length=64,
        description="IANA time zone for at and cron.",
        json_schema_extra=rules(time_zone_rule()),
    )
    text: str = Field(min_length=1, max_length=TEXT_MAX, description="Text of the post.")
    parse_mode: ParseMode = Field(default="None", description="HTML, MarkdownV2, or None for plain text.")
    pin: bool = Field(default=False, description="Pin the post after sending.")

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if value not in TIME_ZONES:
            raise ValueError(unknown_time_zone(value))
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> Self:
        if (self.at is None) == (self.cron is None):
            raise ValueError("exactly one of at or cron must be set")
        if self.at is not None:
            parse_schedule_time(self.at, self.time_zone)
        if self.cron is not None:
            _check_cron(self.cron)
        return self


def _check_cron(cron: str) -> None:
    """A schedule croniter reads and that comes at least once (not "0 9 31 2 *")."""
    if not croniter.is_valid(cron):
        raise ValueError(f"cron {cron!r} is not a valid five-field schedule")
    try:
        croniter(cron, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except CroniterError as exc:
        raise ValueError(f"cron {cron!r} never comes") from exc


class ManagedGroupSpec(CamelModel):
    """A Telegram group run by a channel's bot (the bot must be an admin of the group)."""

    channel_ref: LocalObjectRef = Field(
        description="The telegram NotificationChannel whose bot runs the group."
    )
    chat_id: ChatId = Field(description="Telegram chat id of the group (negative, -100... for supergroups).")
    join_requests: JoinRequests = Field(
        default_factory=JoinRequests,
        description="Join request handling.",
        json_schema_extra={"default": {}},
    )
    welcome_message: WelcomeMessage | None = Field(default=None, description="Greeting for new members.")
    inactivity: Inactivity | None = Field(default=None, description="Inactivity policy. Absent: none.")
    lifecycle: Lifecycle = Field(
        default_factory=Lifecycle, description="Lifecycle phases.", json_schema_extra={"default": {}}
    )
    invite_links: InviteLinks | None = Field(
        default=None, description="Rotated invite links, the current one in status. Absent: none made."
    )
    rules_text: str | None = Field(
        default=None, max_length=TEXT_MAX, description="The group's rules, the bot's answer to /rules."
    )
    report_chat_id: ChatId | None = Field(
        default=None,
        description="Chat that /report (a reply to a message in the group) goes to. Absent: "
        "joinRequests.adminChatId, else the channel's supportChatId.",
    )
    scheduled_posts: list[ScheduledPost] = Field(
        default_factory=list,
        max_length=50,
        description="Posts the bot makes in the group, unique by name.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    def join_requests_in(self, phase: str) -> JoinRequests:
        """The join handling of `phase`: Monitoring's own when set, else joinRequests."""
        if phase == "Monitoring" and self.lifecycle.monitoring_join_requests is not None:
            return self.lifecycle.monitoring_join_requests
        return self.join_requests

    @field_validator("scheduled_posts")
    @classmethod
    def _unique_names(cls, posts: list[ScheduledPost]) -> list[ScheduledPost]:
        names = [post.name for post in posts]
        if len(set(names)) != len(names):
            raise ValueError("scheduled post names must be unique")
        return posts


class ManagedGroupStatus(ResourceStatus):
    """What the operator and the bot last observed about the group."""

    phase: GroupPhase | None = Field(default=None, description="Current lifecycle phase.")
    title: str | None = Field(default=None, max_length=255, description="Title of the Telegram chat.")
    member_count: Count | None = Field(default=None, description="Members of the group.")
    pending_join_requests: Count | None = Field(
        default=None, description="Join requests waiting for a decision."
    )
    warned_members: Count | None = Field(
        default=None, description="Members warned for inactivity, not yet back."
    )
    removed_members: Count | None = Field(
        default=None, description="Members removed for inactivity, all time."
    )
    last_activity_at: Timestamp | None = Field(
        default=None, description="Latest message or join in the group."
    )
    phase_since: Timestamp | None = Field(default=None, description="When the group entered its phase.")
    target_members: Count | None = Field(
        default=None, description="The Growth target (lifecycle.growthUntilMembers)."
    )
    invite_link: str | None = Field(default=None, max_length=255, description="The current invite link.")
    invite_link_expires_at: Timestamp | None = Field(default=None, description="When it expires.")
    dry_run_candidates: list[ChatId] | None = Field(
        default=None,
        max_length=100,
        description="Dry run: user ids the inactivity policy would remove now (the first 100).",
    )
    dry_run_candidate_count: Count | None = Field(
        default=None, description="Dry run: how many members the inactivity policy would remove now."
    )
