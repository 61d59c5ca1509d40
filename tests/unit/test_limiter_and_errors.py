"""Pure parts of the Telegram client helpers: limit parsing and error classification."""

from __future__ import annotations

import pytest
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.methods import SendMessage
from clarion.telegram.errors import Outcome, backoff_seconds, classify
from clarion.telegram.limiter import RateLimiter, RateLimits

pytestmark = pytest.mark.unit

METHOD = SendMessage(chat_id=1, text="x")


def test_channel_rate_limits_are_read_from_camel_case_config_with_defaults() -> None:
    limits = RateLimits.from_config({"rateLimits": {"globalPerSecond": 300, "perGroupPerMinute": 10}})
    assert limits == RateLimits(global_per_second=300, per_chat_per_second=1, per_group_per_minute=10,
                                paid_broadcast_per_second=1000)
    assert RateLimits.from_config(None) == RateLimits()


@pytest.mark.parametrize("bad", [0, -1, float("inf")])
def test_non_positive_or_infinite_limits_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="global_per_second must be a positive number"):
        RateLimits.from_config({"rateLimits": {"globalPerSecond": bad}})


def test_limiter_refuses_a_cap_without_a_rate() -> None:
    with pytest.raises(ValueError, match="cap_scope"):
        RateLimiter(None, 1, RateLimits(), cap_scope="campaign:1")  # type: ignore[arg-type]


@pytest.mark.parametrize(("exc", "outcome", "reason"), [
    (TelegramForbiddenError(METHOD, "Forbidden: bot was blocked by the user"), Outcome.BLOCKED, "blocked"),
    (TelegramForbiddenError(METHOD, "Forbidden: user is deactivated"), Outcome.BLOCKED, "deactivated"),
    (TelegramForbiddenError(METHOD, "Forbidden: bot can't initiate conversation with a user"),
     Outcome.BLOCKED, "not_started"),
    (TelegramBadRequest(METHOD, "Bad Request: chat not found"), Outcome.FAILED, None),
    (TelegramBadRequest(METHOD, "Bad Request: message text is empty"), Outcome.FAILED, None),
    (TelegramServerError(METHOD, "Bad Gateway"), Outcome.RETRY, None),
    (TelegramNetworkError(METHOD, "Request timeout error"), Outcome.RETRY, None),
    (TimeoutError(), Outcome.RETRY, None),
    (TelegramUnauthorizedError(METHOD, "Unauthorized"), Outcome.FATAL, None),
])
def test_telegram_errors_map_to_delivery_outcomes(exc: BaseException, outcome: Outcome,
                                                  reason: str | None) -> None:
    found = classify(exc)
    assert (found.outcome, found.reason) == (outcome, reason)


def test_retry_after_and_migration_carry_their_parameters() -> None:
    assert classify(TelegramRetryAfter(METHOD, "Too Many Requests", 7)).retry_after == 7
    moved = classify(TelegramMigrateToChat(METHOD, "upgraded", -100123))
    assert (moved.outcome, moved.migrate_to_chat_id) == (Outcome.MIGRATED, -100123)


def test_backoff_doubles_from_the_base_with_jitter_and_a_cap() -> None:
    for attempt, ceiling in [(1, 5), (2, 10), (3, 20), (10, 600)]:
        delays = [backoff_seconds(attempt, 5) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
