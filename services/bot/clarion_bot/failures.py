"""What a handler's exception means for its stream entry, decided in one place.

- `WAIT` — 429 (`TelegramRetryAfter`; the session middleware already paused the bot in every pod):
  wait retry_after, run the handler again; not counted.
- `OUTAGE` — Postgres unreachable (`clarion.outages.database_unavailable`); the group activity buffer
  full of entries waiting for a flush (`ActivityBacklog`: Postgres away, clarion_bot.activity);
  Telegram 5xx, network errors, timeouts, undecodable answers; 401 (a revoked token: nothing can be
  answered until it is replaced). The entry stays pending and is tried again with backoff until it
  goes through; not counted toward any limit.
- `PERMANENT` — Telegram 400/404/other 4xx (`chat not found`), 403 (blocked, deactivated, …), a
  group migrated again after the session followed it once: dead-lettered at once with the reason.
- `ERROR` — anything else (a bug, Redis): retried up to `CLARION_BOT_MAX_ATTEMPTS`, then dead-lettered.

Telegram failures are classified by `clarion.telegram.errors.classify_aiogram`, the senders' table.
A bare `OSError` or timeout counts as Postgres: aiogram wraps its own network errors and redis-py
raises its own classes, so inside a handler nothing else raises them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from aiogram.exceptions import ClientDecodeError, TelegramAPIError
from clarion.outages import database_unavailable
from clarion.telegram.errors import Outcome, classify_aiogram

MAX_ERROR_LENGTH = 1000


class Verdict(enum.Enum):
    WAIT = "wait"
    OUTAGE = "outage"
    PERMANENT = "permanent"
    ERROR = "error"


class ActivityBacklog(Exception):
    """Too many entries wait for a group activity flush (Postgres away): this one is held back."""


@dataclass(frozen=True)
class Failure:
    """A verdict with its reason (a metric label value and the dead letter's `reason`) and the error text."""

    verdict: Verdict
    reason: str
    error: str
    retry_after: float = 0.0


def judge(exc: BaseException) -> Failure:
    """The verdict on an exception a handler raised."""
    error = repr(exc)[:MAX_ERROR_LENGTH]
    if isinstance(exc, (TelegramAPIError, ClientDecodeError)):
        classified = classify_aiogram(exc)
        outcome = classified.outcome
        if outcome is Outcome.RATE_LIMITED:
            return Failure(Verdict.WAIT, "telegram_rate_limited", error, classified.retry_after)
        if outcome is Outcome.RETRY:
            return Failure(Verdict.OUTAGE, "telegram_unavailable", error)
        if outcome is Outcome.FATAL:
            return Failure(Verdict.OUTAGE, "telegram_unauthorized", error)
        return Failure(Verdict.PERMANENT, f"telegram_{outcome.value}", classified.error)
    if database_unavailable(exc):
        return Failure(Verdict.OUTAGE, "database_unavailable", error)
    if isinstance(exc, ActivityBacklog):
        return Failure(Verdict.OUTAGE, "activity_backlog", error)
    return Failure(Verdict.ERROR, "handler_error", error)
