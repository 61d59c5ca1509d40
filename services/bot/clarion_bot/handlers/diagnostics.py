"""`/ping <n>` → `pong <n>`: a hidden end-to-end probe (webhook → stream → bot → Telegram)."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from clarion_bot.i18n import Translator

router = Router(name="diagnostics")


@router.message(Command("ping"))
async def ping(message: Message, command: CommandObject, t: Translator) -> None:
    await message.answer(t("diagnostics.pong", n=(command.args or "").strip()[:64]))
