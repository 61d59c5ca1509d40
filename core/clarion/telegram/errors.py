"""What a failed Bot API call means for a delivery (DESIGN §4), decided in one place.

- 429 Too Many Requests → `RATE_LIMITED`: pause the whole bot for retry_after, then send again; no
  attempt is counted.
- a group moved to a supergroup (400 with `migrate_to_chat_id`) → `MIGRATED`: send again at the new id.
- 403 blocked / deactivated / never started / kicked → `BLOCKED`: the recipient becomes unavailable;
  no retry.
- 400 chat not found, any other 4xx → `FAILED`: no retry.
- 5xx, network errors, timeouts → `RETRY`: back off and retry up to maxAttempts.
- 401 Unauthorized → `FATAL`: the token is wrong; stop sending.

Failures come as `clarion.telegram.botapi.BotApiError` (Telegram answered) or as aiohttp/OS errors and
timeouts (it did not). The bot talks through aiogram, whose `aiogram.exceptions` say the same things;
`classify_aiogram` maps them to the same outcomes (a status aiogram has no class for is a 4xx: `FAILED`;
a 413 is `FAILED` although aiogram files it under network errors; an undecodable answer is `RETRY`).
"""

from __future__ import annotations

import asyncio
import enum
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clarion.telegram.botapi import UNREACHABLE, BotApiError

if TYPE_CHECKING:  # the sender never imports aiogram: its import costs seconds of CPU per pod
    from aiogram.exceptions import ClientDecodeError, TelegramAPIError

MAX_ERROR_LENGTH = 500


class Outcome(enum.Enum):
    RATE_LIMITED = "rate_limited"
    MIGRATED = "migrated"
    BLOCKED = "blocked"
    FAILED = "failed"
    RETRY = "retry"
    FATAL = "fatal"


@dataclass(frozen=True)
class Classified:
    """An outcome with what it needs: the error text, retry_after, the new chat id, the blocked reason."""

    outcome: Outcome
    error: str
    retry_after: float = 0.0
    migrate_to_chat_id: int | None = None
    reason: str | None = None


# Substrings of Telegram's 403 descriptions and the reason recorded on the subscriber.
_BLOCKED_REASONS = (
    ("blocked by the user", "blocked"),
    ("user is deactivated", "deactivated"),
    ("can't initiate conversation", "not_started"),
    ("kicked", "kicked"),
    ("not a member", "not_member"),
)


def classify(exc: BaseException) -> Classified:
    """Map an exception raised by a `BotApi` call (or a timeout, or a lost connection) to its outcome."""
    error = _describe(exc)
    if isinstance(exc, BotApiError):
        status = exc.status
        if status == 429:
            return Classified(Outcome.RATE_LIMITED, error, retry_after=float(exc.retry_after or 1))
        if exc.migrate_to_chat_id is not None:
            return Classified(Outcome.MIGRATED, error, migrate_to_chat_id=exc.migrate_to_chat_id)
        if status == 403:
            text = exc.description.lower()
            reason = next((r for needle, r in _BLOCKED_REASONS if needle in text), "forbidden")
            return Classified(Outcome.BLOCKED, error, reason=reason)
        if status == 401:
            return Classified(Outcome.FATAL, error)
        if status >= 500:
            return Classified(Outcome.RETRY, error)
        return Classified(Outcome.FAILED, error)
    if isinstance(exc, UNREACHABLE):
        return Classified(Outcome.RETRY, error)
    return Classified(Outcome.RETRY, error)


def classify_aiogram(exc: TelegramAPIError | ClientDecodeError) -> Classified:
    """The same outcomes for a failure of an aiogram `Bot` call (the bot's replies)."""
    from aiogram.exceptions import (
        ClientDecodeError,
        TelegramEntityTooLarge,
        TelegramForbiddenError,
        TelegramMigrateToChat,
        TelegramNetworkError,
        TelegramRetryAfter,
        TelegramServerError,
        TelegramUnauthorizedError,
    )

    error = str(exc.message)[:MAX_ERROR_LENGTH]
    if isinstance(exc, TelegramRetryAfter):
        return Classified(Outcome.RATE_LIMITED, error, retry_after=float(exc.retry_after or 1))
    if isinstance(exc, TelegramMigrateToChat):
        return Classified(Outcome.MIGRATED, error, migrate_to_chat_id=exc.migrate_to_chat_id)
    if isinstance(exc, TelegramForbiddenError):
        text = exc.message.lower()
        reason = next((r for needle, r in _BLOCKED_REASONS if needle in text), "forbidden")
        return Classified(Outcome.BLOCKED, error, reason=reason)
    if isinstance(exc, TelegramUnauthorizedError):
        return Classified(Outcome.FATAL, error)
    if isinstance(exc, TelegramEntityTooLarge):
        return Classified(Outcome.FAILED, error)
    if isinstance(exc, (TelegramServerError, TelegramNetworkError, ClientDecodeError)):
        return Classified(Outcome.RETRY, error)
    return Classified(Outcome.FAILED, error)


def backoff_seconds(attempt: int, base: float, *, cap: float = 600.0) -> float:
    """Delay before attempt `attempt + 1`: exponential from `base`, capped, with full jitter in [½, 1]."""
    ceiling = min(cap, base * 2.0 ** max(0, attempt - 1))
    return ceiling * (0.5 + random.random() / 2)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BotApiError):
        text = f"{exc.status} {exc.message}"
    elif isinstance(exc, asyncio.TimeoutError):
        text = "timeout"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text[:MAX_ERROR_LENGTH]
