"""The support inbox: a user's private message goes to the channel's support chat with a Reply button;
an admin presses it, writes the answer, and the bot delivers it to the user. Both sides are told.
"""

from __future__ import annotations

from typing import Any

from aiogram import Bot, F, Router
from aiogram.exceptions import TelegramForbiddenError
from aiogram.filters import Command, StateFilter
from aiogram.filters.callback_data import CallbackData
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, ForceReply, Message, User
from aiogram.utils.keyboard import InlineKeyboardBuilder
from clarion.db import subscribers
from clarion.db.channels import ChannelRecord

from clarion_bot.i18n import Translator, pick_language

router = Router(name="support")


class SupportReply(CallbackData, prefix="sr"):
    thread: int


class Answering(StatesGroup):
    text = State()


def display_name(user: User) -> str:
    return " ".join(part for part in (user.first_name, user.last_name) if part)


@router.message(Answering.text, Command("cancel"))
async def cancel_answer(message: Message, state: FSMContext, t: Translator) -> None:
    await state.clear()
    await message.answer(t("support.cancelled"))


@router.message(Answering.text, F.text)
async def deliver_answer(message: Message, state: FSMContext, bot: Bot, db: Any, channel: ChannelRecord,
                         t: Translator) -> None:
    data = await state.get_data()
    await state.clear()
    user_chat_id = int(data["user_chat_id"])
    name = str(data["name"])
    language = pick_language(await subscribers.get_language(db, channel.id, user_chat_id),
                             default=channel.default_language)
    try:
        await bot.send_message(user_chat_id, Translator(language)("support.answer", text=message.text))
    except TelegramForbiddenError:
        await subscribers.mark_unavailable(db, channel.id, user_chat_id, "blocked")
        await message.answer(t("support.user_blocked", name=name))
        return
    await message.answer(t("support.delivered", name=name))


@router.message(Answering.text)
async def answer_must_be_text(message: Message, t: Translator) -> None:
    await message.answer(t("support.text_only"))


@router.callback_query(SupportReply.filter())
async def begin_answer(query: CallbackQuery, callback_data: SupportReply, state: FSMContext, bot: Bot,
                       db: Any, channel: ChannelRecord, t: Translator) -> None:
    if query.from_user.id not in channel.admin_chat_ids:
        await query.answer(t("support.not_admin"), show_alert=True)
        return
    thread = await db.fetchrow(
        "SELECT user_chat_id, user_name FROM support_threads WHERE id = $1 AND channel_id = $2",
        callback_data.thread, channel.id,
    )
    if thread is None or query.message is None:
        await query.answer(t("support.unknown_thread"), show_alert=True)
        return
    await state.set_state(Answering.text)
    name = thread["user_name"] or str(thread["user_chat_id"])
    await state.update_data(user_chat_id=thread["user_chat_id"], name=name)
    await query.answer()
    await bot.send_message(query.message.chat.id, t("support.ask_answer", name=name),
                           reply_markup=ForceReply(selective=True))


@router.message(F.chat.type == "private", StateFilter(None))
async def to_support(message: Message, bot: Bot, db: Any, channel: ChannelRecord, t: Translator) -> None:
    user = message.from_user
    assert user is not None
    support_chat = channel.support_chat_id
    if support_chat is None:
        await message.answer(t("support.unavailable"))
        return
    staff = Translator(channel.default_language)
    thread_id: int = await db.fetchval("SELECT nextval(pg_get_serial_sequence('support_threads', 'id'))")
    keyboard = InlineKeyboardBuilder()
    keyboard.button(text=staff("support.reply_button"), callback_data=SupportReply(thread=thread_id))
    header = staff("support.incoming", name=display_name(user),
                   username=f"@{user.username}" if user.username else "-", user_id=user.id)
    body = message.text or message.caption or staff("support.non_text", kind=message.content_type)
    posted = await bot.send_message(support_chat, f"{header}\n\n{body}", reply_markup=keyboard.as_markup())
    await db.execute(
        """INSERT INTO support_threads (id, channel_id, user_chat_id, admin_chat_id, admin_message_id,
                                        user_message_id, user_name)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        thread_id, channel.id, message.chat.id, support_chat, posted.message_id, message.message_id,
        display_name(user),
    )
    await message.answer(t("support.sent"))
