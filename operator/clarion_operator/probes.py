"""Talks to the outside services a channel names: the Telegram Bot API (through aiogram) and SMTP servers."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import aiohttp
import aiosmtplib
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramAPIError, TelegramNetworkError, TelegramUnauthorizedError
from aiogram.utils.token import TokenValidationError

from clarion_operator.channel_logic import ChannelCheck, Verdict


@dataclass(frozen=True)
class WebhookPlan:
    """What setWebhook is called with."""

    url: str
    secret_token: str
    allowed_updates: list[str]
    max_connections: int
    drop_pending_updates: bool


_UNREACHABLE = (TelegramNetworkError, aiohttp.ClientError, asyncio.TimeoutError, OSError)


def _bot(token: str, api_base_url: str, timeout_seconds: float) -> Bot:
    server = TelegramAPIServer.from_base(api_base_url.rstrip("/"))
    session = AiohttpSession(api=server, timeout=timeout_seconds)
    return Bot(token, session=session)


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
        bot = _bot(token, api_base_url, timeout_seconds)
    except TokenValidationError:
        return ChannelCheck(Verdict(False, "InvalidToken", "the Secret's value is not a Telegram bot token"))
    try:
        try:
            me = await bot.get_me()
        except TelegramUnauthorizedError as exc:
            return ChannelCheck(Verdict(
                False, "InvalidToken", f"Telegram rejected the bot token (401 Unauthorized: {exc.message})"))
        except _UNREACHABLE as exc:
            return ChannelCheck(Verdict(None, "TelegramUnreachable", f"getMe failed: {exc!r}"))
        except TelegramAPIError as exc:
            return ChannelCheck(Verdict(False, "TelegramError", f"getMe failed: {exc.message}"))
        credentials = Verdict(True, "TokenAccepted", f"getMe answered @{me.username}")
        if webhook is None:
            return ChannelCheck(
                credentials,
                Verdict(False, "WebhookNotConfigured", "no spec.telegram.webhook: no updates are received"),
                webhook_configured=False, bot_id=me.id, bot_username=me.username,
            )
        verdict = await _ensure_webhook(bot, webhook, register=register)
        return ChannelCheck(credentials, verdict, bot_id=me.id, bot_username=me.username,
                            webhook_url=webhook.url if verdict.ok else None)
    finally:
        await bot.session.close()


async def _ensure_webhook(bot: Bot, plan: WebhookPlan, *, register: bool) -> Verdict:
    try:
        if not register:
            info = await bot.get_webhook_info()
            if info.url == plan.url:
                return Verdict(True, "WebhookSet", f"Telegram posts updates to {plan.url}")
        await bot.set_webhook(
            url=plan.url,
            secret_token=plan.secret_token,
            allowed_updates=plan.allowed_updates,
            max_connections=plan.max_connections,
            drop_pending_updates=plan.drop_pending_updates,
        )
    except _UNREACHABLE as exc:
        return Verdict(None, "TelegramUnreachable", f"setWebhook failed: {exc!r}")
    except TelegramAPIError as exc:
        return Verdict(False, "WebhookRejected", f"Telegram refused the webhook: {exc.message}")
    return Verdict(True, "WebhookSet", f"Telegram posts updates to {plan.url}")


async def delete_webhook(token: str, api_base_url: str, *, timeout_seconds: float) -> None:
    """deleteWebhook; raises aiogram's errors for the caller to judge."""
    bot = _bot(token, api_base_url, timeout_seconds)
    try:
        await bot.delete_webhook()
    finally:
        await bot.session.close()


async def check_smtp(
    *,
    host: str,
    port: int,
    tls: str,
    username: str | None,
    password: str | None,
    timeout_seconds: float,
    ca_file: str | None,
) -> ChannelCheck:
    """Connect (implicit TLS or STARTTLS as configured), authenticate if credentials are given, quit."""
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
        return ChannelCheck(Verdict(False, "AuthenticationFailed",
                                    f"{where} refused the credentials: {exc.code} {exc.message}"))
    except (TimeoutError, aiosmtplib.SMTPException, ssl.SSLError, OSError) as exc:
        return ChannelCheck(Verdict(None, "SmtpUnreachable", f"SMTP handshake with {where} failed: {exc!r}"))
    finally:
        if client.is_connected:
            client.close()
    action = "authenticated" if username is not None else "accepted the connection"
    return ChannelCheck(Verdict(True, "HandshakeSucceeded", f"{where} {action} ({tls})"))
