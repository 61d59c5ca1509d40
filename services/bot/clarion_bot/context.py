"""What every handler receives besides the event: the channel, the database, the user's translator."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import TelegramObject, User
from clarion.db import subscribers
from clarion.db.channels import ChannelRecord

from clarion_bot.i18n import Translator, pick_language


@dataclass
class ChannelHolder:
    """The channel row, replaced when it is re-read (admin ids and languages can change)."""

    current: ChannelRecord


class ContextMiddleware(BaseMiddleware):
    """Injects `channel`, `language` and `t` (a Translator for the user who caused the update)."""

    def __init__(self, holder: ChannelHolder) -> None:
        self.holder = holder

    async def __call__(self, handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
                       event: TelegramObject, data: dict[str, Any]) -> Any:
        channel = self.holder.current
        user: User | None = data.get("event_from_user")
        stored = None
        if user is not None:
            stored = await subscribers.get_language(data["db"], channel.id, user.id)
        language = pick_language(stored, user.language_code if user else None,
                                 default=channel.default_language)
        data["channel"] = channel
        data["language"] = language
        data["t"] = Translator(language)
        return await handler(event, data)
