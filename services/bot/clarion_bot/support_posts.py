"""A support thread's admin post: its buttons, and the edit that shows the outcome of the reply.

The post of a DM (origin `telegram`) carries the Mini App's Reply button (`MiniApp.reply_link`: a
`web_app` button in a private support chat, a `startapp` link in a group when the Mini App has a short
name) and the in-chat "Reply here" button; an api request's post (origin `api`, sent by the channel's
worker) carries only the Mini App's. Once a reply settled, `show_outcome` edits the post: "✅ Replied by
<admin>" above its text and no buttons, or "❌ Email failed: <reason>" (an email reply) / "❌ Not
delivered: <reason>" (a Telegram one) above it with the buttons kept for another try; then it records
that the post shows this outcome (`post_shown_at`), so that an edit that could not be made now is made by
the sweep (clarion_bot.support_outcomes), and one already made is not made again.
"""

from __future__ import annotations

from typing import Any

from aiogram import Bot
from aiogram.exceptions import ClientDecodeError, TelegramAPIError
from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup, WebAppInfo
from clarion.db import support
from clarion.db.channels import ChannelRecord
from clarion.db.support import SupportRequest
from clarion.i18n import Translator
from clarion.logging import get_logger
from clarion.metrics import counter
from clarion.telegram.errors import Outcome, classify_aiogram

log = get_logger("clarion.bot")

POST_EDITS = counter(
    "clarion_bot_support_post_edits_total",
    "Admin posts edited to show a reply's outcome, by the outcome shown (replied, failed) and the result: "
    "edited; unchanged (Telegram: message is not modified: it showed it already); gone (the post cannot be "
    "edited any more: deleted, or the bot left the chat); deferred (Telegram unreachable or 429s: the sweep "
    "tries again).", ["shows", "result"])

#: Telegram's limit on a message's text (UTF-16 code units); a post keeps room for the outcome line.
TEXT_LIMIT = 4096
POST_LIMIT = 3800
_REASON_LIMIT = 200
_RATE_LIMITED_TRIES = 5


class SupportReply(CallbackData, prefix="sr"):
    """The in-chat Reply button: the thread it answers."""

    thread: int


def fit(text: str, limit: int) -> str:
    """`text`, cut with "…" so that it takes at most `limit` UTF-16 code units (Telegram's count)."""
    if len(text.encode("utf-16-le")) // 2 <= limit:
        return text
    units = text.encode("utf-16-le")[: (limit - 1) * 2]
    return units.decode("utf-16-le", errors="ignore") + "…"


def post_keyboard(channel: ChannelRecord, thread_id: int, *, in_chat: bool, chat_id: int,
                  bot_username: str | None) -> InlineKeyboardMarkup | None:
    """The Reply buttons of thread `thread_id`'s post in `chat_id`, labelled in the channel's language;
    `in_chat` adds the ForceReply flow's button (threads a Telegram message answers)."""
    staff = Translator(channel.default_language)
    row: list[InlineKeyboardButton] = []
    mini_app = channel.support.mini_app
    link = mini_app.reply_link(chat_id, thread_id, bot_username) if mini_app is not None else None
    if link is not None:
        kind, url = link
        label = staff("support.reply_button")
        row.append(InlineKeyboardButton(text=label, web_app=WebAppInfo(url=url)) if kind == "web_app"
                   else InlineKeyboardButton(text=label, url=url))
    if in_chat:
        label = staff("support.reply_here_button" if row else "support.reply_button")
        row.append(InlineKeyboardButton(text=label, callback_data=SupportReply(thread=thread_id).pack()))
    return InlineKeyboardMarkup(inline_keyboard=[row]) if row else None


def outcome_line(thread: SupportRequest, staff: Translator) -> str:
    if thread.status == "replied":
        return staff("support.outcome_replied", admin=thread.replied_by_name or str(thread.replied_by))
    reason = fit(thread.last_error or staff("support.reason_unknown"), _REASON_LIMIT)
    key = "support.outcome_email_failed" if thread.origin == "api" else "support.outcome_not_delivered"
    return staff(key, reason=reason)


async def bot_username(bot: Bot, channel: ChannelRecord) -> str | None:
    return channel.bot_username or (await bot.me()).username


async def show_outcome(bot: Bot, db: Any, channel: ChannelRecord, thread: SupportRequest) -> str:
    """Edit the thread's admin post to show its outcome, if owed and its message id is known; returns what
    happened (`POST_EDITS`' result, or `nothing` / `waiting` for a post not owed / not yet known). Telegram
    failures never raise: a deferred edit stays owed, and the sweep makes it."""
    if not thread.post_edit_owed:
        return "nothing"
    if thread.admin_message_id is None:
        return "waiting"  # an api request's post whose status event has not come yet
    staff = Translator(channel.default_language)
    keyboard = None
    if thread.status == "failed":
        keyboard = post_keyboard(channel, thread.id, in_chat=thread.origin == "telegram",
                                 chat_id=thread.admin_chat_id, bot_username=await bot_username(bot, channel))
    result = "deferred"
    for _ in range(_RATE_LIMITED_TRIES):
        try:
            if thread.post_text is None:  # a thread from before posts were stored: only the buttons
                await bot.edit_message_reply_markup(chat_id=thread.admin_chat_id,
                                                    message_id=thread.admin_message_id, reply_markup=keyboard)
            else:
                text = f"{outcome_line(thread, staff)}\n\n{thread.post_text}"
                await bot.edit_message_text(text=fit(text, TEXT_LIMIT), chat_id=thread.admin_chat_id,
                                            message_id=thread.admin_message_id, reply_markup=keyboard)
            result = "edited"
        except (TelegramAPIError, ClientDecodeError) as exc:
            classified = classify_aiogram(exc)
            if classified.outcome is Outcome.RATE_LIMITED:
                continue  # the session middleware paused the bot's limiter: the next try waits it out
            if classified.outcome in (Outcome.RETRY, Outcome.FATAL):
                log.warning("support_post_edit_deferred", thread=thread.id, error=classified.error)
                break
            result = "unchanged" if "message is not modified" in classified.error else "gone"
            if result == "gone":
                log.warning("support_post_not_editable", thread=thread.id, error=classified.error)
        break
    POST_EDITS.labels(thread.status, result).inc()
    if result != "deferred":
        await support.mark_post_shown(db, thread.id, thread.updated_at)
    return result
