"""NotificationChannel decisions without I/O: webhook URL, stored config, conditions and status,
when to check again."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from clarion.db.channels import StoredTemplate
from clarion.keys import channel_key
from clarion.models import (
    ChannelReason,
    Condition,
    ConditionType,
    EmailSettings,
    NotificationChannelSpec,
    NotificationChannelStatus,
    TelegramSettings,
    WebPushSettings,
    WorkerLane,
    merge_conditions,
)
from clarion.models.base import ConditionStatus
from clarion.templates import template_problem

Section = TelegramSettings | EmailSettings | WebPushSettings


def webhook_endpoint(base_url: str, namespace: str, name: str) -> str:
    """The URL Telegram posts to: the webhook service's base URL plus `/tg/webhook/<ns>.<name>`."""
    return f"{base_url.rstrip('/')}/tg/webhook/{channel_key(namespace, name)}"


def stored_config(section: Section, vapid_public_key: str | None = None) -> dict[str, Any]:
    """The channel's section as stored in `channels.config`: camelCase, every default filled in, no
    Secret references; a webpush channel's also holds its VAPID public key (`vapidPublicKey`), once
    the key was found valid."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not k.endswith("SecretRef")}
        return value

    config: dict[str, Any] = strip(section.to_k8s())
    if vapid_public_key is not None:
        config["vapidPublicKey"] = vapid_public_key
    return config


def stored_templates(spec: NotificationChannelSpec) -> list[StoredTemplate]:
    """The channel's templates as its row stores them, each compiled once to learn whether it can be
    used: a broken one is stored with its error, and the API refuses it by name."""
    return [StoredTemplate.of(t, template_problem(t)) for t in spec.templates]


def templates_condition(templates: Sequence[StoredTemplate]) -> Condition:
    """TemplatesValid: True when every template compiles; False naming each one that does not."""
    broken = [f"template {t.name}: {t.error}" for t in templates if t.error is not None]
    if broken:
        return Condition.of(ConditionType.TEMPLATES_VALID, False, ChannelReason.TEMPLATE_INVALID,
                            "; ".join(broken)[:4000])
    count = len(templates)
    return Condition.of(ConditionType.TEMPLATES_VALID, True, ChannelReason.TEMPLATES_COMPILED,
                        f"{count} template{'' if count == 1 else 's'} compiled")


@dataclass(frozen=True)
class Verdict:
    """Outcome of one check, as the condition it becomes: Unknown when it could not be decided (the
    server was unreachable)."""

    status: ConditionStatus
    reason: ChannelReason
    message: str

    @classmethod
    def passed(cls, reason: ChannelReason, message: str) -> Verdict:
        return cls("True", reason, message)

    @classmethod
    def failed(cls, reason: ChannelReason, message: str) -> Verdict:
        return cls("False", reason, message)

    @classmethod
    def undecided(cls, reason: ChannelReason, message: str) -> Verdict:
        return cls("Unknown", reason, message)

    def condition(self, type_: ConditionType) -> Condition:
        return Condition.of(type_, self.status, self.reason, self.message)


@dataclass(frozen=True)
class ChannelCheck:
    """Everything a channel check found out."""

    credentials: Verdict
    webhook: Verdict | None = None  # None: not applicable (email, web push)
    webhook_configured: bool = True
    bot_id: int | None = None
    bot_username: str | None = None
    webhook_url: str | None = None
    vapid_public_key: str | None = None  # web push: the public key of a valid VAPID private key

    @property
    def ready(self) -> bool:
        """Credentials valid, and the webhook (when one is configured) not refused; an unreachable
        Telegram during setWebhook does not make a channel that can send unusable."""
        if self.credentials.status != "True":
            return False
        return self.webhook is None or not self.webhook_configured or self.webhook.status != "False"


def autoscaler_verdict(keda_lanes: Sequence[WorkerLane]) -> Verdict:
    """AutoscalerReady when every lane's scaler is in place: the operator's, or KEDA's ScaledObject."""
    if not keda_lanes:
        return Verdict.passed(ChannelReason.OPERATOR_SCALING, "the operator scales every lane's workers")
    lanes = ", ".join(keda_lanes)
    return Verdict.passed(ChannelReason.SCALED_OBJECTS_APPLIED,
                          f"KEDA ScaledObjects scale the workers of lane {lanes}; the operator the others")


def channel_conditions(check: ChannelCheck, templates: Sequence[StoredTemplate] = (),
                       autoscaler: Verdict | None = None) -> list[Condition]:
    """CredentialsValid, WebhookRegistered (telegram), TemplatesValid, AutoscalerReady (when the
    workers were reconciled) and the Ready summary (last).

    A broken template does not make the channel unready: it can still send everything else; nor does
    an autoscaler that is not in place (KEDA not installed): the workers run at their minimum.
    """
    conds = [check.credentials.condition(ConditionType.CREDENTIALS_VALID)]
    if check.webhook is not None:
        conds.append(check.webhook.condition(ConditionType.WEBHOOK_REGISTERED))
    conds.append(templates_condition(templates))
    if autoscaler is not None:
        conds.append(autoscaler.condition(ConditionType.AUTOSCALER_READY))
    if check.ready:
        note = "" if check.webhook is None or check.webhook.status == "True" else f"; {check.webhook.message}"
        conds.append(Condition.of(ConditionType.READY, True, ChannelReason.CHANNEL_READY,
                                  f"credentials valid{note}"))
    else:
        failing = check.credentials if check.credentials.status != "True" else check.webhook
        assert failing is not None
        conds.append(Condition.of(ConditionType.READY, False, failing.reason, failing.message))
    return conds


def channel_status(old: NotificationChannelStatus, check: ChannelCheck, conditions: list[Condition], *,
                   telegram: bool, webhook_secret_name: str | None, generation: int | None,
                   now: datetime) -> NotificationChannelStatus:
    """The status after a check; bot facts the check could not learn (Telegram unreachable) are kept."""
    return old.model_copy(update={
        "conditions": merge_conditions(old.conditions, conditions, generation=generation, now=now),
        "observed_generation": generation,
        "ready": check.ready,
        "last_checked_at": now.replace(microsecond=0),
        "bot_id": check.bot_id if check.bot_id is not None else old.bot_id,
        "bot_username": check.bot_username if check.bot_id is not None else old.bot_username,
        "webhook_url": check.webhook_url if telegram else None,
        "webhook_secret_name": webhook_secret_name,
        "vapid_public_key": check.vapid_public_key,
    })


def check_due(
    last_checked: datetime | None,
    *,
    ready: bool,
    interval_seconds: float,
    retry_seconds: float,
    now: datetime,
) -> bool:
    """Whether the periodic check should run: every interval when Ready, sooner when not."""
    if last_checked is None:
        return True
    wait = interval_seconds if ready else min(retry_seconds, interval_seconds)
    return now - last_checked >= timedelta(seconds=wait)
