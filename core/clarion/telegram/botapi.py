"""A small Telegram Bot API client on aiohttp, for the calls Clarion makes outside the bot.

Every call is a JSON POST to `<apiBaseUrl>/bot<token>/<method>`; the answer's `result` comes back as
plain JSON, and anything but `ok: true` raises `BotApiError` with Telegram's `error_code`,
`description` and `parameters` (`retry_after`, `migrate_to_chat_id`).

The operator (getMe, getWebhookInfo, setWebhook, deleteWebhook, getChatMember, getChat), the campaign
sender (sendMessage, sendPhoto), the notification workers (sendMessage, pinChatMessage) and the group-
maintenance workers (sendMessage, getChatMember, getChatAdministrators, banChatMember, unbanChatMember,
createChatInviteLink, revokeChatInviteLink) use it instead of aiogram's `Bot`: aiogram builds a pydantic
model for every request and validates every answer into a full `Message`, which measured as most of the
sender's CPU per message, and importing it costs ~1.3 s of CPU and ~150 MB per process (docs/sender.md,
docs/operator.md). The bot service, which handles updates, stays on aiogram.
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

_JSON = {"Content-Type": "application/json"}


class InvalidTokenFormat(ValueError):
    """The string cannot be a bot token (`<digits>:<secret>`, no whitespace)."""


class BotApiError(Exception):
    """Telegram answered, and not with `ok: true`.

    `status` is Telegram's `error_code` (the HTTP status when the body is not a Bot API reply, e.g. a
    proxy's 502 page); `retry_after` and `migrate_to_chat_id` come from the reply's `parameters`.
    """

    def __init__(self, method: str, status: int, description: str, retry_after: int | None = None,
                 migrate_to_chat_id: int | None = None) -> None:
        self.method = method
        self.status = status
        self.description = description
        self.retry_after = retry_after
        self.migrate_to_chat_id = migrate_to_chat_id
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
    """The part of getMe's answer Clarion keeps."""

    id: int
    username: str | None


def validate_token(token: str) -> None:
    """Raise InvalidTokenFormat unless `token` looks like a bot token (a token in a URL must not surprise)."""
    left, sep, right = token.partition(":")
    if not sep or not left.isdigit() or not right or any(c.isspace() or c in "/?#%" for c in token):
        raise InvalidTokenFormat("the value is not a Telegram bot token")


def _optional_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


class BotApi:
    """One bot's Bot API calls over one aiohttp session; use as `async with BotApi(...) as api:`.

    `connections` bounds the open connections (a sender sets it to its window of requests in flight).
    """

    def __init__(self, token: str, api_base_url: str, *, timeout_seconds: float,
                 connections: int = 100) -> None:
        validate_token(token)
        self._prefix = f"{api_base_url.rstrip('/')}/bot{token}/"
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_seconds),
            connector=aiohttp.TCPConnector(limit=connections),
            json_serialize=json.dumps,
        )

    async def __aenter__(self) -> BotApi:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def call(self, method: str, **params: Any) -> Any:
        """POST the parameters (None values left out) as JSON; the `result` on success, else BotApiError."""
        return await self.call_json(method, json.dumps({k: v for k, v in params.items() if v is not None}))

    async def call_json(self, method: str, body: str) -> Any:
        """POST an already serialised JSON object; the `result` on success, else BotApiError."""
        async with self._session.post(self._prefix + method, data=body, headers=_JSON) as response:
            raw = await response.read()
            status = response.status
        try:
            reply = json.loads(raw)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise BotApiError(method, status, f"HTTP {status}, not a Bot API reply")
        if reply.get("ok") is True and status < 300:
            return reply.get("result")
        parameters = reply.get("parameters")
        if not isinstance(parameters, dict):
            parameters = {}
        code = _optional_int(reply.get("error_code")) or status
        raise BotApiError(method, code, str(reply.get("description") or f"HTTP {status}"),
                          _optional_int(parameters.get("retry_after")),
                          _optional_int(parameters.get("migrate_to_chat_id")))

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

    # --- group administration (the group-maintenance workers; the bot does the same through aiogram) ---

    async def send_message(self, chat_id: int, text: str, *, parse_mode: str | None = None) -> int:
        """Send a text message; its message_id."""
        message = await self.call("sendMessage", chat_id=chat_id, text=text, parse_mode=parse_mode)
        return int(message["message_id"])

    async def get_chat_member(self, chat_id: int, user_id: int) -> ChatMember:
        return ChatMember.from_api(await self.call("getChatMember", chat_id=chat_id, user_id=user_id))

    async def get_chat_administrators(self, chat_id: int) -> list[ChatMember]:
        """The chat's administrators and its creator (bots among them)."""
        return [ChatMember.from_api(m) for m in await self.call("getChatAdministrators", chat_id=chat_id)]

    async def ban_chat_member(self, chat_id: int, user_id: int) -> None:
        """Remove the user from the group and keep them out until unbanned."""
        await self.call("banChatMember", chat_id=chat_id, user_id=user_id)

    async def unban_chat_member(self, chat_id: int, user_id: int, *, only_if_banned: bool = True) -> None:
        """Lift a ban so the user may join again (only_if_banned: never remove a current member)."""
        await self.call("unbanChatMember", chat_id=chat_id, user_id=user_id, only_if_banned=only_if_banned)

    async def create_chat_invite_link(self, chat_id: int, *, name: str | None = None,
                                      expire_date: int | None = None, member_limit: int | None = None,
                                      creates_join_request: bool | None = None) -> str:
        """A new additional invite link; Telegram refuses member_limit with creates_join_request."""
        link = await self.call("createChatInviteLink", chat_id=chat_id, name=name, expire_date=expire_date,
                               member_limit=member_limit, creates_join_request=creates_join_request)
        return str(link["invite_link"])

    async def revoke_chat_invite_link(self, chat_id: int, invite_link: str) -> None:
        await self.call("revokeChatInviteLink", chat_id=chat_id, invite_link=invite_link)

    async def pin_chat_message(self, chat_id: int, message_id: int, *,
                               disable_notification: bool = True) -> None:
        """Pin a message in a chat (in a group the bot needs the can_pin_messages right); silently by
        default, so the pin itself does not notify every member again."""
        await self.call("pinChatMessage", chat_id=chat_id, message_id=message_id,
                        disable_notification=disable_notification)


@dataclass(frozen=True)
class ChatMember:
    """The part of a ChatMember object Clarion reads: who, and their status in the chat
    (creator, administrator, member, restricted, left, kicked)."""

    user_id: int
    status: str
    first_name: str
    is_bot: bool = False
    language_code: str | None = None
    is_member: bool = True
    """For status restricted: whether the user is still in the chat."""

    @classmethod
    def from_api(cls, member: dict[str, Any]) -> ChatMember:
        user = member.get("user") or {}
        return cls(user_id=int(user["id"]), status=str(member.get("status") or ""),
                   first_name=str(user.get("first_name") or ""), is_bot=bool(user.get("is_bot")),
                   language_code=user.get("language_code"), is_member=bool(member.get("is_member", True)))

    @property
    def in_chat(self) -> bool:
        """Still in the chat."""
        return self.status in ("creator", "administrator", "member") or (
            self.status == "restricted" and self.is_member)

    @property
    def is_admin(self) -> bool:
        return self.status in ("creator", "administrator")
