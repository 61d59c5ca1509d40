"""A group that became a supergroup: the bot's message goes to the supergroup, once.

Telegram answers a call addressed to the old group id with 400 and `migrate_to_chat_id`. The people
the message was for are in the supergroup now, so the call is made again at the new id (the senders
do the same). A second migration answer is not followed: the handler fails and its update is
dead-lettered as `telegram_migrated`. A migrated `supportChatId` keeps working this way, with a
warning on every message, until the channel's config names the new id.
"""

from __future__ import annotations

from typing import Any

from aiogram import Bot
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import TelegramMigrateToChat
from aiogram.methods import Response, TelegramMethod
from clarion.logging import get_logger

log = get_logger("clarion.bot")


class FollowMigratedChat(BaseRequestMiddleware):
    """Registered before the rate limiter, so the repeated call takes a slot of the new chat."""

    async def __call__(self, make_request: NextRequestMiddlewareType[Any], bot: Bot,
                       method: TelegramMethod[Any]) -> Response[Any]:
        try:
            return await make_request(bot, method)
        except TelegramMigrateToChat as exc:
            chat_id = getattr(method, "chat_id", None)
            if not isinstance(chat_id, int):
                raise
            log.warning("chat_migrated", method=method.__api_method__, chat_id=chat_id,
                        migrate_to_chat_id=exc.migrate_to_chat_id)
            moved = method.model_copy(update={"chat_id": exc.migrate_to_chat_id})
            return await make_request(bot, moved)
