"""pinChatMessage in the emulator, as Telegram answers it (aiogram's Bot, unchanged): any message of a
private chat; in a group only with the can_pin_messages right; a message the chat does not have is
refused."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest
from clarion_dev.telegram import Emulator
from clarion_dev.testing.telegram import aiogram_bot

pytestmark = [pytest.mark.integration, pytest.mark.emulator(limits="off")]

OWNER, USER = 701, 702
GROUP = -100_702


@pytest.fixture
async def bot(telegram_emulator: Emulator) -> AsyncIterator[Bot]:
    telegram_emulator.add_user(OWNER, "Olga")
    telegram_emulator.add_user(USER, "Uma")
    telegram_emulator.add_group(GROUP, "Readers", members=[USER], admins=[OWNER])
    info = telegram_emulator.add_bot(username="readers_bot")
    client = aiogram_bot(telegram_emulator, info.token, timeout=5)
    try:
        yield client
    finally:
        await client.session.close()


async def test_a_bot_with_the_right_pins_a_group_message_and_the_latest_pin_is_last(
    telegram_emulator: Emulator, bot: Bot,
) -> None:
    first = await bot.send_message(GROUP, "first")
    second = await bot.send_message(GROUP, "second")

    assert await bot.pin_chat_message(GROUP, second.message_id, disable_notification=True)
    assert await bot.pin_chat_message(GROUP, first.message_id)

    assert telegram_emulator.groups[GROUP].log.pinned == [second.message_id, first.message_id]


async def test_without_can_pin_messages_a_group_pin_is_refused_and_nothing_is_pinned(
    telegram_emulator: Emulator, bot: Bot,
) -> None:
    telegram_emulator.set_bot_rights(bot.token, GROUP, ["can_invite_users", "can_delete_messages"])
    sent = await bot.send_message(GROUP, "rules")

    with pytest.raises(TelegramBadRequest, match="not enough rights to manage pinned messages"):
        await bot.pin_chat_message(GROUP, sent.message_id)
    telegram_emulator.set_bot_rights(bot.token, GROUP, None)  # a plain member
    with pytest.raises(TelegramBadRequest, match="not enough rights to manage pinned messages"):
        await bot.pin_chat_message(GROUP, sent.message_id)

    assert telegram_emulator.groups[GROUP].log.pinned == []


async def test_a_private_chat_message_is_pinned_without_rights_and_an_unknown_one_is_refused(
    telegram_emulator: Emulator, bot: Bot,
) -> None:
    sent = await bot.send_message(USER, "your order")

    assert await bot.pin_chat_message(USER, sent.message_id)
    with pytest.raises(TelegramBadRequest, match="message to pin not found"):
        await bot.pin_chat_message(USER, sent.message_id + 10)
    with pytest.raises(TelegramBadRequest, match="message to pin not found"):
        await bot.pin_chat_message(GROUP, 999)
