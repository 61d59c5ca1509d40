"""The emulator answers as Telegram does: aiogram's Bot works unchanged and sees Telegram's errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiogram import Bot
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup, WebAppInfo
from clarion_dev.telegram import Emulator
from clarion_dev.testing.telegram import aiogram_bot

pytestmark = pytest.mark.integration

ALICE, BOB, CAROL, DAVE = 501, 502, 503, 504
GROUP = -100_777
OLD_GROUP, NEW_GROUP = -4242, -100_4242


@pytest.fixture
async def world(telegram_emulator: Emulator) -> Emulator:
    emu = telegram_emulator
    emu.add_user(ALICE, "Alice", "alice")
    emu.add_user(BOB, "Bob")
    emu.add_user(CAROL, "Carol", started=False)
    emu.add_user(DAVE, "Dave")
    emu.add_group(GROUP, "Clarion fans", members=[BOB], admins=[ALICE])
    emu.add_group(OLD_GROUP, "Old group", type="group", members=[BOB], admins=[ALICE])
    emu.migrate_group(OLD_GROUP, NEW_GROUP)
    return emu


@pytest.fixture
async def bot(world: Emulator) -> AsyncIterator[Bot]:
    info = world.add_bot(username="clarion_fans_bot")
    client = aiogram_bot(world, info.token, timeout=5)
    try:
        yield client
    finally:
        await client.session.close()


def _keyboard(data: str = "yes") -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text="Yes", callback_data=data)]])


async def test_aiogram_get_me_returns_the_registered_bot(bot: Bot) -> None:
    me = await bot.get_me()
    assert me.is_bot and me.username == "clarion_fans_bot" and me.id == bot.id


async def test_send_message_returns_a_telegram_message_and_is_recorded(world: Emulator, bot: Bot) -> None:
    first = await bot.send_message(ALICE, "Hello <b>Alice</b>", parse_mode="HTML", reply_markup=_keyboard())
    second = await bot.send_message(ALICE, "Again")
    assert first.chat.id == ALICE and first.chat.type == "private"
    assert first.from_user is not None and first.from_user.id == bot.id
    assert first.text == "Hello Alice"
    assert first.reply_markup is not None
    assert first.reply_markup.inline_keyboard[0][0].callback_data == "yes"
    assert second.message_id == first.message_id + 1
    sent = world.sent(bot.token, chat_id=ALICE)
    assert [(m.message_id, m.text, m.method) for m in sent] == [
        (first.message_id, "Hello Alice", "sendMessage"), (second.message_id, "Again", "sendMessage")]
    assert sent[0].raw_text == "Hello <b>Alice</b>" and sent[0].reply_markup is not None


async def test_unknown_token_is_unauthorized(world: Emulator) -> None:
    stranger = aiogram_bot(world, "123456:not-registered-token-aaaaaaaaaaaaaaaaa")
    try:
        with pytest.raises(TelegramUnauthorizedError, match="Unauthorized"):
            await stranger.get_me()
    finally:
        await stranger.session.close()


async def test_blocked_user_gives_403(world: Emulator, bot: Bot) -> None:
    world.set_blocked(bot.token, BOB, True)
    with pytest.raises(TelegramForbiddenError, match="Forbidden: bot was blocked by the user"):
        await bot.send_message(BOB, "hi")
    assert world.sent(bot.token) == []


async def test_deactivated_user_gives_403(world: Emulator, bot: Bot) -> None:
    world.deactivate_user(DAVE)
    with pytest.raises(TelegramForbiddenError, match="Forbidden: user is deactivated"):
        await bot.send_message(DAVE, "hi")


async def test_user_who_never_started_the_bot_cannot_be_messaged_until_they_write(
        world: Emulator, bot: Bot) -> None:
    with pytest.raises(TelegramForbiddenError, match="bot can't initiate conversation with a user"):
        await bot.send_message(CAROL, "hi")
    await world.user_sends(bot.token, CAROL, "/start")
    reply = await bot.send_message(CAROL, "welcome")
    assert reply.message_id == 2, "the user's /start took message id 1 in this chat"


async def test_unknown_chat_gives_chat_not_found(bot: Bot) -> None:
    with pytest.raises(TelegramBadRequest, match="Bad Request: chat not found"):
        await bot.send_message(999_999, "hi")
    with pytest.raises(TelegramBadRequest, match="Bad Request: chat not found"):
        await bot.send_message(-100_999, "hi")


async def test_migrated_group_answers_with_the_new_chat_id(world: Emulator, bot: Bot) -> None:
    with pytest.raises(TelegramMigrateToChat) as caught:
        await bot.send_message(OLD_GROUP, "hi")
    assert caught.value.migrate_to_chat_id == NEW_GROUP
    assert "group chat was upgraded to a supergroup chat" in caught.value.message
    message = await bot.send_message(NEW_GROUP, "hi")
    assert message.chat.type == "supergroup"


async def test_text_length_is_checked_after_entity_parsing(bot: Bot) -> None:
    await bot.send_message(ALICE, "x" * 4096)
    await bot.send_message(ALICE, "<b>" + "x" * 4096 + "</b>", parse_mode="HTML")
    with pytest.raises(TelegramBadRequest, match="Bad Request: message is too long"):
        await bot.send_message(ALICE, "x" * 4097)
    with pytest.raises(TelegramBadRequest, match="Bad Request: message is too long"):
        await bot.send_message(ALICE, "😀" * 2049)
    with pytest.raises(TelegramBadRequest, match="Bad Request: message text is empty"):
        await bot.send_message(ALICE, "<b> </b>", parse_mode="HTML")


async def test_bad_markup_cannot_be_parsed(world: Emulator, bot: Bot) -> None:
    with pytest.raises(TelegramBadRequest, match="can't parse entities: Unsupported start tag \"blink\""):
        await bot.send_message(ALICE, "<blink>hi</blink>", parse_mode="HTML")
    with pytest.raises(TelegramBadRequest, match="Can't find end tag corresponding to start tag \"b\""):
        await bot.send_message(ALICE, "<b>hi", parse_mode="HTML")
    with pytest.raises(TelegramBadRequest, match=r"Character '\.' is reserved"):
        await bot.send_message(ALICE, "Price 1.5", parse_mode="MarkdownV2")
    with pytest.raises(TelegramBadRequest, match="Can't find end of the entity"):
        await bot.send_message(ALICE, "*bold", parse_mode="Markdown")
    ok = await bot.send_message(ALICE, "Price 1\\.5 *now*", parse_mode="MarkdownV2")
    assert ok.text == "Price 1.5 now"
    assert len(world.sent(bot.token)) == 1


async def test_inline_keyboard_is_validated(bot: Bot) -> None:
    with pytest.raises(TelegramBadRequest, match="BUTTON_DATA_INVALID"):
        await bot.send_message(ALICE, "hi", reply_markup=_keyboard("x" * 65))
    text_only = InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text="Just text")]])
    with pytest.raises(TelegramBadRequest, match="Text buttons are unallowed in the inline keyboard"):
        await bot.send_message(ALICE, "hi", reply_markup=text_only)


async def test_web_app_buttons_only_go_to_private_chats(world: Emulator, bot: Bot) -> None:
    app = InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(
        text="Reply", web_app=WebAppInfo(url="https://hooks.clarion.test/app/"))]])
    with pytest.raises(TelegramBadRequest, match="Bad Request: BUTTON_TYPE_INVALID"):
        await bot.send_message(GROUP, "a request", reply_markup=app)
    plain = await bot.send_message(GROUP, "a request", reply_markup=_keyboard())
    with pytest.raises(TelegramBadRequest, match="BUTTON_TYPE_INVALID"):
        await bot.edit_message_reply_markup(chat_id=GROUP, message_id=plain.message_id, reply_markup=app)

    sent = await bot.send_message(ALICE, "a request", reply_markup=app)

    assert sent.reply_markup is not None and sent.reply_markup.inline_keyboard[0][0].web_app is not None
    assert [m.text for m in world.bot(bot.token).sent] == ["a request", "a request"]


async def test_edit_delete_and_copy_follow_telegram(world: Emulator, bot: Bot) -> None:
    message = await bot.send_message(ALICE, "draft", reply_markup=_keyboard())
    edited = await bot.edit_message_text("final", chat_id=ALICE, message_id=message.message_id,
                                         reply_markup=_keyboard())
    assert not isinstance(edited, bool) and edited.text == "final" and edited.edit_date is not None
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_text("final", chat_id=ALICE, message_id=message.message_id,
                                    reply_markup=_keyboard())
    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await bot.edit_message_text("x", chat_id=ALICE, message_id=9999)
    await bot.edit_message_reply_markup(chat_id=ALICE, message_id=message.message_id,
                                        reply_markup=_keyboard("no"))
    copied = await bot.copy_message(BOB, from_chat_id=ALICE, message_id=message.message_id)
    assert world.sent(bot.token, chat_id=BOB)[0].text == "final"
    assert copied.message_id == 1
    assert await bot.delete_message(ALICE, message.message_id) is True
    with pytest.raises(TelegramBadRequest, match="message to delete not found"):
        await bot.delete_message(ALICE, message.message_id)
    with pytest.raises(TelegramBadRequest, match="message to copy not found"):
        await bot.copy_message(BOB, from_chat_id=ALICE, message_id=message.message_id)


async def test_edit_without_reply_markup_removes_the_inline_keyboard_and_with_one_sets_it(
        world: Emulator, bot: Bot) -> None:
    """editMessageText: an omitted reply_markup leaves the message without an inline keyboard (as
    Telegram does); a given one replaces the keyboard. `Emulator.message` shows the message as it is now."""
    message = await bot.send_message(GROUP, "question", reply_markup=_keyboard())
    await bot.edit_message_text("✅ answered", chat_id=GROUP, message_id=message.message_id)
    now = world.message(bot.token, GROUP, message.message_id)
    assert now is not None and now.text == "✅ answered" and now.reply_markup is None
    await bot.edit_message_text("❌ failed", chat_id=GROUP, message_id=message.message_id,
                                reply_markup=_keyboard("retry"))
    now = world.message(bot.token, GROUP, message.message_id)
    assert now is not None and now.text == "❌ failed"
    assert now.reply_markup == {"inline_keyboard": [[{"text": "Yes", "callback_data": "retry"}]]}
    assert world.sent(bot.token, GROUP)[0].text == "question"  # `sent` keeps what was sent


async def test_web_app_buttons_only_in_private_chats_and_only_https(bot: Bot) -> None:
    def app(url: str) -> InlineKeyboardMarkup:
        return InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text="Open",
                                                                           web_app=WebAppInfo(url=url))]])

    sent = await bot.send_message(ALICE, "private", reply_markup=app("https://example.org/app/"))
    assert sent.reply_markup is not None
    with pytest.raises(TelegramBadRequest, match="BUTTON_TYPE_INVALID"):
        await bot.send_message(GROUP, "group", reply_markup=app("https://example.org/app/"))
    in_group = await bot.send_message(GROUP, "group")
    with pytest.raises(TelegramBadRequest, match="BUTTON_TYPE_INVALID"):
        await bot.edit_message_text("edited", chat_id=GROUP, message_id=in_group.message_id,
                                    reply_markup=app("https://example.org/app/"))
    with pytest.raises(TelegramBadRequest, match="Only HTTPS links are allowed"):
        await bot.send_message(ALICE, "private", reply_markup=app("http://example.org/app/"))


async def test_send_photo_by_url_with_caption_limit(world: Emulator, bot: Bot) -> None:
    photo = await bot.send_photo(ALICE, "https://example.org/cat.jpg", caption="A <i>cat</i>",
                                 parse_mode="HTML")
    assert photo.photo and photo.caption == "A cat"
    again = await bot.send_photo(BOB, photo.photo[-1].file_id)
    assert again.photo is not None
    with pytest.raises(TelegramBadRequest, match="message caption is too long"):
        await bot.send_photo(ALICE, "https://example.org/cat.jpg", caption="c" * 1025)
    with pytest.raises(TelegramBadRequest, match="wrong file identifier/HTTP URL specified"):
        await bot.send_photo(ALICE, "not-a-file-id")
    assert [m.method for m in world.sent(bot.token)] == ["sendPhoto", "sendPhoto"]


async def test_callback_query_can_be_answered_once(world: Emulator, bot: Bot) -> None:
    message = await bot.send_message(ALICE, "Vote", reply_markup=_keyboard("vote:1"))
    update = await world.press_button(bot.token, ALICE, message.message_id, "vote:1")
    query = update["callback_query"]
    assert query["data"] == "vote:1" and query["message"]["message_id"] == message.message_id
    assert await bot.answer_callback_query(query["id"], text="Thanks") is True
    with pytest.raises(TelegramBadRequest, match="query is too old"):
        await bot.answer_callback_query(query["id"])
    with pytest.raises(TelegramBadRequest, match="query ID is invalid"):
        await bot.answer_callback_query("12345")


async def test_join_requests_need_a_pending_request_and_admin_rights(world: Emulator, bot: Bot) -> None:
    with pytest.raises(TelegramBadRequest, match="HIDE_REQUESTER_MISSING"):
        await bot.approve_chat_join_request(GROUP, DAVE)
    update = await world.request_join(bot.token, GROUP, DAVE)
    assert update["chat_join_request"]["user_chat_id"] == DAVE
    assert await bot.approve_chat_join_request(GROUP, DAVE) is True
    member = await bot.get_chat_member(GROUP, DAVE)
    assert member.status == "member"
    with pytest.raises(TelegramBadRequest, match="HIDE_REQUESTER_MISSING"):
        await bot.decline_chat_join_request(GROUP, DAVE)
    world.add_group(-100_888, "Not admin", members=[BOB], admins=[ALICE], bot_is_admin=False)
    await world.request_join(bot.token, -100_888, DAVE)
    with pytest.raises(TelegramBadRequest, match="not enough rights"):
        await bot.approve_chat_join_request(-100_888, DAVE)


async def test_ban_and_unban_change_membership(bot: Bot) -> None:
    assert await bot.ban_chat_member(GROUP, BOB) is True
    assert (await bot.get_chat_member(GROUP, BOB)).status == "kicked"
    with pytest.raises(TelegramBadRequest, match="can't remove chat owner"):
        await bot.ban_chat_member(GROUP, ALICE)
    assert await bot.unban_chat_member(GROUP, BOB, only_if_banned=True) is True
    assert (await bot.get_chat_member(GROUP, BOB)).status == "left"


async def test_chat_lookups_parse_as_aiogram_types(bot: Bot) -> None:
    chat = await bot.get_chat(GROUP)
    assert chat.title == "Clarion fans" and chat.type == "supergroup"
    private = await bot.get_chat(ALICE)
    assert private.first_name == "Alice" and private.username == "alice"
    assert await bot.get_chat_member_count(GROUP) == 3
    admins = await bot.get_chat_administrators(GROUP)
    assert [a.status for a in admins] == ["creator", "administrator"]
    assert admins[1].user.id == bot.id
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.get_chat(-1)


async def test_set_webhook_validates_its_parameters(world: Emulator, bot: Bot) -> None:
    with pytest.raises(TelegramBadRequest, match="secret token contains unallowed characters"):
        await bot.set_webhook("https://hooks.example.org/tg", secret_token="bad token!")
    with pytest.raises(TelegramBadRequest, match="secret token is too long"):
        await bot.set_webhook("https://hooks.example.org/tg", secret_token="a" * 257)
    with pytest.raises(TelegramBadRequest, match="max_connections"):
        await bot.set_webhook("https://hooks.example.org/tg", max_connections=101)
    with pytest.raises(TelegramBadRequest, match="HTTPS URL must be provided"):
        await bot.set_webhook("http://hooks.example.org/tg")
    assert (await bot.get_webhook_info()).url == ""
    assert await bot.set_webhook("https://hooks.example.org/tg", secret_token="S3cret_-token",
                                 allowed_updates=["message", "callback_query"], max_connections=5)
    info = await bot.get_webhook_info()
    assert info.url == "https://hooks.example.org/tg" and info.max_connections == 5
    assert info.allowed_updates == ["message", "callback_query"]
    assert await bot.delete_webhook() is True
    assert world.webhook(bot.token)["url"] == ""


async def test_injected_5xx_is_a_server_error_for_aiogram(world: Emulator, bot: Bot) -> None:
    world.faults.set("sendMessage", error_rate_5xx=1.0)
    with pytest.raises(TelegramServerError, match="Internal Server Error"):
        await bot.send_message(ALICE, "hi")
    world.faults.set("sendMessage", error_rate_5xx=1.0, error_status=502)
    with pytest.raises(TelegramServerError, match="Bad Gateway"):
        await bot.send_message(ALICE, "hi")
    assert world.sent(bot.token) == []
    assert world.stats(bot.token)["methods"]["sendMessage"]["server_errors"] == 2
    world.faults.clear()
    await bot.send_message(ALICE, "hi")


async def test_injected_timeouts_and_drops_are_network_errors(world: Emulator, bot: Bot) -> None:
    world.faults.set("sendMessage", timeout_rate=1.0, timeout_hold_s=30.0)
    with pytest.raises(TelegramNetworkError, match="timeout"):
        await bot.send_message(ALICE, "hi", request_timeout=1)
    world.faults.set("sendMessage", drop_rate=1.0)
    with pytest.raises(TelegramNetworkError):
        await bot.send_message(ALICE, "hi")
    assert world.sent(bot.token) == []
    world.faults.set("sendMessage", lost_response_rate=1.0)
    with pytest.raises(TelegramNetworkError):
        await bot.send_message(ALICE, "delivered but unanswered")
    assert [m.text for m in world.sent(bot.token)] == ["delivered but unanswered"]
    stats = world.stats(bot.token)["methods"]["sendMessage"]
    assert stats["timeouts"] == 1 and stats["dropped"] == 2


@pytest.mark.emulator(limits="off")
async def test_concurrent_requests_under_injected_latency_all_succeed(world: Emulator, bot: Bot) -> None:
    world.faults.set("*", latency=(0.2, 0.05))
    results = await asyncio.gather(*(bot.send_message(uid, "hi") for uid in (ALICE, BOB, DAVE) * 10))
    assert len(results) == 30
    assert len(world.sent(bot.token)) == 30


# --- the wire format, by hand ----------------------------------------------------------------------

@pytest.mark.emulator(limits="off")
async def test_wire_format_accepts_json_form_multipart_and_query(world: Emulator) -> None:
    info = world.add_bot()
    url = f"{world.base_url}/bot{info.token}"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/sendMessage", json={"chat_id": ALICE, "text": "json"}) as resp:
            body = await resp.json()
            assert resp.status == 200 and body["ok"] is True and body["result"]["text"] == "json"
        async with http.post(f"{url}/sendMessage", data={"chat_id": str(ALICE), "text": "form"}) as resp:
            assert (await resp.json())["result"]["text"] == "form"
        form = aiohttp.FormData()
        form.add_field("chat_id", str(ALICE))
        form.add_field("photo", b"\x89PNG fake", filename="cat.png", content_type="image/png")
        async with http.post(f"{url}/sendPhoto", data=form) as resp:
            assert (await resp.json())["result"]["photo"]
        async with http.get(f"{url}/sendMessage", params={"chat_id": str(ALICE), "text": "query"}) as resp:
            assert (await resp.json())["result"]["text"] == "query"
        async with http.get(f"{url}/SENDMESSAGE", params={"chat_id": str(ALICE), "text": "case"}) as resp:
            assert resp.status == 200, "method names are case-insensitive"
        async with http.post(f"{url}/noSuchMethod", json={}) as resp:
            assert resp.status == 404
            assert await resp.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
        async with http.post(f"{world.base_url}/bot1:nope/getMe") as resp:
            assert resp.status == 401
            assert await resp.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
        async with http.post(f"{url}/sendMessage", json={"chat_id": -4242, "text": "x"}) as resp:
            assert resp.status == 400
            assert await resp.json() == {
                "ok": False, "error_code": 400,
                "description": "Bad Request: group chat was upgraded to a supergroup chat",
                "parameters": {"migrate_to_chat_id": NEW_GROUP}}
        async with http.post(f"{url}/sendMessage", data=b"{not json",
                             headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 400
    assert [m.text for m in world.sent(info.token)] == ["json", "form", "", "query", "case"]


@pytest.mark.emulator(limits="real")
async def test_429_reply_carries_retry_after_in_parameters(world: Emulator) -> None:
    info = world.add_bot()
    url = f"{world.base_url}/bot{info.token}/sendMessage"
    bodies = []
    async with aiohttp.ClientSession() as http:
        for _ in range(5):
            async with http.post(url, json={"chat_id": ALICE, "text": "x"}) as resp:
                bodies.append((resp.status, await resp.json()))
    status, body = bodies[-1]
    assert status == 429
    assert body["error_code"] == 429 and body["description"].startswith("Too Many Requests: retry after ")
    assert body["parameters"]["retry_after"] >= 1
    assert json.loads(json.dumps(body)) == body


@pytest.mark.emulator(limits="off")
async def test_http_keep_alive_pipelining_chunked_bodies_and_garbage(world: Emulator) -> None:
    info = world.add_bot()
    reader, writer = await asyncio.open_connection(world.host, world.port)
    try:
        get_me = f"GET /bot{info.token}/getMe HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        body = json.dumps({"chat_id": ALICE, "text": "chunked"}).encode()
        chunked = (f"POST /bot{info.token}/sendMessage HTTP/1.1\r\nHost: x\r\n"
                   "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                   "Expect: 100-continue\r\n\r\n").encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        writer.write(get_me * 2 + chunked)
        await writer.drain()
        data = b""
        while data.count(b"HTTP/1.1 200 OK") < 3:
            data += await asyncio.wait_for(reader.read(65536), 5)
        assert b"HTTP/1.1 100 Continue" in data
        assert [m.text for m in world.sent(info.token)] == ["chunked"]
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.read(65536), 5)).startswith(b"HTTP/1.1 400 Bad Request")
        assert await asyncio.wait_for(reader.read(65536), 5) == b"", "the connection is closed"
    finally:
        writer.close()
