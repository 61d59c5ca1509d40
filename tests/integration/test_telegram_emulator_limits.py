"""Telegram's sending limits as the emulator enforces them, seen through an unchanged aiogram Bot.

The emulator runs with limits="real" and a manual clock, so every test is deterministic: the clock
only moves when the test moves it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiogram import Bot
from aiogram.exceptions import TelegramRetryAfter
from clarion_dev.telegram import Emulator
from clarion_dev.testing.telegram import aiogram_bot

pytestmark = pytest.mark.integration

USERS = range(10_001, 12_001)
GROUP = -100_555


class ManualClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def emu(clock: ManualClock) -> AsyncIterator[Emulator]:
    emulator = Emulator(limits="real", clock=clock)
    await emulator.start()
    for uid in USERS:
        emulator.add_user(uid)
    emulator.add_group(GROUP, "Limits", members=[USERS[0]], admins=[USERS[1]])
    try:
        yield emulator
    finally:
        await emulator.stop()


@pytest.fixture
async def bot(emu: Emulator) -> AsyncIterator[Bot]:
    info = emu.add_bot(username="limits_bot")
    client = aiogram_bot(emu, info.token)
    try:
        yield client
    finally:
        await client.session.close()


async def _try_send(bot: Bot, chat_id: int, paid: bool = False) -> int | None:
    """None when accepted, else the retry_after of the 429."""
    try:
        await bot.send_message(chat_id, "hello", allow_paid_broadcast=paid or None)
    except TelegramRetryAfter as exc:
        return exc.retry_after
    return None


async def test_forty_sends_within_one_second_draw_429s_with_retry_after(
        emu: Emulator, bot: Bot, clock: ManualClock) -> None:
    outcomes = []
    for i in range(40):
        outcomes.append(await _try_send(bot, USERS[i]))
        clock.advance(1 / 40)
    refused = [r for r in outcomes if r is not None]
    assert refused, "40 messages in one second must exceed ~30 msg/s"
    assert all(r >= 1 for r in refused)
    assert len(emu.sent(bot.token)) <= 30
    assert emu.stats(bot.token)["too_many_requests"] == len(refused)
    assert [e.retry_after for e in emu.retry_afters(bot.token)] == refused


async def test_sending_during_retry_after_is_refused_again_and_allowed_after_it(
        emu: Emulator, bot: Bot, clock: ManualClock) -> None:
    first_refusal = None
    for uid in USERS:
        first_refusal = await _try_send(bot, uid)
        if first_refusal is not None:
            break
    assert first_refusal is not None
    accepted_before = len(emu.sent(bot.token))
    clock.advance(first_refusal - 0.01)
    assert await _try_send(bot, USERS[-1]) is not None, "still inside retry_after"
    assert len(emu.sent(bot.token)) == accepted_before
    clock.advance(0.02)
    assert await _try_send(bot, USERS[-1]) is None


async def test_private_chat_allows_a_small_burst_then_one_message_per_second(
        emu: Emulator, bot: Bot, clock: ManualClock) -> None:
    user = USERS[0]
    assert [await _try_send(bot, user) for _ in range(3)] == [None, None, None]
    retry = await _try_send(bot, user)
    assert retry == 1
    assert await _try_send(bot, USERS[1]) is None, "other chats are not paused"
    clock.advance(1.0)
    assert await _try_send(bot, user) is None
    assert await _try_send(bot, user) is not None
    assert len(emu.sent(bot.token, chat_id=user)) == 4


async def test_group_gets_at_most_twenty_messages_per_minute(
        emu: Emulator, bot: Bot, clock: ManualClock) -> None:
    accepted_at = []
    for _ in range(120):
        if await _try_send(bot, GROUP) is None:
            accepted_at.append(clock.now)
        clock.advance(1.0)
    assert len(accepted_at) >= 20
    for i, start in enumerate(accepted_at):
        in_window = [t for t in accepted_at[i:] if t < start + 60]
        assert len(in_window) <= 20
    assert all(e.scope == "chat" for e in emu.retry_afters(bot.token))


async def test_paid_broadcast_passes_thirty_per_second_up_to_a_thousand(
        emu: Emulator, bot: Bot, clock: ManualClock) -> None:
    for uid in USERS[:600]:
        assert await _try_send(bot, uid, paid=True) is None
        clock.advance(1 / 1000)
    assert len(emu.sent(bot.token)) == 600
    assert all(m.paid for m in emu.sent(bot.token))
    assert emu.stats(bot.token)["too_many_requests"] == 0


async def test_paid_broadcast_beyond_a_thousand_per_second_is_refused(
        emu: Emulator, bot: Bot, clock: ManualClock) -> None:
    outcomes = []
    for uid in USERS[:400]:
        outcomes.append(await _try_send(bot, uid, paid=True))
        clock.advance(1 / 2000)
    assert any(r is not None for r in outcomes)
    assert len(emu.sent(bot.token)) < 400


async def test_unpaid_sends_at_a_thousand_per_second_are_refused(
        emu: Emulator, bot: Bot, clock: ManualClock) -> None:
    outcomes = []
    for uid in USERS[:100]:
        outcomes.append(await _try_send(bot, uid))
        clock.advance(1 / 1000)
    assert sum(r is None for r in outcomes) <= 10


async def test_limits_off_accepts_everything(emu: Emulator, bot: Bot) -> None:
    emu.set_limits("off")
    for _ in range(50):
        assert await _try_send(bot, USERS[0]) is None
    assert len(emu.sent(bot.token, chat_id=USERS[0])) == 50


async def test_scaled_limits_multiply_every_rate(emu: Emulator, bot: Bot, clock: ManualClock) -> None:
    emu.set_limits("scaled", 10.0)
    user = USERS[0]
    assert [await _try_send(bot, user) for _ in range(3)] == [None, None, None]
    assert await _try_send(bot, user) == 1
    clock.advance(1.0)
    assert await _try_send(bot, user) is None
    clock.advance(0.1)
    assert await _try_send(bot, user) is None, "10 per second per chat at scale 10"
