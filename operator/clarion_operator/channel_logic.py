"""NotificationChannel decisions without I/O: webhook URL, stored config, conditions, when to check."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from clarion_operator.conditions import condition

CREDENTIALS = "CredentialsValid"
WEBHOOK = "WebhookRegistered"
READY = "Ready"


def webhook_endpoint(base_url: str, namespace: str, name: str) -> str:
    """The URL Telegram posts to: the webhook service's base URL plus `/tg/webhook/<ns>.<name>`."""
    return f"{base_url.rstrip('/')}/tg/webhook/{namespace}.{name}"


def stored_config(section: dict[str, Any]) -> dict[str, Any]:
    """`spec.telegram` (or `spec.email`) as stored in `channels.config`: camelCase, no Secret references."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not k.endswith("SecretRef")}
        return copy.deepcopy(value)

    config: dict[str, Any] = strip(section)
    return config


def referenced_secrets(spec: dict[str, Any]) -> set[str]:
    """Names of the Secrets a channel spec reads (a change to one of them triggers a re-check)."""
    names: set[str] = set()
    telegram = spec.get("telegram") or {}
    webhook = telegram.get("webhook") or {}
    for ref in (telegram.get("botTokenSecretRef"), webhook.get("secretTokenSecretRef")):
        if isinstance(ref, dict) and ref.get("name"):
            names.add(ref["name"])
    email = spec.get("email") or {}
    for ref in (email.get("usernameSecretRef"), email.get("passwordSecretRef")):
        if isinstance(ref, dict) and ref.get("name"):
            names.add(ref["name"])
    return names


@dataclass(frozen=True)
class Verdict:
    """Outcome of one check: `ok` None means it could not be decided (e.g. the server was unreachable)."""

    ok: bool | None
    reason: str
    message: str


@dataclass(frozen=True)
class ChannelCheck:
    """Everything a channel check found out."""

    credentials: Verdict
    webhook: Verdict | None = None  # None: not applicable (email)
    webhook_configured: bool = True
    bot_id: int | None = None
    bot_username: str | None = None
    webhook_url: str | None = None

    @property
    def ready(self) -> bool:
        if self.credentials.ok is not True:
            return False
        return self.webhook is None or not self.webhook_configured or self.webhook.ok is not False


def channel_conditions(check: ChannelCheck) -> list[dict[str, Any]]:
    """CredentialsValid, WebhookRegistered (telegram) and the Ready summary."""
    cred = check.credentials
    conds = [condition(CREDENTIALS, cred.ok, cred.reason, cred.message)]
    if check.webhook is not None:
        conds.append(condition(WEBHOOK, check.webhook.ok, check.webhook.reason, check.webhook.message))
    if check.ready:
        note = "" if check.webhook is None or check.webhook.ok else f"; {check.webhook.message}"
        conds.append(condition(READY, True, "ChannelReady", f"credentials valid{note}"))
    else:
        failing = check.credentials if check.credentials.ok is not True else check.webhook
        assert failing is not None
        conds.append(condition(READY, False, failing.reason, failing.message))
    return conds


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
