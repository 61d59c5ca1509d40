"""NotificationChannel (`nc`): a delivery channel — a Telegram bot, an SMTP server or a web push identity."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import ConfigDict, Field, model_validator

from clarion.models.base import (
    HTTP_URL,
    CamelModel,
    ChatId,
    ResourceStatus,
    SecretKeyRef,
    StatusModel,
    Timestamp,
    cel,
    rules,
)
from clarion.models.campaign import Button, ContentLanguage, ParseMode

ChannelType = Literal["telegram", "email", "webpush"]
PUBLIC_BOT_API = "https://api.telegram.org"


class ChannelReason(StrEnum):
    """Reasons of a channel's conditions (CredentialsValid, WebhookRegistered, TemplatesValid,
    AutoscalerReady, Ready) and Events."""

    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_NOT_FOUND = "SecretKeyNotFound"
    NOT_CHECKED = "NotChecked"
    INVALID_TOKEN = "InvalidToken"
    TELEGRAM_ERROR = "TelegramError"
    TELEGRAM_UNREACHABLE = "TelegramUnreachable"
    TOKEN_ACCEPTED = "TokenAccepted"
    WEBHOOK_NOT_CONFIGURED = "WebhookNotConfigured"
    WEBHOOK_SET = "WebhookSet"
    WEBHOOK_REJECTED = "WebhookRejected"
    AUTHENTICATION_FAILED = "AuthenticationFailed"
    SMTP_UNREACHABLE = "SmtpUnreachable"
    HANDSHAKE_SUCCEEDED = "HandshakeSucceeded"
    VAPID_KEY_VALID = "VapidKeyValid"
    INVALID_VAPID_KEY = "InvalidVapidKey"
    CHANNEL_READY = "ChannelReady"
    TEMPLATES_COMPILED = "TemplatesCompiled"
    TEMPLATE_INVALID = "TemplateInvalid"
    OPERATOR_SCALING = "OperatorScaling"
    SCALED_OBJECTS_APPLIED = "ScaledObjectsApplied"
    KEDA_NOT_INSTALLED = "KedaNotInstalled"
    KEDA_OBJECT_REFUSED = "KedaObjectRefused"
    REDIS_ADDRESS_UNSUPPORTED = "RedisAddressUnsupported"


class ScaleReason(StrEnum):
    """Why a lane's worker Deployment was (or was not) resized: the reason of its scaling Events and
    of the last decision in status (docs/operator.md, "Worker autoscaling")."""

    SCALED_FROM_ZERO = "ScaledFromZero"
    BACKLOG_GREW = "BacklogGrew"
    BELOW_MINIMUM = "BelowMinimum"
    ABOVE_MAXIMUM = "AboveMaximum"
    BACKLOG_SHRANK = "BacklogShrank"
    IDLE = "Idle"
    STEADY = "Steady"
    COOLING_DOWN = "CoolingDown"
    LAG_UNKNOWN = "LagUnknown"
    BACKLOG_UNREADABLE = "BacklogUnreadable"


class LagSource(StrEnum):
    """Where the lag of a lane's backlog came from (`clarion.backlog.read_backlog`; docs/operator.md,
    "Worker autoscaling")."""

    NO_STREAM = "NoStream"
    NO_GROUP = "NoGroup"
    REPORTED = "Reported"
    LENGTH = "Length"
    COUNTED = "Counted"
    UNKNOWN = "Unknown"


BotLanguage = Literal["en", "ru"]
#: Every language the bot speaks, in menu order: the one list (the bot's catalog, the channel rows).
BOT_LANGUAGES: tuple[BotLanguage, ...] = get_args(BotLanguage)
#: The language of a channel that names none, and of texts a language lacks.
DEFAULT_BOT_LANGUAGE: BotLanguage = "en"
TelegramUpdateType = Literal[
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "business_connection",
    "business_message",
    "edited_business_message",
    "deleted_business_messages",
    "message_reaction",
    "message_reaction_count",
    "inline_query",
    "chosen_inline_result",
    "callback_query",
    "shipping_query",
    "pre_checkout_query",
    "purchased_paid_media",
    "poll",
    "poll_answer",
    "my_chat_member",
    "chat_member",
    "chat_join_request",
    "chat_boost",
    "removed_chat_boost",
]
# What the bot's features need: DMs and commands, buttons, join requests and member changes.
DEFAULT_ALLOWED_UPDATES: tuple[TelegramUpdateType, ...] = (
    "message",
    "edited_message",
    "callback_query",
    "my_chat_member",
    "chat_member",
    "chat_join_request",
)


class TelegramWebhook(CamelModel):
    """How Telegram delivers updates: the operator calls setWebhook with these settings."""

    url: str = Field(
        min_length=9,
        max_length=2048,
        pattern=HTTP_URL,
        description=(
            "Public base URL of the webhook service; the operator registers "
            "<url>/tg/webhook/<namespace>.<name> with setWebhook."
        ),
    )
    secret_token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret holding the X-Telegram-Bot-Api-Secret-Token value (1-256 of A-Z a-z 0-9 _ -). "
            "Absent: the operator generates one into a Secret it owns."
        ),
    )
    allowed_updates: list[TelegramUpdateType] = Field(
        default_factory=lambda: list(DEFAULT_ALLOWED_UPDATES),
        max_length=32,
        description="Update types Telegram sends; chat_member must be listed to see member changes.",
        json_schema_extra={"default": list(DEFAULT_ALLOWED_UPDATES)},
    )
    max_connections: int = Field(
        default=40, ge=1, le=100, description="Simultaneous HTTPS connections Telegram opens to the webhook."
    )
    drop_pending_updates: bool = Field(
        default=False, description="Drop updates that queued up while no webhook was set."
    )


class MiniApp(CamelModel):
    """The channel's support Mini App (docs/support.md): where admins answer requests."""

    url: str = Field(
        min_length=9, max_length=2048, pattern=r"^https://[^\s]+$",
        description="Public HTTPS URL of the Mini App page, the webhook service's /app/ (as registered "
                    "with BotFather); the Reply button of a post in a private support chat opens it.")
    short_name: str | None = Field(
        default=None, min_length=3, max_length=64, pattern=r"^[A-Za-z0-9_]+$",
        description="The Mini App's short name from BotFather. A group support chat allows no web_app "
                    "button, so its posts' Reply button is the link t.me/<bot>/<shortName>?startapp=t<id>; "
                    "without it a group's posts can be answered only in the chat.")

    def reply_link(self, chat_id: int, thread_id: int,
                   bot_username: str | None) -> tuple[Literal["web_app", "url"], str] | None:
        """The Reply button of thread `thread_id`'s post in chat `chat_id`: a `web_app` button opening
        `<url>?thread=<id>` in a private chat (the only chats the Bot API allows them in), else the link
        `https://t.me/<bot>/<shortName>?startapp=t<id>` (the page reads the id from `start_param`); None
        when neither is possible (a group chat and no short name)."""
        if chat_id > 0:
            return "web_app", f"{self.url}{'&' if '?' in self.url else '?'}thread={thread_id}"
        if self.short_name and bot_username:
            return "url", f"https://t.me/{bot_username}/{self.short_name}?startapp=t{thread_id}"
        return None


class SupportSettings(CamelModel):
    """How support requests are answered besides in the chat (docs/support.md)."""

    mini_app: MiniApp | None = Field(
        default=None, description="The Mini App admins answer in. Absent: only the in-chat reply.")
    reply_email_channel: str | None = Field(
        default=None, min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Name of an email NotificationChannel in this namespace that sends the answers to "
                    "requests from POST /api/v1/requests. Absent: that endpoint refuses this channel.")


class TelegramRateLimits(CamelModel):
    """Sending limits, enforced across every pod of this bot by one shared limiter."""

    global_per_second: int = Field(default=30, ge=1, le=30, description="Messages per second, all chats.")
    per_chat_per_second: int = Field(
        default=1, ge=1, le=30, description="Messages per second to one private chat."
    )
    per_group_per_minute: int = Field(
        default=20, ge=1, le=20, description="Messages per minute to one group."
    )
    paid_broadcast_per_second: int = Field(
        default=1000,
        ge=1,
        le=1000,
        description="Messages per second for campaigns with delivery.paidBroadcast (paid in Telegram Stars).",
    )


class BotDeployment(CamelModel):
    """The bot Deployment the operator runs for this channel."""

    replicas: int = Field(
        default=2, ge=0, le=10, description="Bot pods; per-chat ordering holds across them."
    )


#: A lane of a channel's notifications as the public API takes it: instant or bulk.
Lane = Literal["instant", "bulk"]
#: A lane of notification rows: the API's two, and `group-posts` (ManagedGroup posts, ADR 0010), which
#: only Clarion itself fills (`clarion.db.group_posts`); `clarion.streams.LANES` lists the same names.
NotificationLane = Literal["instant", "bulk", "group-posts"]
#: A lane of a channel's workers: a stream, the consumer group `workers`, and (ADR 0008) a worker
#: Deployment `<channel>-workers-<lane>`. The notification lanes, and `group-maintenance` (GroupTask
#: entries, ADR 0010); the two group lanes only for telegram channels (`worker_lanes`).
WorkerLane = Literal["instant", "bulk", "group-posts", "group-maintenance"]
GROUP_LANES: tuple[WorkerLane, ...] = ("group-posts", "group-maintenance")


def worker_lanes(channel_type: str) -> tuple[WorkerLane, ...]:
    """The worker lanes a channel of `channel_type` has: every one for telegram (its groups), the API's
    two for email and web push."""
    if channel_type == "telegram":
        return get_args(WorkerLane)
    return get_args(Lane)


def lane_field(lane: WorkerLane) -> str:
    """The field of a worker lane in `LaneOverrides` and `WorkersStatus` (`group-posts`: group_posts)."""
    return lane.replace("-", "_")


#: Who scales a lane's worker Deployment: the operator itself, or KEDA through a ScaledObject it emits.
AutoscalingEngine = Literal["operator", "keda"]
MAX_WORKER_REPLICAS = 50

MinReplicas = Annotated[int, Field(ge=0, le=MAX_WORKER_REPLICAS,
                                   description="Fewest worker pods of the lane; 0: none while it is idle.")]
MaxReplicas = Annotated[int, Field(
    ge=0, le=MAX_WORKER_REPLICAS,
    description="Most worker pods of the lane; 0: the lane is off (none sent).")]
TargetLag = Annotated[int, Field(
    ge=1, le=1_000_000,
    description="Entries waiting (undelivered plus unacknowledged) per worker pod: "
                "desired pods = ceil(waiting / targetLagPerReplica).")]
Cooldown = Annotated[int, Field(
    ge=5, le=86400,
    description="Seconds the lane must have needed fewer pods, continuously, before it loses any.")]

_MIN_NOT_ABOVE_MAX = cel(
    "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
    "minReplicas must not exceed maxReplicas",
    field_path=".minReplicas",
    reason="FieldValueInvalid",
)


def _check_bounds(low: int | None, high: int | None) -> None:
    """The model's side of `_MIN_NOT_ABOVE_MAX`."""
    if low is not None and high is not None and low > high:
        raise ValueError(_MIN_NOT_ABOVE_MAX["message"])


class LaneAutoscaling(CamelModel):
    """Autoscaling of one lane's workers. A field left out takes the value of the level above: the
    channel's `autoscaling`, then the operator's cluster defaults, then the defaults of
    `ScalingPolicy` (docs/operator.md, "Worker autoscaling")."""

    model_config = ConfigDict(json_schema_extra=rules(_MIN_NOT_ABOVE_MAX))

    engine: AutoscalingEngine | None = Field(
        default=None,
        description="operator: the operator polls the lane's consumer group and sets the Deployment's "
                    "scale (reacts within seconds); keda: it emits a KEDA ScaledObject (redis-streams "
                    "trigger, lag mode) instead. Absent: the level above (ADR 0008), else operator.",
    )
    min_replicas: MinReplicas | None = None
    max_replicas: MaxReplicas | None = None
    target_lag_per_replica: TargetLag | None = None
    scale_down_cooldown_seconds: Cooldown | None = None

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Self:
        _check_bounds(self.min_replicas, self.max_replicas)
        return self


class LaneOverrides(CamelModel):
    """Settings of one lane that differ from the channel's (one field per lane)."""

    instant: LaneAutoscaling | None = Field(default=None, description="The instant lane's overrides.")
    bulk: LaneAutoscaling | None = Field(default=None, description="The bulk lane's overrides.")
    group_posts: LaneAutoscaling | None = Field(
        default=None, description="The group-posts lane's overrides (telegram channels).")
    group_maintenance: LaneAutoscaling | None = Field(
        default=None, description="The group-maintenance lane's overrides (telegram channels).")

    def of(self, lane: WorkerLane) -> LaneAutoscaling | None:
        found: LaneAutoscaling | None = getattr(self, lane_field(lane))
        return found


class ScalingPolicy(CamelModel):
    """The autoscaling in force for one lane's workers, every field resolved. Its defaults are the
    defaults of autoscaling: they apply where neither the channel nor the cluster sets a field."""

    model_config = ConfigDict(frozen=True)

    engine: AutoscalingEngine = "operator"
    min_replicas: MinReplicas = 0
    max_replicas: MaxReplicas = 10
    target_lag_per_replica: TargetLag = 100
    scale_down_cooldown_seconds: Cooldown = 300

    @property
    def full_scale_backlog(self) -> int:
        """Entries waiting at which the lane needs maxReplicas: a backlog reader need count no further
        (at least 1: a lane turned off, maxReplicas 0, still reports whether anything waits)."""
        return max(1, self.max_replicas * self.target_lag_per_replica)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Self:
        _check_bounds(self.min_replicas, self.max_replicas)
        return self


class WorkerAutoscaling(LaneAutoscaling):
    """How the operator sizes each lane's worker Deployment on the lane's stream backlog (ADR 0008).

    The same model holds the cluster defaults (the operator's `CLARION_WORKER_AUTOSCALING`, from the
    chart's values); `policy` resolves one lane's settings from both.
    """

    lanes: LaneOverrides | None = Field(
        default=None, description="Per-lane settings that differ from the ones above.")

    def policy(self, lane: WorkerLane, cluster: WorkerAutoscaling | None = None) -> ScalingPolicy:
        """The settings of `lane`: each field from the most specific level that sets it (this lane's
        overrides, this object, the cluster's lane overrides, the cluster's own, `ScalingPolicy`).

        A group lane (group-posts, group-maintenance) takes minReplicas only from its own overrides
        (the channel's `lanes`, then the cluster's), else 0: a channel's floor for its notification
        lanes does not keep idle pods for groups it may not have.

        minReplicas and maxReplicas found on different levels may disagree (a channel's maxReplicas 3
        under a cluster's minReplicas 5): the bound set on the more specific level wins and the other
        one moves to it, so every combination of valid levels resolves.
        """
        candidates = ((self.lanes and self.lanes.of(lane), True), (self, False),
                      (cluster and cluster.lanes and cluster.lanes.of(lane), True), (cluster, False),
                      (ScalingPolicy(), False))
        levels = [(level, own) for level, own in candidates if level is not None]
        found: dict[str, object] = {}
        rank: dict[str, int] = {}
        for depth, (level, own) in enumerate(levels):
            for name, value in level.model_dump(exclude_none=True, exclude={"lanes"}).items():
                if name == "min_replicas" and lane in GROUP_LANES and not own and depth < len(levels) - 1:
                    continue  # a group lane idles at zero unless its own overrides say otherwise
                if name not in found:
                    found[name], rank[name] = value, depth
        low, high = found["min_replicas"], found["max_replicas"]
        if isinstance(low, int) and isinstance(high, int) and low > high:
            if rank["min_replicas"] < rank["max_replicas"]:
                found["max_replicas"] = low
            else:
                found["min_replicas"] = high
        return ScalingPolicy.model_validate(found)


class WorkerDeployment(CamelModel):
    """The notification worker Deployments the operator runs for this channel (`clarion-worker`)."""

    concurrency: int = Field(default=32, ge=1, le=2000, description="Sends in flight per worker pod.")
    autoscaling: WorkerAutoscaling = Field(
        default_factory=WorkerAutoscaling,
        description="Scaling of each lane's workers on its stream backlog; unset fields take the "
                    "cluster defaults (ADR 0008).",
        json_schema_extra={"default": {}},
    )


Replicas = Annotated[int, Field(ge=0, le=2**31 - 1, json_schema_extra={"format": "int32"})]
Entries = Annotated[int, Field(ge=0, le=2**53, json_schema_extra={"format": "int64"})]


class ScaleEvent(StatusModel):
    """One resize of a lane's worker Deployment by the operator's autoscaler (also an Event)."""

    from_replicas: Replicas = Field(alias="from", description="Pods the Deployment had.")
    to_replicas: Replicas = Field(alias="to", description="Pods it was set to.")
    reason: ScaleReason = Field(description="Why (docs/operator.md, \"Worker autoscaling\").")
    time: Timestamp = Field(description="When the autoscaler set it.")


class LaneWorkersStatus(StatusModel):
    """One lane's worker Deployment as the autoscaler last saw it (docs/operator.md, "Worker autoscaling").

    engine, replicas, readyReplicas, lagSource and lastScale are written when they change; lag,
    pending and desired, which move on every poll under load, with them, when the lane turns busy or
    idle, and otherwise at most every 10 s (`clarion_stream_lag` has every poll).
    """

    engine: AutoscalingEngine = Field(description="Who scales the lane: operator or keda.")
    replicas: Replicas | None = Field(default=None,
                                      description="Pods the Deployment asks for (spec.replicas).")
    ready_replicas: Replicas | None = Field(default=None, description="Pods ready (the Deployment's status).")
    desired: Replicas | None = Field(
        default=None, description="Pods the last poll's backlog needs, within minReplicas and maxReplicas "
                                  "(below replicas while a scale-down cools down); absent with engine keda.")
    lag: Entries | None = Field(
        default=None, description="Entries not yet delivered to any worker (at least this many when "
                                  "lagSource is Unknown).")
    pending: Entries | None = Field(default=None, description="Entries delivered and not yet acknowledged.")
    lag_source: LagSource | None = Field(
        default=None, description="How the lag was counted, when Redis did not report it (absent: Reported).")
    last_scale: ScaleEvent | None = Field(
        default=None, description="The autoscaler's last resize; absent with engine keda.")


class WorkersStatus(StatusModel):
    """Each lane's workers, one field per `WorkerLane`; absent until the lane's Deployment exists."""

    instant: LaneWorkersStatus | None = Field(default=None, description="The instant lane's workers.")
    bulk: LaneWorkersStatus | None = Field(default=None, description="The bulk lane's workers.")
    group_posts: LaneWorkersStatus | None = Field(
        default=None, description="The group-posts lane's workers (telegram channels).")
    group_maintenance: LaneWorkersStatus | None = Field(
        default=None, description="The group-maintenance lane's workers (telegram channels).")

    def of(self, lane: WorkerLane) -> LaneWorkersStatus | None:
        found: LaneWorkersStatus | None = getattr(self, lane_field(lane))
        return found

    @classmethod
    def of_lanes(cls, lanes: dict[WorkerLane, LaneWorkersStatus]) -> WorkersStatus:
        return cls.model_validate({lane_field(lane): status for lane, status in lanes.items()})


class TelegramSettings(CamelModel):
    """A Telegram bot."""

    bot_token_secret_ref: SecretKeyRef = Field(
        description="Secret key holding the bot token from @BotFather."
    )
    api_base_url: str = Field(
        default=PUBLIC_BOT_API,
        max_length=2048,
        pattern=HTTP_URL,
        description="Bot API server: the public one, a local Bot API server, or the emulator in tests.",
    )
    webhook: TelegramWebhook | None = Field(
        default=None,
        description="Webhook registration. Absent: the channel only sends, it receives no updates.",
    )
    rate_limits: TelegramRateLimits = Field(
        default_factory=TelegramRateLimits,
        description="Sending limits (Telegram's published limits are the maxima).",
        json_schema_extra={"default": {}},
    )
    admin_chat_ids: list[ChatId] = Field(
        default_factory=list, max_length=100, description="Telegram user ids allowed to use admin commands."
    )
    support_chat_id: ChatId | None = Field(
        default=None,
        description="Chat where the support inbox posts users' direct messages; admins reply there.",
    )
    default_language: BotLanguage = Field(
        default=DEFAULT_BOT_LANGUAGE, description="Language of the bot's own texts for users who chose none."
    )
    support: SupportSettings = Field(
        default_factory=SupportSettings,
        description="The Mini App and the email channel support requests are answered with.",
        json_schema_extra={"default": {}},
    )
    bot: BotDeployment = Field(
        default_factory=BotDeployment,
        description="The bot Deployment that handles this channel's updates.",
        json_schema_extra={"default": {}},
    )


SmtpTls = Literal["none", "starttls", "tls"]


class EmailSettings(CamelModel):
    """An SMTP server to send through."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.usernameSecretRef) == has(self.passwordSecretRef)",
                "usernameSecretRef and passwordSecretRef must be set together",
                reason="FieldValueInvalid",
            )
        )
    )

    host: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9.:\[\]-]+$",
        description="SMTP server host name or IP.",
    )
    port: int = Field(default=587, ge=1, le=65535, description="SMTP server port.")
    tls: SmtpTls = Field(
        default="starttls",
        description="none: plain text; starttls: upgrade after connecting; tls: implicit TLS.",
    )
    username_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the SMTP user name. Absent: no authentication."
    )
    password_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the SMTP password."
    )
    from_: str = Field(
        alias="from",
        min_length=3,
        max_length=320,
        pattern=r"^[^\r\n]*[^@\s<>]+@[^@\s<>]+[^\r\n]*$",
        description='Sender, "Name <address>" or a bare address.',
    )
    rate_per_second: int = Field(default=10, ge=1, le=1000, description="Messages per second to this server.")

    @model_validator(mode="after")
    def _credentials_together(self) -> Self:
        if (self.username_secret_ref is None) != (self.password_secret_ref is None):
            raise ValueError("usernameSecretRef and passwordSecretRef must be set together")
        return self


#: RFC 8030 §5.3: how urgently the push service should deliver (a device on battery may wait for `low`).
PushUrgency = Literal["very-low", "low", "normal", "high"]
#: The longest TTL a push service is asked to keep a message for: 28 days (FCM's and Mozilla's cap).
MAX_PUSH_TTL_SECONDS = 2_419_200


class WebPushDelivery(CamelModel):
    """How a web push channel's messages are sent: the VAPID subject and the defaults of the TTL and
    Urgency headers (a notification's `ttl` and `urgency` override them). `channels.config` of a
    webpush channel holds these, with the public key (`vapidPublicKey`) and no Secret reference."""

    subject: str = Field(
        min_length=8,
        max_length=2048,
        pattern=r"^(mailto:[^\s]+|https://[^\s]+)$",
        description="VAPID subject (RFC 8292 §2.1): a mailto: or https: contact for push services.",
    )
    ttl_seconds: int = Field(
        default=86400, ge=0, le=MAX_PUSH_TTL_SECONDS,
        description="TTL header (RFC 8030 §5.2): seconds the push service keeps an undelivered message; "
                    "0: deliver now or drop.")
    urgency: PushUrgency = Field(default="normal", description="Urgency header (RFC 8030 §5.3).")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> WebPushDelivery:
        """The settings as a webpush channel's row stores them (`channels.config`)."""
        names = {field.alias or name for name, field in cls.model_fields.items()}
        return cls.model_validate({k: v for k, v in config.items() if k in names})


class WebPushSettings(WebPushDelivery):
    """A VAPID identity for web push (RFC 8292; docs/notifications.md, "Web push")."""

    vapid_private_key_secret_ref: SecretKeyRef = Field(
        description="Secret key holding the VAPID private key: the 32-byte P-256 private scalar, "
                    "base64url (what `npx web-push generate-vapid-keys` prints as the private key).",
    )


#: A template's name: a DNS label, as the API's `content.template.name` gives it.
TEMPLATE_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
#: A template variable's name: what `{{ name }}` refers to, and the key in `content.template.variables`.
VARIABLE_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
TEMPLATE_TEXT_MAX = 4096
TEMPLATE_HTML_MAX = 16384
MAX_TEMPLATES = 32


class TemplateVariable(CamelModel):
    """A variable a template uses: required unless it has a default."""

    name: str = Field(min_length=1, max_length=64, pattern=VARIABLE_NAME,
                      description="Name the template reads (a Jinja variable) and the API's variables key.")
    description: str | None = Field(default=None, max_length=256, description="What the caller passes.")
    default: str | None = Field(
        default=None, max_length=1024,
        description="Value when the caller passes none. Absent: the variable is required.")


class TemplateButton(Button):
    """An inline keyboard button of a Telegram template; text, url and callbackData may use variables."""

    text: str = Field(min_length=1, max_length=256, description="Label shown on the button (a template).")
    url: str | None = Field(default=None, max_length=2048, pattern=r"^(https?|tg)://",
                            description="URL opened by the button (a template; http, https or tg).")
    callback_data: str | None = Field(default=None, min_length=1, max_length=256,
                                      description="Data sent to the bot when pressed (a template; renders to "
                                                  "at most 64 bytes).")


class TemplateVariant(CamelModel):
    """The template in one language: the content fields of the channel's type, as Jinja templates.

    Telegram channels: text, parseMode, buttons. Email channels: subject, text, html.
    """

    language: ContentLanguage = Field(description="Language of this variant (ISO 639-1).")
    text: str = Field(min_length=1, max_length=TEMPLATE_TEXT_MAX,
                      description="Message text (Telegram: in parseMode) or the email's plain text.")
    parse_mode: ParseMode | None = Field(default=None,
                                         description="Telegram: HTML, MarkdownV2 or None (the default).")
    buttons: list[Annotated[list[TemplateButton], Field(min_length=1, max_length=8)]] | None = Field(
        default=None, max_length=10, description="Telegram: inline keyboard, up to 10 rows of 8 buttons.")
    subject: str | None = Field(default=None, min_length=1, max_length=998, pattern=r"^[^\r\n]*$",
                                description="Email: subject line (required for email channels).")
    html: str | None = Field(default=None, min_length=1, max_length=TEMPLATE_HTML_MAX,
                             description="Email: HTML alternative of the text.")

    def problem_for(self, channel_type: ChannelType) -> str | None:
        """Why this variant cannot be content of a `channel_type` channel; None when it can."""
        if channel_type == "telegram" and (self.subject is not None or self.html is not None):
            return "subject and html are for email channels"
        if channel_type == "email" and self.subject is None:
            return "an email template needs a subject"
        if channel_type == "email" and (self.parse_mode is not None or self.buttons is not None):
            return "parseMode and buttons are for telegram channels"
        if channel_type == "webpush":
            return "web push channels have no templates"
        return None


class ChannelTemplate(CamelModel):
    """A message template of the channel: `POST /api/v1/notifications` names it with variables and a
    language, and the API renders it (Jinja, sandboxed) at accept time (docs/notifications.md, ADR 0007)."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.variants.exists(v, v.language == self.defaultLanguage)",
                "defaultLanguage must be the language of one of the variants",
                field_path=".defaultLanguage",
                reason="FieldValueInvalid",
            )
        )
    )

    name: str = Field(min_length=1, max_length=63, pattern=TEMPLATE_NAME,
                      description="Name the API's content.template.name refers to.")
    description: str | None = Field(default=None, max_length=256, description="What the template is for.")
    variables: list[TemplateVariable] = Field(
        default_factory=list, max_length=32,
        description="Variables the template uses; a reference to an undeclared one makes it invalid.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    default_language: ContentLanguage = Field(
        default=DEFAULT_BOT_LANGUAGE,
        description="Variant used when the request names no language or one without a variant.",
    )
    variants: list[TemplateVariant] = Field(
        min_length=1, max_length=8, description="The template per language.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["language"]},
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        languages = [v.language for v in self.variants]
        if len(set(languages)) != len(languages):
            raise ValueError("each variant needs its own language")
        if self.default_language not in languages:
            raise ValueError("defaultLanguage must be the language of one of the variants")
        names = [v.name for v in self.variables]
        if len(set(names)) != len(names):
            raise ValueError("each variable needs its own name")
        return self

    @property
    def revision(self) -> str:
        """A digest of the template: compiled templates are cached by it, so an edit is a new one."""
        canonical = json.dumps(self.to_k8s(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


_TYPE_RULES = [
    cel(
        f"self.type != '{kind}' || has(self.{kind})",
        f"{kind} is required when type is {kind}",
        field_path=f".{kind}",
        reason="FieldValueRequired",
    )
    for kind in ("telegram", "email", "webpush")
] + [
    cel(
        f"!has(self.{kind}) || self.type == '{kind}'",
        f"{kind} may only be set when type is {kind}",
        field_path=f".{kind}",
        reason="FieldValueForbidden",
    )
    for kind in ("telegram", "email", "webpush")
] + [
    cel(
        "self.type != 'telegram' || !has(self.templates) || "
        "self.templates.all(t, t.variants.all(v, !has(v.subject) && !has(v.html)))",
        "templates of a telegram channel have no subject or html",
        field_path=".templates",
        reason="FieldValueForbidden",
    ),
    cel(
        "self.type != 'email' || !has(self.templates) || "
        "self.templates.all(t, t.variants.all(v, has(v.subject) && !has(v.parseMode) && !has(v.buttons)))",
        "templates of an email channel need a subject and have no parseMode or buttons",
        field_path=".templates",
        reason="FieldValueInvalid",
    ),
    cel(
        "self.type != 'webpush' || !has(self.templates) || size(self.templates) == 0",
        "web push channels have no templates",
        field_path=".templates",
        reason="FieldValueForbidden",
    ),
]


class NotificationChannelSpec(CamelModel):
    """A delivery channel: exactly one of telegram, email or webpush, matching `type`."""

    model_config = ConfigDict(json_schema_extra=rules(*_TYPE_RULES))

    type: ChannelType = Field(description="Kind of channel; the section of the same name must be set.")
    telegram: TelegramSettings | None = Field(
        default=None, description="Telegram bot settings (type telegram)."
    )
    email: EmailSettings | None = Field(default=None, description="SMTP settings (type email).")
    webpush: WebPushSettings | None = Field(default=None, description="Web push settings (type webpush).")
    health_check_interval_seconds: int = Field(
        default=300,
        ge=30,
        le=86400,
        description="Seconds between credential checks (getMe, SMTP handshake, the VAPID key).",
    )
    workers: WorkerDeployment = Field(
        default_factory=WorkerDeployment,
        description="Notification workers of the channel.",
    )
    templates: list[ChannelTemplate] = Field(
        default_factory=list, max_length=MAX_TEMPLATES,
        description="Message templates the API renders (telegram and email channels; ADR 0007).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @property
    def section(self) -> TelegramSettings | EmailSettings | WebPushSettings:
        """The settings of the channel's type (the model guarantees that exactly that one is set)."""
        found = {"telegram": self.telegram, "email": self.email, "webpush": self.webpush}[self.type]
        assert found is not None
        return found

    def secret_refs(self) -> list[SecretKeyRef]:
        """Every Secret key the channel reads (a change to one of those Secrets triggers a re-check)."""
        refs: list[SecretKeyRef | None] = []
        if self.telegram is not None:
            webhook = self.telegram.webhook
            refs += [self.telegram.bot_token_secret_ref, webhook.secret_token_secret_ref if webhook else None]
        if self.email is not None:
            refs += [self.email.username_secret_ref, self.email.password_secret_ref]
        if self.webpush is not None:
            refs.append(self.webpush.vapid_private_key_secret_ref)
        return [ref for ref in refs if ref is not None]

    @model_validator(mode="after")
    def _section_matches_type(self) -> Self:
        for kind in ("telegram", "email", "webpush"):
            present = getattr(self, kind) is not None
            if kind == self.type and not present:
                raise ValueError(f"{kind} is required when type is {kind}")
            if kind != self.type and present:
                raise ValueError(f"{kind} may only be set when type is {kind}")
        names = [t.name for t in self.templates]
        if len(set(names)) != len(names):
            raise ValueError("each template needs its own name")
        for template in self.templates:
            for variant in template.variants:
                problem = variant.problem_for(self.type)
                if problem is not None:
                    raise ValueError(f"template {template.name}, language {variant.language}: {problem}")
        return self


class NotificationChannelStatus(ResourceStatus):
    """What the operator last observed about the channel."""

    ready: bool | None = Field(default=None, description="True when credentials and webhook are in order.")
    bot_id: ChatId | None = Field(default=None, description="Telegram id of the bot (from getMe).")
    bot_username: str | None = Field(default=None, max_length=64, description="@username of the bot.")
    webhook_url: str | None = Field(
        default=None, max_length=2048, description="Webhook URL registered with Telegram."
    )
    webhook_secret_name: str | None = Field(
        default=None, max_length=253, description="Secret holding the webhook secret token in use."
    )
    last_checked_at: Timestamp | None = Field(default=None, description="Time of the last health check.")
    workers: WorkersStatus | None = Field(
        default=None,
        description="Each lane's worker Deployment and backlog, as the autoscaler last saw them.")
    vapid_public_key: str | None = Field(
        default=None, max_length=128,
        description="Web push: the VAPID public key (uncompressed P-256 point, base64url), the "
                    "applicationServerKey a browser subscribes with (pushManager.subscribe).")
