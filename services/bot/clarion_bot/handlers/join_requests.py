"""Managed groups: join requests by the group's policy, the manual card's buttons, the rules question's
answer, and the welcome of members who joined another way (clarion_bot.group_joins does the deciding)."""

from __future__ import annotations

from typing import Any

from aiogram import Bot, F, Router
from aiogram.enums import ChatMemberStatus
from aiogram.exceptions import TelegramBadRequest, TelegramForbiddenError
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.fsm.storage.base import BaseStorage
from aiogram.types import CallbackQuery, ChatJoinRequest, ChatMemberUpdated, Message
from clarion.db import group_activity, groups
from clarion.db.channels import ChannelRecord
from clarion.db.groups import GroupRecord
from clarion.i18n import Translator

from clarion_bot.group_joins import (
    JOIN_DECISIONS,
    GroupCache,
    JoinCard,
    Requester,
    apply,
    card_chat,
    card_keyboard,
    decide,
    join_policy,
    question_key,
    rules_verdict,
    send_welcome,
    show_on_card,
    user_translator,
)
from clarion_bot.support_posts import fit


class JoinQuestion(StatesGroup):
    answer = State()


def _name(first: str, last: str | None) -> str:
    return " ".join(part for part in (first, last) if part)


async def join_request(event: ChatJoinRequest, bot: Bot, db: Any, channel: ChannelRecord,
                       group_cache: GroupCache, fsm_storage: BaseStorage) -> None:
    group = await group_cache.get(db, channel.id, event.chat.id)
    if group is None:
        return  # not a group this channel manages: left to the group's own admins
    user = event.from_user
    requester = Requester(user.id, event.user_chat_id, user.first_name, user.username, user.language_code)
    request = await groups.record_request(
        db, group.id, user_id=user.id, user_chat_id=event.user_chat_id, first_name=user.first_name,
        username=user.username, language=user.language_code, request_date=int(event.date.timestamp()))
    policy = join_policy(group).policy
    if request.status in ("approved", "declined"):  # handled before (this update again): finish the job
        if request.applied_at is None:
            await apply(bot, db, channel, group, request)
        return
    if policy in ("approve", "decline"):
        await decide(bot, db, channel, group, user.id, "approved" if policy == "approve" else "declined",
                     reason=f"policy {policy}")
    elif policy == "manual":
        if request.card_message_id is None:
            await post_card(bot, db, channel, group, event)
    elif request.status == "pending":  # rules; an asked request (this update again) waits for its answer
        reason = rules_verdict(group, requester)
        rules = join_policy(group).rules
        question = rules.question if rules is not None else None
        if reason is not None:
            await decide(bot, db, channel, group, user.id, "declined", reason=reason)
        elif question is None:
            await decide(bot, db, channel, group, user.id, "approved", reason="rules passed")
        else:
            asked = await groups.ask(db, group.id, user.id, question.answer_within_minutes)
            if asked is None:
                return
            t = user_translator(channel, asked)
            await fsm_storage.set_state(question_key(bot, event.user_chat_id, user.id), JoinQuestion.answer)
            try:
                await bot.send_message(event.user_chat_id, t(
                    "groups.question", group=event.chat.title or str(event.chat.id),
                    minutes=question.answer_within_minutes, question=question.text))
            except (TelegramForbiddenError, TelegramBadRequest):  # the user cannot be written to
                await fsm_storage.set_state(question_key(bot, event.user_chat_id, user.id), None)
                await decide(bot, db, channel, group, user.id, "declined", reason="question not delivered")
                return
            JOIN_DECISIONS.labels(policy, "asked").inc()


async def post_card(bot: Bot, db: Any, channel: ChannelRecord, group: GroupRecord,
                    event: ChatJoinRequest) -> None:
    chat = card_chat(group, channel)
    if chat is None:
        return  # nowhere to post: the request waits in Telegram's own list for the group's admins
    staff = Translator(channel.default_language)
    user = event.from_user
    text = fit(staff("groups.card", group=event.chat.title or str(event.chat.id),
                     name=_name(user.first_name, user.last_name),
                     username=f"@{user.username}" if user.username else "-", user_id=user.id,
                     language=user.language_code or "-"), 3800)
    sent = await bot.send_message(chat, text, reply_markup=card_keyboard(group, user.id, staff))
    await groups.set_card(db, group.id, user.id, chat_id=chat, message_id=sent.message_id, text=text)
    JOIN_DECISIONS.labels("manual", "carded").inc()


async def card_pressed(query: CallbackQuery, callback_data: JoinCard, bot: Bot, db: Any,
                       channel: ChannelRecord, t: Translator) -> None:
    if query.from_user.id not in channel.admin_chat_ids:
        await query.answer(t("groups.not_admin"), show_alert=True)
        return
    group = await groups.get_group_by_id(db, callback_data.group)
    if group is None or group.channel_id != channel.id:
        await query.answer(t("groups.already_decided"), show_alert=True)
        return
    admin = query.from_user
    decided = await decide(bot, db, channel, group, callback_data.user,
                           "approved" if callback_data.approve else "declined",
                           actor=f"telegram:{admin.id}", actor_name=_name(admin.first_name, admin.last_name),
                           reason="decided by an admin")
    if decided is None:
        await query.answer(t("groups.already_decided"), show_alert=True)
        current = await groups.get_request(db, group.id, callback_data.user)
        if current is not None and current.status in ("approved", "declined"):
            await show_on_card(bot, channel, current)  # a card still showing buttons
        return
    await query.answer()


async def question_answered(message: Message, state: FSMContext, bot: Bot, db: Any, channel: ChannelRecord,
                            t: Translator) -> None:
    """The requester's private message while a question waits: it answers the oldest one."""
    waiting = await groups.asked_of(db, channel.id, message.chat.id)
    if not waiting:
        await state.clear()
        await message.answer(t("groups.answer_late"))
        return
    request = waiting[0]
    group = await groups.get_group_by_id(db, request.group_id)
    rules = join_policy(group).rules if group is not None else None
    question = rules.question if rules is not None else None
    if group is None or question is None:
        await state.clear()
        return
    accepted = question.accepts(message.text or message.caption or "")
    decided = await decide(bot, db, channel, group, request.user_id, "approved" if accepted else "declined",
                           reason="answer accepted" if accepted else "answer not accepted")
    if len(waiting) == 1:
        await state.clear()
    answer_t = user_translator(channel, request)
    if decided is None:
        await message.answer(answer_t("groups.answer_late"))
    else:
        await message.answer(answer_t("groups.answer_approved" if accepted else "groups.answer_declined"))


async def member_joined(event: ChatMemberUpdated, bot: Bot, db: Any, channel: ChannelRecord,
                        group_cache: GroupCache) -> None:
    """A member joined (or came back): `member` from now; welcomed unless the bot approved the request
    (it welcomed then)."""
    group = await group_cache.get(db, channel.id, event.chat.id)
    if group is None:
        return
    user = event.new_chat_member.user
    await group_activity.member_joined(db, group.id, user.id)
    if not event.via_join_request:  # approved joins were welcomed when approved
        await send_welcome(bot, db, group, user.first_name, user.language_code)


_OUT = (ChatMemberStatus.LEFT, ChatMemberStatus.KICKED)


def build_router() -> Router:
    """A new router of this feature (a router can belong to one dispatcher only)."""
    router = Router(name="join_requests")
    router.chat_join_request.register(join_request)
    router.callback_query.register(card_pressed, JoinCard.filter())
    router.message.register(question_answered, JoinQuestion.answer, F.chat.type == "private")
    router.chat_member.register(
        member_joined, F.chat.type.in_({"group", "supergroup"}), F.old_chat_member.status.in_(_OUT),
        F.new_chat_member.status == ChatMemberStatus.MEMBER)
    return router
