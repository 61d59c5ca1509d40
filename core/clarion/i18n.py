# ruff: noqa: RUF001  (Russian text is Cyrillic on purpose)
"""Every text the bot and the support flow send (the bot's handlers, the webhook's support requests, the
group-maintenance workers' inactivity warnings), in each language of `BOT_LANGUAGES`, and the translator
handlers get as `t`.

A plain catalog rather than gettext: aiogram's I18n middleware needs Babel and compiled `.mo` files,
which would add a build step for two languages (docs/webhook-and-bot.md).
"""

from __future__ import annotations

from typing import Any

from clarion.models.channel import BOT_LANGUAGES
from clarion.models.channel import DEFAULT_BOT_LANGUAGE as DEFAULT_LANGUAGE

CATALOG: dict[str, dict[str, str]] = {
    "start.welcome": {
        "en": "Hello, {name}! You are subscribed to {bot} updates.\nSend /help to see what I can do.",
        "ru": "Здравствуйте, {name}! Вы подписаны на новости {bot}.\n"
              "Отправьте /help, чтобы узнать, что я умею.",
    },
    "stop.done": {
        "en": "You are unsubscribed and will get no more broadcasts. Send /start to subscribe again.",
        "ru": "Вы отписались и больше не будете получать рассылки. "
              "Отправьте /start, чтобы подписаться снова.",
    },
    "help.text": {
        "en": "/start — subscribe\n/stop — unsubscribe\n/language — choose the language\n"
              "Any other message goes to our support team.",
        "ru": "/start — подписаться\n/stop — отписаться\n/language — выбрать язык\n"
              "Любое другое сообщение получит наша служба поддержки.",
    },
    "command.unknown": {
        "en": "I don't know this command. Send /help to see what I can do.",
        "ru": "Я не знаю такой команды. Отправьте /help, чтобы узнать, что я умею.",
    },
    "language.name": {
        "en": "English",
        "ru": "Русский",
    },
    "language.choose": {
        "en": "Choose your language:",
        "ru": "Выберите язык:",
    },
    "language.set": {
        "en": "Language: English.",
        "ru": "Язык: русский.",
    },
    "support.incoming": {
        "en": "Support message from {name} ({username}, id {user_id}):",
        "ru": "Сообщение в поддержку от {name} ({username}, id {user_id}):",
    },
    "support.reply_button": {
        "en": "Reply",
        "ru": "Ответить",
    },
    "support.sent": {
        "en": "Thank you! Your message was passed to our support team.",
        "ru": "Спасибо! Ваше сообщение передано в службу поддержки.",
    },
    "support.unavailable": {
        "en": "Sorry, support is not available in this bot.",
        "ru": "К сожалению, в этом боте нет службы поддержки.",
    },
    "support.not_admin": {
        "en": "Only the bot's admins can answer support messages.",
        "ru": "Отвечать на обращения могут только администраторы бота.",
    },
    "support.unknown_thread": {
        "en": "This support message is no longer known.",
        "ru": "Это обращение больше не найдено.",
    },
    "support.ask_answer": {
        "en": "Write your answer to {name}. Send /cancel to stop.",
        "ru": "Напишите ответ для {name}. Отправьте /cancel, чтобы отменить.",
    },
    "support.answer": {
        "en": "Answer from support:\n\n{text}",
        "ru": "Ответ службы поддержки:\n\n{text}",
    },
    "support.delivered": {
        "en": "Your answer was delivered to {name}.",
        "ru": "Ваш ответ доставлен: {name}.",
    },
    "support.user_blocked": {
        "en": "Not delivered: {name} has blocked the bot.",
        "ru": "Не доставлено: {name} заблокировал(а) бота.",
    },
    "support.text_only": {
        "en": "Please answer with a text message, or send /cancel.",
        "ru": "Пожалуйста, ответьте текстом или отправьте /cancel.",
    },
    "support.cancelled": {
        "en": "Cancelled.",
        "ru": "Отменено.",
    },
    "support.non_text": {
        "en": "[{kind}]",
        "ru": "[{kind}]",
    },
    "support.reply_here_button": {
        "en": "Reply here",
        "ru": "Ответить здесь",
    },
    "support.already_answered": {
        "en": "This request is already answered, or an answer is on its way.",
        "ru": "На это обращение уже ответили, или ответ уже отправляется.",
    },
    "support.outcome_replied": {
        "en": "✅ Replied by {admin}",
        "ru": "✅ Ответ(ила) {admin}",
    },
    "support.outcome_email_failed": {
        "en": "❌ Email failed: {reason}",
        "ru": "❌ Письмо не отправлено: {reason}",
    },
    "support.outcome_not_delivered": {
        "en": "❌ Not delivered: {reason}",
        "ru": "❌ Не доставлено: {reason}",
    },
    "support.reason_blocked": {
        "en": "the user has blocked the bot",
        "ru": "пользователь заблокировал бота",
    },
    "support.reason_unknown": {
        "en": "unknown error",
        "ru": "неизвестная ошибка",
    },
    "diagnostics.pong": {
        "en": "pong {n}",
        "ru": "pong {n}",
    },
    "request.incoming": {
        "en": "Request from {name} <{email}>:",
        "ru": "Обращение от {name} <{email}>:",
    },
    "request.reply_subject": {
        "en": "Re: your request",
        "ru": "Re: ваше обращение",
    },
    "miniapp.title": {
        "en": "Support request",
        "ru": "Обращение в поддержку",
    },
    "miniapp.from": {
        "en": "From",
        "ru": "От",
    },
    "miniapp.status": {
        "en": "Status",
        "ru": "Статус",
    },
    "miniapp.status.open": {
        "en": "waiting for an answer",
        "ru": "ждёт ответа",
    },
    "miniapp.status.replying": {
        "en": "an answer is being sent",
        "ru": "ответ отправляется",
    },
    "miniapp.status.replied": {
        "en": "answered",
        "ru": "отвечено",
    },
    "miniapp.status.failed": {
        "en": "the answer failed; you may answer again",
        "ru": "ответ не доставлен; можно ответить снова",
    },
    "miniapp.answer": {
        "en": "Your answer",
        "ru": "Ваш ответ",
    },
    "miniapp.send": {
        "en": "Send",
        "ru": "Отправить",
    },
    "miniapp.sent": {
        "en": "Your answer is on its way.",
        "ru": "Ваш ответ отправляется.",
    },
    "miniapp.loading": {
        "en": "Loading…",
        "ru": "Загрузка…",
    },
    "miniapp.no_init_data": {
        "en": "Open this page from the Reply button in Telegram.",
        "ru": "Откройте эту страницу кнопкой «Ответить» в Telegram.",
    },
    "miniapp.no_thread": {
        "en": "This link names no request.",
        "ru": "В этой ссылке нет обращения.",
    },
    "miniapp.error": {
        "en": "Error: {message}",
        "ru": "Ошибка: {message}",
    },
    "groups.card": {
        "en": "Join request to {group}:\n{name} ({username}, id {user_id}, language {language})",
        "ru": "Заявка на вступление в {group}:\n{name} ({username}, id {user_id}, язык {language})",
    },
    "groups.approve_button": {
        "en": "Approve",
        "ru": "Принять",
    },
    "groups.decline_button": {
        "en": "Decline",
        "ru": "Отклонить",
    },
    "groups.approved_by": {
        "en": "✅ Approved by {admin}",
        "ru": "✅ Принял(а) {admin}",
    },
    "groups.declined_by": {
        "en": "❌ Declined by {admin}",
        "ru": "❌ Отклонил(а) {admin}",
    },
    "groups.not_admin": {
        "en": "Only the bot's admins can decide join requests.",
        "ru": "Решать по заявкам могут только администраторы бота.",
    },
    "events.recorded": {
        "en": "Recorded: {answer}.",
        "ru": "Записано: {answer}.",
    },
    "events.already_recorded": {
        "en": "Already recorded: {answer}.",
        "ru": "Уже записано: {answer}.",
    },
    "events.unknown_card": {
        "en": "This card is no longer valid.",
        "ru": "Эта карточка больше не действует.",
    },
    "groups.already_decided": {
        "en": "This request is already decided.",
        "ru": "По этой заявке уже есть решение.",
    },
    "groups.question": {
        "en": "To join {group}, please answer within {minutes} min:\n\n{question}",
        "ru": "Чтобы вступить в {group}, ответьте в течение {minutes} мин.:\n\n{question}",
    },
    "groups.answer_approved": {
        "en": "Thank you! Your request to join is approved.",
        "ru": "Спасибо! Ваша заявка на вступление одобрена.",
    },
    "groups.answer_declined": {
        "en": "Sorry, your request to join is declined.",
        "ru": "К сожалению, ваша заявка на вступление отклонена.",
    },
    "groups.answer_late": {
        "en": "Your join request was already decided.",
        "ru": "По вашей заявке на вступление уже есть решение.",
    },
    "groups.inactivity_warning": {
        "en": "{name}, we have not heard from you here for {days} days. Members silent for "
              "{remove_days} days are removed from the group; write a message to stay.",
        "ru": "{name}, вы не писали здесь уже {days} дн. Участники, молчащие {remove_days} дн., "
              "удаляются из группы; напишите сообщение, чтобы остаться.",
    },
    # group commands (clarion_bot.handlers.group_commands)
    "groups.no_rules": {
        "en": "This group has no rules set.",
        "ru": "Для этой группы правила не заданы.",
    },
    "groups.report_usage": {
        "en": "To report a message, reply to it with /report.",
        "ru": "Чтобы пожаловаться на сообщение, ответьте на него командой /report.",
    },
    "groups.report_sent": {
        "en": "Thank you, the admins have your report.",
        "ru": "Спасибо, администраторы получили вашу жалобу.",
    },
    "groups.report_limited": {
        "en": "You can send one report a minute. Please try again later.",
        "ru": "Жалобу можно отправлять раз в минуту. Попробуйте позже.",
    },
    "groups.report_unavailable": {
        "en": "Reports cannot be sent from this group.",
        "ru": "Из этой группы жалобы отправить нельзя.",
    },
    "groups.report": {
        "en": "Report in {group} by {reporter} (id {reporter_id}) about {author} (id {author_id}):\n\n"
              "{text}\n\n{link}",
        "ru": "Жалоба в {group} от {reporter} (id {reporter_id}) на {author} (id {author_id}):\n\n"
              "{text}\n\n{link}",
    },
}


def pick_language(*candidates: str | None, default: str = DEFAULT_LANGUAGE) -> str:
    """The first supported candidate (e.g. stored choice, Telegram's language_code), else `default`."""
    for candidate in candidates:
        if candidate:
            code = candidate.split("-", 1)[0].lower()
            if code in BOT_LANGUAGES:
                return code
    return default if default in BOT_LANGUAGES else DEFAULT_LANGUAGE


class Translator:
    """`t("key", **values)`: the catalog text in one language; English when a language lacks the key."""

    def __init__(self, language: str) -> None:
        self.language = language if language in BOT_LANGUAGES else DEFAULT_LANGUAGE

    def __call__(self, key: str, **values: Any) -> str:
        texts = CATALOG[key]
        return texts.get(self.language, texts[DEFAULT_LANGUAGE]).format(**values)
