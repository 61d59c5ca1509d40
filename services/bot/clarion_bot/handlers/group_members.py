"""Managed groups' membership from `chat_member` updates: a member who left or was banned is `left`
(the join side is `join_requests.member_joined`, which also welcomes). Last-seen times of members who
write are the activity buffer's (clarion_bot.activity)."""

from __future__ import annotations

from typing import Any

from aiogram import F, Router
from aiogram.enums import ChatMemberStatus
from aiogram.types import ChatMemberUpdated
from clarion.db import group_activity
from clarion.db.channels import ChannelRecord

from clarion_bot.activity import GROUP_CHATS
from clarion_bot.group_joins import GroupCache

_IN = (ChatMemberStatus.MEMBER, ChatMemberStatus.ADMINISTRATOR, ChatMemberStatus.RESTRICTED)
_OUT = (ChatMemberStatus.LEFT, ChatMemberStatus.KICKED)


async def member_left(event: ChatMemberUpdated, db: Any, channel: ChannelRecord,
                      group_cache: GroupCache) -> None:
    group = await group_cache.get(db, channel.id, event.chat.id)
    if group is not None:
        await group_activity.member_left(db, group.id, event.new_chat_member.user.id)


def build_router() -> Router:
    """A new router of this feature (a router can belong to one dispatcher only)."""
    router = Router(name="group_members")
    router.chat_member.register(member_left, F.chat.type.in_(GROUP_CHATS), F.old_chat_member.status.in_(_IN),
                                F.new_chat_member.status.in_(_OUT))
    return router
