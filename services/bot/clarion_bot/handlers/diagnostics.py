"""`/ping <n>` → `pong <n>`: a hidden end-to-end probe (webhook → stream → bot → Telegram)."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message
from clarion.i18n import Translator


async def ping(message: Message, command: CommandObject, t: Translator) -> None:
    await message.answer(t("diagnostics.pong", n=(command.args or "").strip()[:64]))


def build_router() -> Router:
    """A new router of this feature (a router can belong to one dispatcher only)."""
    router = Router(name="diagnostics")
    router.message.register(ping, Command("ping"))
    return router
