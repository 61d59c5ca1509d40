"""How a notification worker sends through each kind of channel: one `Transport` per channel type.

A transport never raises for a send that failed: it says what the failure means (`SendResult`), with
the same tables the campaign sender uses (`clarion.telegram.errors.classify` for the Bot API,
`clarion.mail` for SMTP, `push_outcome` for push services).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar, get_args

import aiohttp
import asyncpg
from clarion import webpush
from clarion.db import notifications as q
from clarion.db import push_subscriptions as subs
from clarion.mail import MailOutcome, MailSender, MailSendError, OutgoingEmail
from clarion.models import Message, WebPushDelivery
from clarion.models.channel import MAX_PUSH_TTL_SECONDS, PushUrgency
from clarion.outages import ride_out
from clarion.telegram.botapi import BotApi
from clarion.telegram.errors import Outcome as TelegramOutcome
from clarion.telegram.errors import classify
from clarion.telegram.limiter import Priority, RateLimiter
from py_vapid import VapidException

from clarion_senders.render import MessageRenderer
from clarion_senders.worker import Outcome, SendResult

T = TypeVar("T")
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


#: Wait before retrying a 429 that named no Retry-After.
DEFAULT_PUSH_RETRY_AFTER = 60.0
#: The longest Retry-After a 429 is waited out for (a longer one is waited this long).
MAX_PUSH_RETRY_AFTER = 3600.0


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float:
    """A Retry-After header (seconds or an HTTP date) as seconds to wait, within 0..`MAX_PUSH_RETRY_AFTER`;
    `DEFAULT_PUSH_RETRY_AFTER` when absent or unreadable."""
    if not value:
        return DEFAULT_PUSH_RETRY_AFTER
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_PUSH_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return DEFAULT_PUSH_RETRY_AFTER
    wait = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(wait, 0.0), MAX_PUSH_RETRY_AFTER)


def push_outcome(status: int, reason: str, retry_after: str | None, *, size: int) -> SendResult:
    """What a push service's answer (RFC 8030 §5, RFC 8292 §4) to a message of `size` encrypted bytes
    means. 404/410 are handled by the caller before this (the subscription is gone).

    | answer        | outcome                                                         |
    |---------------|-----------------------------------------------------------------|
    | 2xx           | sent                                                            |
    | 413           | failed: the payload is too large (not worth a retry)            |
    | 429           | rate limited: retried after Retry-After, no attempt counted     |
    | 5xx           | retry (capped attempts, then dead letter)                       |
    | other 4xx     | failed (400 malformed, 401/403 VAPID refused for this endpoint) |
    """
    if 200 <= status < 300:
        return SendResult(Outcome.SENT)
    said = f"push service answered {status} {reason}".strip()
    if status == 413:
        return SendResult(Outcome.FAILED, f"{said}: the payload is too large ({size} bytes encrypted, "
                                          f"push services must take {webpush.MAX_ENCRYPTED_BYTES}); "
                                          "shorten the title, body or url")
    if status == 429:
        wait = retry_after_seconds(retry_after)
        return SendResult(Outcome.RATE_LIMITED, f"{said}; retry after {wait:.0f} s", retry_after=wait)
    if status >= 500:
        return SendResult(Outcome.RETRY, said)
    return SendResult(Outcome.FAILED, said)


class WebPushTransport:
    """Web push (RFC 8030) to the subscription a row names (`recipient` = the subscription id): the
    payload `{"title", "body", "url"?}` as JSON, encrypted aes128gcm (RFC 8291), signed with the
    channel's VAPID key (RFC 8292), with the TTL and Urgency headers (the row's, else the channel's).
    A 404 or 410 deletes the subscription and the row is `blocked`; see `push_outcome` for the rest."""

    def __init__(self, pool: asyncpg.Pool, channel_id: int, key: webpush.VapidKey, delivery: WebPushDelivery,
                 *, timeout_seconds: float = 30.0, connections: int = 64, outage_tolerance: float = 300.0,
                 ) -> None:
        self.pool, self.channel_id, self.key, self.delivery = pool, channel_id, key, delivery
        self.outage_tolerance = outage_tolerance
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_seconds),
            connector=aiohttp.TCPConnector(limit=connections))

    async def admit(self, row: q.Row) -> None:
        """Nothing to wait for: a push service's limits answer as 429 (waited out by Retry-After)."""

    async def send(self, row: q.Row) -> SendResult:
        try:
            ident = uuid.UUID(row.recipient)
        except ValueError:
            return SendResult(Outcome.FAILED,
                              f"recipient {row.recipient[:64]!r} is not a push subscription id")
        found = await self._db("push_subscriptions.get", lambda conn: subs.get(conn, self.channel_id, ident))
        if found is None:
            return SendResult(Outcome.BLOCKED, f"push subscription {ident} no longer exists")
        try:
            keys = webpush.subscription_keys(found.p256dh, found.auth)
            ttl, urgency = self._headers(row)
            authorization = self.key.authorization(found.endpoint, self.delivery.subject)
        except (webpush.KeyProblem, ValueError, VapidException) as exc:  # the API and the events API
            # check what they accept; a row that still fails is permanent
            return SendResult(Outcome.FAILED, f"push subscription {ident}: {exc}"[:500])
        body = webpush.encrypt(webpush.payload(row.content, str(row.id)), keys)
        headers = {"Content-Encoding": webpush.CONTENT_ENCODING, "Content-Type": "application/octet-stream",
                   "TTL": str(ttl), "Urgency": urgency, "Authorization": authorization}
        try:
            async with self.session.post(found.endpoint, data=body, headers=headers) as response:
                status, reason = response.status, response.reason or ""
                retry_after, location = response.headers.get("Retry-After"), response.headers.get("Location")
                await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return SendResult(Outcome.RETRY, f"push service unreachable: {exc!r}"[:500])
        if status in (404, 410):
            await self._db("push_subscriptions.delete",
                           lambda conn: subs.delete(conn, self.channel_id, ident))
            return SendResult(Outcome.BLOCKED,
                              f"push service answered {status}: subscription {ident} is gone and was removed")
        result = push_outcome(status, reason, retry_after, size=len(body))
        if result.outcome == Outcome.SENT:
            await self._db("push_subscriptions.mark_sent",
                           lambda conn: subs.mark_sent(conn, self.channel_id, ident))
            return SendResult(Outcome.SENT, provider_message_id=location)
        return result

    async def _db(self, what: str, query: Callable[[Any], Awaitable[T]]) -> T:
        """`query` on a pooled connection, waiting out a Postgres outage like the worker's own calls."""
        async def call() -> T:
            async with self.pool.acquire() as conn:
                return await query(conn)

        return await ride_out(what, call, tolerance=self.outage_tolerance)

    def _headers(self, row: q.Row) -> tuple[int, PushUrgency]:
        """TTL and Urgency: the row's `ttl` and `urgency`, else the channel's; ValueError if invalid."""
        ttl = row.content.get("ttl", self.delivery.ttl_seconds)
        urgency = row.content.get("urgency", self.delivery.urgency)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= MAX_PUSH_TTL_SECONDS:
            raise ValueError(f"content.ttl must be 0..{MAX_PUSH_TTL_SECONDS} seconds, not {ttl!r}")
        if urgency not in get_args(PushUrgency):
            allowed = ", ".join(get_args(PushUrgency))
            raise ValueError(f"content.urgency must be one of {allowed}, not {urgency!r}")
        return ttl, urgency

    async def close(self) -> None:
        await self.session.close()
