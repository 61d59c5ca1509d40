"""The bot's pure parts: fair lease shares, language choice and the catalog of every bot language."""

from __future__ import annotations

import string

import pytest
from aiogram.types import Chat
from clarion.db.channels import ChannelRecord
from clarion.i18n import CATALOG, Translator, pick_language
from clarion.keys import split_channel_key
from clarion.models.channel import BOT_LANGUAGES
from clarion_bot.handlers.group_commands import message_link
from clarion_bot.handlers.language import LanguageChoice, language_keyboard
from clarion_bot.leases import fair_share, preferred_order
from clarion_bot.limits import takes_a_slot

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("partitions", "live", "share"), [(16, 1, 16), (16, 2, 8), (16, 3, 6), (16, 0, 16),
                                                            (16, 20, 1), (1, 2, 1)])
def test_fair_share_covers_every_partition(partitions: int, live: int, share: int) -> None:
    assert fair_share(partitions, live) == share
    assert share * max(live, 1) >= partitions


def test_preferred_order_visits_every_partition_once() -> None:
    for replica in ("a", "bot-7f9c-xyz", "host-1234"):
        assert sorted(preferred_order(replica, 16)) == list(range(16))


def test_every_text_exists_in_every_language_with_the_same_placeholders() -> None:
    for key, texts in CATALOG.items():
        assert set(texts) == set(BOT_LANGUAGES), key
        fields = {frozenset(f for _, f, _, _ in string.Formatter().parse(text) if f)
                  for text in texts.values()}
        assert len(fields) == 1, key


def test_every_supported_language_is_offered_chosen_and_taken_as_a_channel_default() -> None:
    buttons = [button for row in language_keyboard().inline_keyboard for button in row]
    assert [LanguageChoice.unpack(str(b.callback_data)).code for b in buttons] == list(BOT_LANGUAGES)
    assert len({b.text for b in buttons}) == len(BOT_LANGUAGES)  # each named in its own language
    for code in BOT_LANGUAGES:
        assert pick_language(code, default="en") == code
        channel = ChannelRecord(id=1, key="default.bot", type="telegram", bot_id=None, bot_username=None,
                                api_base_url=None, webhook_secret_sha256=None, ready=True,
                                config={"defaultLanguage": code})
        assert channel.default_language == code


@pytest.mark.parametrize(("candidates", "default", "expected"), [
    (("ru",), "en", "ru"), (("ru-RU",), "en", "ru"), (("de",), "en", "en"), (("de",), "ru", "ru"),
    ((None, "en-GB"), "ru", "en"), ((None, None), "xx", "en"), (("EN",), "ru", "en"),
])
def test_language_is_the_first_supported_choice_else_the_default(
        candidates: tuple[str | None, ...], default: str, expected: str) -> None:
    assert pick_language(*candidates, default=default) == expected


def test_translator_formats_in_its_language_and_falls_back_to_english() -> None:
    assert Translator("ru")("diagnostics.pong", n=3) == "pong 3"
    assert Translator("ru")("stop.done").startswith("Вы отписались")
    assert Translator("zz")("stop.done").startswith("You are unsubscribed")


@pytest.mark.parametrize(("key", "parts"), [
    ("default.bot", ("default", "bot")), ("ns-1.my.bot", ("ns-1", "my.bot")), ("nodot", None),
    ("Up.per", None), (".x", None), ("a.", None), ("a.b/c", None), ("a." + "b" * 300, None),
])
def test_channel_keys_are_namespace_dot_name(key: str, parts: tuple[str, str] | None) -> None:
    assert split_channel_key(key) == parts


def test_only_methods_that_post_or_edit_a_message_take_a_rate_limit_slot() -> None:
    assert all(map(takes_a_slot, ("sendMessage", "sendPhoto", "copyMessage", "forwardMessage",
                                     "editMessageText", "editMessageReplyMarkup")))
    assert not any(map(takes_a_slot, ("answerCallbackQuery", "sendChatAction", "getMe")))


def test_support_references_name_the_thread_and_nothing_else_parses_as_one() -> None:
    from clarion.db import support

    assert support.parse_reference(support.reference("post", 42)) == ("post", 42)
    assert support.parse_reference(support.reference("reply", 7)) == ("reply", 7)
    for other in (None, "", "order-17", "support-reply:", "support-reply:x1", "support-other:3"):
        assert support.parse_reference(other) is None


@pytest.mark.parametrize(("chat", "link"), [
    ({"id": -1001234567, "type": "supergroup", "username": "bookclub"}, "https://t.me/bookclub/42"),
    ({"id": -1001234567, "type": "supergroup"}, "https://t.me/c/1234567/42"),
    ({"id": -4001, "type": "group"}, None),
])
def test_a_reported_message_links_by_username_else_by_the_supergroups_id(
        chat: dict[str, object], link: str | None) -> None:
    assert message_link(Chat.model_validate(chat), 42) == link
