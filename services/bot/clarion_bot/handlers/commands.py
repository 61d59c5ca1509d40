"""`/start`, `/stop`, `/help` and unknown commands in private chats."""

from __future__ import annotations

from typing import Any

from aiogram import F, Router
from aiogram.filters import Command, CommandStart
from aiogram.types import Message
from clarion.db import subscribers
from clarion.db.channels import ChannelRecord
from clarion.i18n import Translator, pick_language


async def start(message: Message, db: Any, channel: ChannelRecord) -> None:
    user = message.from_user
    assert user is not None
    language = await subscribers.subscribe(
        db, channel.id, message.chat.id, username=user.username, first_name=user.first_name,
        last_name=user.last_name,
        language=pick_language(user.language_code, default=channel.default_language),
    )
    t = Translator(language)
    bot_name = f"@{channel.bot_username}" if channel.bot_username else channel.key
    await message.answer(t("start.welcome", name=user.first_name, bot=bot_name))


async def stop(message: Message, db: Any, channel: ChannelRecord, t: Translator) -> None:
    await subscribers.unsubscribe(db, channel.id, message.chat.id)
    await message.answer(t("stop.done"))


async def help_(message: Message, t: Translator) -> None:
    await message.answer(t("help.text"))


async def unknown_command(message: Message, t: Translator) -> None:
    await message.answer(t("command.unknown"))


def build_router() -> Router:
    """A new router of this feature (a router can belong to one dispatcher only)."""
    router = Router(name="commands")
    router.message.filter(F.chat.type == "private")
    router.message.register(start, CommandStart())
    router.message.register(stop, Command("stop"))
    router.message.register(help_, Command("help"))
    router.message.register(unknown_command, F.text.startswith("/"))
    return router
