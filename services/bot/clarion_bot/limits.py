"""The bot's replies share the bot's Telegram budget with every other pod of the bot (senders too)."""

from __future__ import annotations

from typing import Any

from aiogram import Bot
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods import Response, TelegramMethod
from clarion.telegram.limiter import RateLimiter

#: Methods that put a message into a chat or change one (the support posts' edits: a busy support group
#: must not draw 429s); callback answers and the like are not budgeted.
_SENDING = frozenset({"copyMessage", "copyMessages", "forwardMessage", "forwardMessages", "editMessageText",
                      "editMessageCaption", "editMessageReplyMarkup"})


def takes_a_slot(api_method: str) -> bool:
    return (api_method.startswith("send") and api_method != "sendChatAction") or api_method in _SENDING


class SharedRateLimit(BaseRequestMiddleware):
    """Waits for a slot of the shared limiter before each message; a 429 pauses the bot everywhere."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    async def __call__(self, make_request: NextRequestMiddlewareType[Any], bot: Bot,
                       method: TelegramMethod[Any]) -> Response[Any]:
        chat_id = getattr(method, "chat_id", None)
        if takes_a_slot(method.__api_method__) and isinstance(chat_id, int):
            await self.limiter.acquire(chat_id)
        try:
            return await make_request(bot, method)
        except TelegramRetryAfter as exc:
            await self.limiter.pause(float(exc.retry_after))
            raise
