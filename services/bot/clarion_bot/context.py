"""What every handler receives besides the event: the channel, the database, the user's translator."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiogram import BaseMiddleware, Dispatcher
from aiogram.types import TelegramObject, User
from clarion.db import subscribers
from clarion.db.channels import ChannelRecord
from clarion.i18n import Translator, pick_language
from clarion.logging import get_logger
from clarion.outages import database_unavailable

log = get_logger("clarion.bot")


@dataclass
class ChannelHolder:
    """The channel row, replaced when it is re-read (admin ids and languages can change)."""

    current: ChannelRecord


class ContextMiddleware(BaseMiddleware):
    """Injects `channel`, `language` and `t` (a Translator for the user who caused the update).

    An inner middleware (`install_context`): it runs once a handler's filters matched, so the stored
    language is read only for an update a handler takes. Filters therefore do not see these values.
    With Postgres unreachable the stored language is skipped (Telegram's language_code, else the
    channel's default): a handler that needs nothing else from Postgres still answers.
    """

    def __init__(self, holder: ChannelHolder) -> None:
        self.holder = holder

    async def __call__(self, handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
                       event: TelegramObject, data: dict[str, Any]) -> Any:
        channel = self.holder.current
        user: User | None = data.get("event_from_user")
        stored = None
        if user is not None:
            try:
                stored = await subscribers.get_language(data["db"], channel.id, user.id)
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                log.warning("language_not_read", error=repr(exc))
        language = pick_language(stored, user.language_code if user else None,
                                 default=channel.default_language)
        data["channel"] = channel
        data["language"] = language
        data["t"] = Translator(language)
        return await handler(event, data)


def install_context(dp: Dispatcher, holder: ChannelHolder) -> None:
    """Put one `ContextMiddleware` on every update type the dispatcher's routers handle.

    Call it after the routers are included: an update type without handlers gets no middleware, and an
    inner middleware of the dispatcher's observer also wraps the handlers of the routers below it.
    """
    middleware = ContextMiddleware(holder)
    for update_type in dp.resolve_used_update_types():
        dp.observers[update_type].middleware(middleware)
