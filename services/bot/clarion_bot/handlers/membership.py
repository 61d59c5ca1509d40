"""The bot's own membership in private chats: blocked → unavailable, unblocked → available again."""

from __future__ import annotations

from typing import Any

from aiogram import F, Router
from aiogram.enums import ChatMemberStatus
from aiogram.types import ChatMemberUpdated
from clarion.db import subscribers
from clarion.db.channels import ChannelRecord


async def bot_membership_changed(event: ChatMemberUpdated, db: Any, channel: ChannelRecord) -> None:
    status = event.new_chat_member.status
    if status == ChatMemberStatus.KICKED:
        await subscribers.mark_unavailable(db, channel.id, event.chat.id, "blocked")
    elif status == ChatMemberStatus.MEMBER:
        await subscribers.mark_available(db, channel.id, event.chat.id)


def build_router() -> Router:
    """A new router of this feature (a router can belong to one dispatcher only)."""
    router = Router(name="membership")
    router.my_chat_member.register(bot_membership_changed, F.chat.type == "private")
    return router
