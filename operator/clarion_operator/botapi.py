"""A minimal Telegram Bot API client on aiohttp for the four calls the operator makes.

getMe, getWebhookInfo, setWebhook and deleteWebhook, each a JSON POST to
`<apiBaseUrl>/bot<token>/<method>`. Importing aiogram would cost the operator ~150 MB of resident
memory for these four calls (docs/operator.md, "Memory").
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

UNREACHABLE = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
"""What a call raises when Telegram could not be reached or did not answer in time."""


class InvalidTokenFormat(ValueError):
    """The string cannot be a bot token (`<digits>:<secret>`, no whitespace)."""


class BotApiError(Exception):
    """Telegram answered, and not with `ok: true`: the HTTP status, its description, retry_after on 429."""

    def __init__(self, method: str, status: int, description: str, retry_after: int | None = None) -> None:
        self.method = method
        self.status = status
        self.description = description
        self.retry_after = retry_after
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The description, with the wait Telegram asked for when it is rate limiting."""
        if self.retry_after is not None:
            return f"{self.description} (retry after {self.retry_after} s)"
        return self.description

    @property
    def unauthorized(self) -> bool:
        return self.status == 401


@dataclass(frozen=True)
class BotUser:
    """The part of getMe's answer the operator keeps."""

    id: int
    username: str | None


def validate_token(token: str) -> None:
    """Raise InvalidTokenFormat unless `token` looks like a bot token (a token in a URL must not surprise)."""
    left, sep, right = token.partition(":")
    if not sep or not left.isdigit() or not right or any(c.isspace() or c in "/?#%" for c in token):
        raise InvalidTokenFormat("the value is not a Telegram bot token")


class BotApi:
    """One bot's Bot API calls over one aiohttp session; use as `async with BotApi(...) as api:`."""

    def __init__(self, token: str, api_base_url: str, *, timeout_seconds: float) -> None:
        validate_token(token)
        self._prefix = f"{api_base_url.rstrip('/')}/bot{token}/"
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_seconds))

    async def __aenter__(self) -> BotApi:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._session.close()

    async def call(self, method: str, **params: Any) -> Any:
        """POST the parameters as JSON; the `result` on success, else BotApiError."""
        async with self._session.post(self._prefix + method, json=params) as response:
            text = await response.text()
        try:
            reply = json.loads(text)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise BotApiError(method, response.status, f"HTTP {response.status}, not a Bot API reply")
        if reply.get("ok") is True and response.status < 300:
            return reply.get("result")
        retry_after = (reply.get("parameters") or {}).get("retry_after")
        status = int(reply.get("error_code") or response.status)
        raise BotApiError(method, status, str(reply.get("description") or f"HTTP {response.status}"),
                          int(retry_after) if retry_after is not None else None)

    async def get_me(self) -> BotUser:
        me = await self.call("getMe")
        return BotUser(id=int(me["id"]), username=me.get("username"))

    async def get_webhook_url(self) -> str:
        """The URL Telegram currently posts updates to ("" when none)."""
        info = await self.call("getWebhookInfo")
        return str(info.get("url") or "")

    async def set_webhook(self, *, url: str, secret_token: str, allowed_updates: list[str],
                          max_connections: int, drop_pending_updates: bool) -> None:
        await self.call("setWebhook", url=url, secret_token=secret_token, allowed_updates=allowed_updates,
                        max_connections=max_connections, drop_pending_updates=drop_pending_updates)

    async def delete_webhook(self) -> None:
        await self.call("deleteWebhook")
