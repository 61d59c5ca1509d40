"""`/language`: an inline keyboard of the supported languages; a press stores the choice."""

from __future__ import annotations

from typing import Any

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.filters.callback_data import CallbackData
from aiogram.types import CallbackQuery, InlineKeyboardMarkup, Message
from aiogram.utils.keyboard import InlineKeyboardBuilder
from clarion.db import subscribers
from clarion.db.channels import ChannelRecord
from clarion.i18n import Translator
from clarion.models.channel import BOT_LANGUAGES


class LanguageChoice(CallbackData, prefix="lang"):
    code: str


def language_keyboard() -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    for code in BOT_LANGUAGES:
        builder.button(text=Translator(code)("language.name"), callback_data=LanguageChoice(code=code))
    return builder.as_markup()


async def choose_language(message: Message, t: Translator) -> None:
    await message.answer(t("language.choose"), reply_markup=language_keyboard())


async def set_language(query: CallbackQuery, callback_data: LanguageChoice, db: Any,
                       channel: ChannelRecord) -> None:
    await subscribers.set_language(db, channel.id, query.from_user.id, callback_data.code)
    text = Translator(callback_data.code)("language.set")
    await query.answer(text)
    if isinstance(query.message, Message):
        await query.message.edit_text(text)


def build_router() -> Router:
    """A new router of this feature (a router can belong to one dispatcher only)."""
    router = Router(name="language")
    router.message.register(choose_language, Command("language"), F.chat.type == "private")
    router.callback_query.register(set_language, LanguageChoice.filter(F.code.in_(BOT_LANGUAGES)))
    return router
