"""The support inbox: a user's private message goes to the channel's support chat with Reply buttons (the
Mini App's, and "Reply here"); an admin presses "Reply here", writes the answer, and the bot delivers it to
the user. Both sides are told, and the post is edited with the outcome (clarion_bot.support_posts).
"""

from __future__ import annotations

from typing import Any

from aiogram import Bot, F, Router
from aiogram.exceptions import TelegramForbiddenError
from aiogram.filters import Command, StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, ForceReply, Message, User
from clarion.db import subscribers, support
from clarion.db.channels import ChannelRecord
from clarion.i18n import Translator, pick_language

from clarion_bot.support_posts import POST_LIMIT, SupportReply, bot_username, fit, post_keyboard, show_outcome


class Answering(StatesGroup):
    text = State()


def display_name(user: User) -> str:
    return " ".join(part for part in (user.first_name, user.last_name) if part)


async def cancel_answer(message: Message, state: FSMContext, t: Translator) -> None:
    await state.clear()
    await message.answer(t("support.cancelled"))


async def deliver_answer(message: Message, state: FSMContext, bot: Bot, db: Any, channel: ChannelRecord,
                         t: Translator) -> None:
    """Record the answer (`start_reply`), send it, record the outcome and edit the post. The state is
    cleared only at the end: a handling cut short by an outage runs again here, and goes on with the answer
    it recorded (the user may then get it twice: at least once)."""
    admin = message.from_user
    assert admin is not None and message.text is not None
    data = await state.get_data()
    thread_id = int(data["thread"])
    name = str(data["name"])
    thread = await support.start_reply(db, thread_id, admin_id=admin.id, admin_name=display_name(admin),
                                       text=message.text, notification_id=None)
    if thread is None:
        current = await support.get_request(db, thread_id)
        resumed = (current is not None and current.status == "replying" and current.replied_by == admin.id
                   and current.reply_notification_id is None and current.reply_text == message.text)
        if not resumed:
            await state.clear()
            await message.answer(t("support.already_answered"))
            return
    user_chat_id = int(data["user_chat_id"])
    stored = await subscribers.get_language(db, channel.id, user_chat_id)
    language = pick_language(stored, data.get("language"), default=channel.default_language)
    try:
        await bot.send_message(user_chat_id, Translator(language)("support.answer", text=message.text))
    except TelegramForbiddenError as exc:
        await subscribers.mark_unavailable(db, channel.id, user_chat_id, "blocked")
        settled = await support.finish_reply(db, thread_id, replied=False, error=exc.message,
                                             notification_id=None)
        told = t("support.user_blocked", name=name)
    else:
        settled = await support.finish_reply(db, thread_id, replied=True, error=None, notification_id=None)
        told = t("support.delivered", name=name)
    await state.clear()
    if settled is not None:
        await show_outcome(bot, db, channel, settled)
    await message.answer(told)


async def answer_must_be_text(message: Message, t: Translator) -> None:
    await message.answer(t("support.text_only"))


async def begin_answer(query: CallbackQuery, callback_data: SupportReply, state: FSMContext, bot: Bot,
                       db: Any, channel: ChannelRecord, t: Translator) -> None:
    if query.from_user.id not in channel.admin_chat_ids:
        await query.answer(t("support.not_admin"), show_alert=True)
        return
    thread = await support.get_request(db, callback_data.thread)
    if (thread is None or thread.channel_id != channel.id or thread.user_chat_id is None
            or query.message is None):
        await query.answer(t("support.unknown_thread"), show_alert=True)
        return
    if thread.status not in support.ANSWERABLE:
        await query.answer(t("support.already_answered"), show_alert=True)
        return
    await state.set_state(Answering.text)
    name = thread.user_name or str(thread.user_chat_id)
    await state.update_data(thread=thread.id, user_chat_id=thread.user_chat_id, name=name,
                            language=thread.user_language)
    await query.answer()
    await bot.send_message(query.message.chat.id, t("support.ask_answer", name=name),
                           reply_markup=ForceReply(selective=True))


async def to_support(message: Message, bot: Bot, db: Any, channel: ChannelRecord, t: Translator,
                     language: str) -> None:
    user = message.from_user
    assert user is not None
    support_chat = channel.support_chat_id
    if support_chat is None:
        await message.answer(t("support.unavailable"))
        return
    staff = Translator(channel.default_language)
    thread_id = await support.reserve_thread_id(db)
    keyboard = post_keyboard(channel, thread_id, in_chat=True, chat_id=support_chat,
                             bot_username=await bot_username(bot, channel))
    header = staff("support.incoming", name=display_name(user),
                   username=f"@{user.username}" if user.username else "-", user_id=user.id)
    body = message.text or message.caption or staff("support.non_text", kind=message.content_type)
    post_text = fit(f"{header}\n\n{body}", POST_LIMIT)
    posted = await bot.send_message(support_chat, post_text, reply_markup=keyboard)
    await support.record_thread(
        db, channel.id, thread_id, user_chat_id=message.chat.id, user_message_id=message.message_id,
        admin_chat_id=support_chat, admin_message_id=posted.message_id, user_name=display_name(user),
        user_language=language, body=body, post_text=post_text,
    )
    await message.answer(t("support.sent"))


def build_router() -> Router:
    """A new router of this feature (a router can belong to one dispatcher only)."""
    router = Router(name="support")
    router.message.register(cancel_answer, Answering.text, Command("cancel"))
    router.message.register(deliver_answer, Answering.text, F.text)
    router.message.register(answer_must_be_text, Answering.text)
    router.callback_query.register(begin_answer, SupportReply.filter())
    router.message.register(to_support, F.chat.type == "private", StateFilter(None))
    return router
