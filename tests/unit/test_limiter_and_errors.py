"""Pure parts of the Telegram client helpers: limit parsing and error classification."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.exceptions import TelegramAPIError, TelegramNetworkError
from aiogram.methods import SendMessage
from clarion.telegram.botapi import BotApiError
from clarion.telegram.errors import Outcome, backoff_seconds, classify, classify_aiogram
from clarion.telegram.limiter import RateLimiter, RateLimits

pytestmark = pytest.mark.unit


def refused(status: int, description: str, retry_after: int | None = None,
            migrate_to_chat_id: int | None = None) -> BotApiError:
    return BotApiError("sendMessage", status, description, retry_after, migrate_to_chat_id)


def test_channel_rate_limits_are_read_from_camel_case_config_with_defaults() -> None:
    limits = RateLimits.from_config({"rateLimits": {"globalPerSecond": 300, "perGroupPerMinute": 10}})
    assert limits == RateLimits(global_per_second=300, per_chat_per_second=1, per_group_per_minute=10,
                                paid_broadcast_per_second=1000)
    assert RateLimits.from_config(None) == RateLimits(global_per_second=30, per_chat_per_second=1,
                                                      per_group_per_minute=20, paid_broadcast_per_second=1000)


@pytest.mark.parametrize("bad", [0, -1, float("inf")])
def test_non_positive_or_infinite_limits_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="global_per_second must be a positive number"):
        RateLimits.from_config({"rateLimits": {"globalPerSecond": bad}})


def test_limiter_refuses_a_cap_without_a_rate() -> None:
    with pytest.raises(ValueError, match="cap_scope"):
        RateLimiter(None, 1, RateLimits.from_config(None), cap_scope="campaign:1")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -0.5, float("inf"), float("nan")])
def test_limiter_refuses_a_horizon_that_is_not_a_positive_number_of_seconds(bad: float) -> None:
    with pytest.raises(ValueError, match="horizon"):
        RateLimiter(None, 1, RateLimits.from_config(None), horizon=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("exc", "outcome", "reason"), [
    (refused(403, "Forbidden: bot was blocked by the user"), Outcome.BLOCKED, "blocked"),
    (refused(403, "Forbidden: user is deactivated"), Outcome.BLOCKED, "deactivated"),
    (refused(403, "Forbidden: bot can't initiate conversation with a user"), Outcome.BLOCKED, "not_started"),
    (refused(403, "Forbidden: bot was kicked from the group chat"), Outcome.BLOCKED, "kicked"),
    (refused(400, "Bad Request: chat not found"), Outcome.FAILED, None),
    (refused(400, "Bad Request: message text is empty"), Outcome.FAILED, None),
    (refused(409, "Conflict"), Outcome.FAILED, None),
    (refused(502, "HTTP 502, not a Bot API reply"), Outcome.RETRY, None),
    (refused(500, "Internal Server Error"), Outcome.RETRY, None),
    (aiohttp.ServerDisconnectedError(), Outcome.RETRY, None),
    (ConnectionResetError(), Outcome.RETRY, None),
    (TimeoutError(), Outcome.RETRY, None),
    (refused(401, "Unauthorized"), Outcome.FATAL, None),
])
def test_telegram_errors_map_to_delivery_outcomes(exc: BaseException, outcome: Outcome,
                                                  reason: str | None) -> None:
    found = classify(exc)
    assert (found.outcome, found.reason) == (outcome, reason)


def test_retry_after_and_migration_carry_their_parameters() -> None:
    assert classify(refused(429, "Too Many Requests: retry after 7", retry_after=7)).retry_after == 7
    moved = classify(refused(400, "Bad Request: group chat was upgraded to a supergroup chat",
                             migrate_to_chat_id=-100123))
    assert (moved.outcome, moved.migrate_to_chat_id) == (Outcome.MIGRATED, -100123)


def raised_by_aiogram(status: int, description: str, **parameters: int) -> TelegramAPIError:
    """The exception aiogram's own response check raises for Telegram's answer (status, description)."""
    body: dict[str, object] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    session = AiohttpSession()
    bot = Bot("42:TEST", session=session)
    try:
        session.check_response(bot, SendMessage(chat_id=1, text="x"), status, json.dumps(body))
    except TelegramAPIError as exc:
        return exc
    raise AssertionError("aiogram accepted an error answer")


@pytest.mark.parametrize(("status", "description", "parameters"), [
    (403, "Forbidden: bot was blocked by the user", {}),
    (403, "Forbidden: user is deactivated", {}),
    (403, "Forbidden: bot can't initiate conversation with a user", {}),
    (403, "Forbidden: bot was kicked from the group chat", {}),
    (403, "Forbidden: something new", {}),
    (400, "Bad Request: chat not found", {}),
    (404, "Not Found", {}),
    (409, "Conflict", {}),
    (413, "Request Entity Too Large", {}),
    (418, "I'm a teapot", {}),
    (500, "Internal Server Error", {}),
    (502, "Bad Gateway", {}),
    (500, "Internal Server Error: restart", {}),
    (401, "Unauthorized", {}),
    (429, "Too Many Requests: retry after 7", {"retry_after": 7}),
    (400, "Bad Request: group chat was upgraded to a supergroup chat", {"migrate_to_chat_id": -100123}),
])
def test_aiogram_errors_get_the_outcome_the_sender_gives_the_same_answer(
        status: int, description: str, parameters: dict[str, int]) -> None:
    ours = classify(refused(status, description, **parameters))
    theirs = classify_aiogram(raised_by_aiogram(status, description, **parameters))
    assert (theirs.outcome, theirs.reason, theirs.retry_after, theirs.migrate_to_chat_id) == (
        ours.outcome, ours.reason, ours.retry_after, ours.migrate_to_chat_id)
    assert description.split(":")[0] in theirs.error


def test_aiogram_network_errors_are_retried() -> None:
    failed = TelegramNetworkError(SendMessage(chat_id=1, text="x"), "ServerDisconnectedError: closed")
    assert classify_aiogram(failed).outcome is Outcome.RETRY


def test_backoff_doubles_from_the_base_with_jitter_and_a_cap() -> None:
    for attempt, ceiling in [(1, 5), (2, 10), (3, 20), (10, 600)]:
        delays = [backoff_seconds(attempt, 5) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
