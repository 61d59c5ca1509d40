"""Checks a channel's credentials against the services it names: the Telegram Bot API (getMe,
setWebhook through `botapi`) and SMTP servers (a handshake, with login when credentials are given); a
web push channel's VAPID key is checked on its own (push services have nothing to ask)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import aiosmtplib
from clarion import webpush
from clarion.models import ChannelReason, EmailSettings
from clarion.telegram.botapi import UNREACHABLE, BotApi, BotApiError, InvalidTokenFormat

from clarion_operator.channel_logic import ChannelCheck, Verdict


@dataclass(frozen=True)
class WebhookPlan:
    """What setWebhook is called with."""

    url: str
    secret_token: str
    allowed_updates: list[str]
    max_connections: int
    drop_pending_updates: bool


async def check_telegram(
    token: str,
    api_base_url: str,
    webhook: WebhookPlan | None,
    *,
    register: bool,
    timeout_seconds: float,
) -> ChannelCheck:
    """getMe, then make sure the webhook is registered (always when `register`, else only if it drifted)."""
    try:
        api = BotApi(token, api_base_url, timeout_seconds=timeout_seconds)
    except InvalidTokenFormat:
        not_a_token = "the Secret's value is not a Telegram bot token"
        return ChannelCheck(Verdict.failed(ChannelReason.INVALID_TOKEN, not_a_token))
    async with api:
        try:
            me = await api.get_me()
        except BotApiError as exc:
            if exc.unauthorized:
                rejected = f"Telegram rejected the bot token (401 Unauthorized: {exc.message})"
                return ChannelCheck(Verdict.failed(ChannelReason.INVALID_TOKEN, rejected))
            failed = f"getMe failed: {exc.message}"
            return ChannelCheck(Verdict.failed(ChannelReason.TELEGRAM_ERROR, failed))
        except UNREACHABLE as exc:
            unreachable = f"getMe failed: {exc!r}"
            return ChannelCheck(Verdict.undecided(ChannelReason.TELEGRAM_UNREACHABLE, unreachable))
        credentials = Verdict.passed(ChannelReason.TOKEN_ACCEPTED, f"getMe answered @{me.username}")
        if webhook is None:
            return ChannelCheck(
                credentials,
                Verdict.failed(ChannelReason.WEBHOOK_NOT_CONFIGURED,
                               "no spec.telegram.webhook: no updates are received"),
                webhook_configured=False, bot_id=me.id, bot_username=me.username,
            )
        verdict = await _ensure_webhook(api, webhook, register=register)
        return ChannelCheck(credentials, verdict, bot_id=me.id, bot_username=me.username,
                            webhook_url=webhook.url if verdict.status == "True" else None)


async def _ensure_webhook(api: BotApi, plan: WebhookPlan, *, register: bool) -> Verdict:
    try:
        if not register and await api.get_webhook_url() == plan.url:
            return Verdict.passed(ChannelReason.WEBHOOK_SET, f"Telegram posts updates to {plan.url}")
        await api.set_webhook(
            url=plan.url,
            secret_token=plan.secret_token,
            allowed_updates=plan.allowed_updates,
            max_connections=plan.max_connections,
            drop_pending_updates=plan.drop_pending_updates,
        )
    except BotApiError as exc:
        return Verdict.failed(ChannelReason.WEBHOOK_REJECTED, f"Telegram refused the webhook: {exc.message}")
    except UNREACHABLE as exc:
        return Verdict.undecided(ChannelReason.TELEGRAM_UNREACHABLE, f"setWebhook failed: {exc!r}")
    return Verdict.passed(ChannelReason.WEBHOOK_SET, f"Telegram posts updates to {plan.url}")


async def delete_webhook(token: str, api_base_url: str, *, timeout_seconds: float) -> None:
    """deleteWebhook; raises InvalidTokenFormat, BotApiError or an `UNREACHABLE` error for the caller."""
    async with BotApi(token, api_base_url, timeout_seconds=timeout_seconds) as api:
        await api.delete_webhook()


async def check_smtp(
    email: EmailSettings,
    *,
    username: str | None,
    password: str | None,
    timeout_seconds: float,
    ca_file: str | None,
) -> ChannelCheck:
    """Connect (implicit TLS or STARTTLS as configured), authenticate if credentials are given, quit."""
    host, port, tls = email.host, email.port, email.tls
    context = ssl.create_default_context(cafile=ca_file) if tls != "none" else None
    client = aiosmtplib.SMTP(
        hostname=host, port=port, timeout=timeout_seconds,
        use_tls=tls == "tls", start_tls=tls == "starttls", tls_context=context,
    )
    where = f"{host}:{port}"
    try:
        await client.connect()
        if username is not None and password is not None:
            await client.login(username, password)
        await client.quit()
    except aiosmtplib.SMTPAuthenticationError as exc:
        return ChannelCheck(Verdict.failed(ChannelReason.AUTHENTICATION_FAILED,
                                           f"{where} refused the credentials: {exc.code} {exc.message}"))
    except (TimeoutError, aiosmtplib.SMTPException, ssl.SSLError, OSError) as exc:
        return ChannelCheck(Verdict.undecided(ChannelReason.SMTP_UNREACHABLE,
                                              f"SMTP handshake with {where} failed: {exc!r}"))
    finally:
        if client.is_connected:
            client.close()
    action = "authenticated" if username is not None else "accepted the connection"
    return ChannelCheck(Verdict.passed(ChannelReason.HANDSHAKE_SUCCEEDED, f"{where} {action} ({tls})"))


def check_vapid_key(value: str, where: str) -> ChannelCheck:
    """The Secret's value (`where`: namespace/name key) must be a VAPID private key: the 32-byte P-256
    scalar, base64url. Valid: its public key, the applicationServerKey browsers subscribe with."""
    try:
        key = webpush.vapid_key(value)
    except webpush.KeyProblem as exc:
        return ChannelCheck(Verdict.failed(
            ChannelReason.INVALID_VAPID_KEY,
            f"Secret {where} is not a VAPID private key: it {exc} (expected the 32-byte P-256 private key, "
            "base64url, as `npx web-push generate-vapid-keys` prints it)"))
    public = key.public_key
    return ChannelCheck(Verdict.passed(ChannelReason.VAPID_KEY_VALID, f"VAPID public key {public}"),
                        vapid_public_key=public)
