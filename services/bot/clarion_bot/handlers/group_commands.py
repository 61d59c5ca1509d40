"""Commands in managed groups: `/rules` answers with the group's rules; `/report`, as a reply to a
message, quotes that message to the group's admins (spec.reportChatId, else joinRequests.adminChatId,
else the channel's supportChatId) with who reported whom and a link, one report a minute per user.

Messages in groups are never support requests: the support inbox takes private messages only.
"""

from __future__ import annotations

import contextlib
from typing import Any

import redis.asyncio as aioredis
from aiogram import Bot, F, Router
from aiogram.filters import Command
from aiogram.types import Chat, Message, User
from clarion.db.channels import ChannelRecord
from clarion.i18n import Translator
from clarion.streams import report_limit_key

from clarion_bot.activity import GROUP_CHATS
from clarion_bot.group_joins import GroupCache, join_policy
from clarion_bot.handlers.support import display_name
from clarion_bot.support_posts import POST_LIMIT, fit

#: One report a minute per user and channel.
REPORT_EVERY_MS = 60_000


def message_link(chat: Chat, message_id: int) -> str | None:
    """The t.me link of a group message: by the public username, else t.me/c/ (supergroups only)."""
    if chat.username:
        return f"https://t.me/{chat.username}/{message_id}"
    if chat.type == "supergroup" and str(chat.id).startswith("-100"):
        return f"https://t.me/c/{str(chat.id)[4:]}/{message_id}"
    return None


def _who(user: User | None, chat: Chat | None) -> tuple[str, int]:
    if user is not None:
        name = display_name(user)
        return (f"{name} (@{user.username})" if user.username else name), user.id
    if chat is not None:  # an anonymous admin or a channel posting in the group
        return chat.title or str(chat.id), chat.id
    return "?", 0


async def rules(message: Message, db: Any, channel: ChannelRecord, group_cache: GroupCache,
                t: Translator) -> None:
    group = await group_cache.get(db, channel.id, message.chat.id)
    if group is None:
        return  # not a group this channel manages
    await message.reply(group.spec.rules_text or t("groups.no_rules"))


async def report(message: Message, bot: Bot, db: Any, redis: aioredis.Redis, channel: ChannelRecord,
                 group_cache: GroupCache, t: Translator) -> None:
    group = await group_cache.get(db, channel.id, message.chat.id)
    reporter = message.from_user
    if group is None or reporter is None:
        return
    reported = message.reply_to_message
    if reported is None:
        await message.reply(t("groups.report_usage"))
        return
    chat = group.spec.report_chat_id or join_policy(group).admin_chat_id or channel.support_chat_id
    if chat is None:
        await message.reply(t("groups.report_unavailable"))
        return
    key = report_limit_key(channel.key, reporter.id)
    if not await redis.set(key, b"1", nx=True, px=REPORT_EVERY_MS):
        await message.reply(t("groups.report_limited"))
        return
    staff = Translator(channel.default_language)
    author, author_id = _who(reported.from_user, reported.sender_chat)
    body = reported.text or reported.caption or staff("support.non_text", kind=reported.content_type)
    text = staff("groups.report", group=message.chat.title or str(message.chat.id),
                 reporter=_who(reporter, None)[0], reporter_id=reporter.id, author=author,
                 author_id=author_id, text=body, link=message_link(message.chat, reported.message_id) or "")
    try:
        await bot.send_message(chat, fit(text.rstrip(), POST_LIMIT))
    except BaseException:
        with contextlib.suppress(Exception):  # not sent: the report may be tried again at once
            await redis.delete(key)
        raise
    await message.reply(t("groups.report_sent"))


def build_router() -> Router:
    """A new router of this feature (a router can belong to one dispatcher only)."""
    router = Router(name="group_commands")
    router.message.filter(F.chat.type.in_(GROUP_CHATS))
    router.message.register(rules, Command("rules"))
    router.message.register(report, Command("report"))
    return router
