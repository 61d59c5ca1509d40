"""How a notification worker sends through each kind of channel: one `Transport` per channel type.

A transport never raises for a send that failed: it says what the failure means (`SendResult`), with
the same tables the campaign sender uses (`clarion.telegram.errors.classify` for the Bot API,
`clarion.mail` for SMTP).
"""

from __future__ import annotations

import asyncio

from clarion.db import notifications as q
from clarion.mail import MailOutcome, MailSender, MailSendError, OutgoingEmail
from clarion.models import Message
from clarion.outages import ride_out
from clarion.telegram.botapi import BotApi
from clarion.telegram.errors import Outcome as TelegramOutcome
from clarion.telegram.errors import classify
from clarion.telegram.limiter import Priority, RateLimiter

from clarion_senders.render import MessageRenderer
from clarion_senders.worker import Outcome, SendResult

#: Tries at pinning a sent message (`TelegramTransport._pin`).
PIN_ATTEMPTS = 3
_TELEGRAM_OUTCOMES = {
    TelegramOutcome.BLOCKED: Outcome.BLOCKED,
    TelegramOutcome.FAILED: Outcome.FAILED,
    TelegramOutcome.MIGRATED: Outcome.FAILED,  # the recipient is a group that moved: the caller must resend
    TelegramOutcome.RETRY: Outcome.RETRY,
    TelegramOutcome.FATAL: Outcome.FATAL,
}


class TelegramTransport:
    """`sendMessage` through the bot's limiter, which every campaign sender and worker of the bot shares;
    the instant lane's sends go first (`Priority.INSTANT`), the bulk and group-posts lanes' queue with
    the campaigns'. Content with `pin` is pinned once sent (pinChatMessage, silently)."""

    def __init__(self, api: BotApi, limiter: RateLimiter, *, outage_tolerance: float = 300.0) -> None:
        self.api, self.limiter, self.outage_tolerance = api, limiter, outage_tolerance

    async def admit(self, row: q.Row) -> None:
        """A slot of the bot's limiter for the row's chat: the instant lane's first."""
        priority = Priority.INSTANT if row.lane == "instant" else Priority.NORMAL
        await ride_out("limiter.acquire", lambda: self.limiter.acquire(int(row.recipient), priority=priority),
                       tolerance=self.outage_tolerance)

    async def send(self, row: q.Row) -> SendResult:
        """`sendMessage` (or the media method) now; `admit` has taken the limiter's slot."""
        chat_id = int(row.recipient)
        message = Message.model_validate(
            {k: row.content[k] for k in ("text", "parseMode", "buttons", "disableNotification")
             if k in row.content})
        rendered = MessageRenderer(message).for_language(None)
        try:
            result = await self.api.call_json(rendered.method, rendered.body(chat_id))
        except Exception as exc:  # every failure is classified
            found = classify(exc)
            if found.outcome is TelegramOutcome.RATE_LIMITED:
                await self.limiter.pause(found.retry_after)
                return SendResult(Outcome.RATE_LIMITED, found.error, retry_after=found.retry_after)
            return SendResult(_TELEGRAM_OUTCOMES[found.outcome], found.error)
        message_id = result.get("message_id") if isinstance(result, dict) else None
        pin_error = None
        if row.content.get("pin") and message_id is not None:
            pin_error = await self._pin(chat_id, int(message_id))
        return SendResult(Outcome.SENT, pin_error,
                          provider_message_id=None if message_id is None else str(message_id))

    async def _pin(self, chat_id: int, message_id: int) -> str | None:
        """Pin the message just sent, silently; what went wrong (kept as the sent row's last error:
        the message is out, sending it again would only duplicate it), else None. A 429 is waited out
        (up to `PIN_ATTEMPTS` tries), a 5xx or a lost connection tried again likewise."""
        error = ""
        for _ in range(PIN_ATTEMPTS):
            try:
                await self.api.pin_chat_message(chat_id, message_id)
                return None
            except Exception as exc:  # every failure is classified
                found = classify(exc)
                error = found.error
                if found.outcome is TelegramOutcome.RATE_LIMITED:
                    await asyncio.sleep(found.retry_after)
                elif found.outcome is not TelegramOutcome.RETRY:
                    break
        return f"sent, not pinned: {error}"

    async def close(self) -> None:
        await self.api.close()
        await self.limiter.close()


_MAIL_OUTCOMES = {MailOutcome.RETRY: Outcome.RETRY, MailOutcome.PERMANENT: Outcome.FAILED,
                  MailOutcome.FATAL: Outcome.FATAL}


class EmailTransport:
    """SMTP through the channel's pooled `MailSender` (docs/email.md). The Message-ID is derived from the
    notification id, so a retried email keeps it and a mail client can tell a duplicate."""

    def __init__(self, mail: MailSender) -> None:
        self.mail = mail
        self._domain = mail.sender.domain

    async def admit(self, row: q.Row) -> None:
        """Nothing to wait for: the relay's own limits answer as SMTP replies (4xx: retried)."""

    async def send(self, row: q.Row) -> SendResult:
        content = row.content
        try:
            outgoing = OutgoingEmail(
                to=row.recipient, subject=str(content.get("subject") or ""), text=str(content["text"]),
                html=content.get("html"), message_id=f"<{row.id}@{self._domain}>",
                headers={"X-Clarion-Notification-Id": str(row.id), "X-Clarion-Trace-Id": row.trace_id})
        except ValueError as exc:  # the API checks what it accepts; a row that still fails is permanent
            return SendResult(Outcome.FAILED, f"invalid email: {exc}")
        try:
            sent = await self.mail.send(outgoing)
        except MailSendError as exc:
            return SendResult(_MAIL_OUTCOMES[exc.outcome], exc.classified.error)
        return SendResult(Outcome.SENT, provider_message_id=sent.message_id)

    async def close(self) -> None:
        await self.mail.close()
