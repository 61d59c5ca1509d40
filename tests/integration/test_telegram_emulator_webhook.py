"""The emulator acting as Telegram toward a bot: webhook delivery, getUpdates, user actions, the
control API and the `clarion dev telegram` process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramConflictError, TelegramForbiddenError
from aiohttp import web
from clarion_dev.telegram import Emulator, WebhookRetry
from clarion_dev.testing.telegram import aiogram_bot

pytestmark = pytest.mark.integration

ALICE, BOB, CAROL = 601, 602, 603
GROUP = -100_600


@dataclass
class Receiver:
    """A webhook endpoint that records what it got and answers with scripted statuses."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, Any], str | None]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append((body, request.headers.get("X-Telegram-Bot-Api-Secret-Token")))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/tg", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.url = f"http://127.0.0.1:{port}/tg"
    try:
        yield rec
    finally:
        await runner.cleanup()


@pytest.fixture
async def world(telegram_emulator: Emulator) -> Emulator:
    telegram_emulator.add_user(ALICE, "Alice")
    telegram_emulator.add_user(BOB, "Bob")
    telegram_emulator.add_user(CAROL, "Carol")
    telegram_emulator.add_group(GROUP, "Hooked", members=[BOB], admins=[ALICE])
    return telegram_emulator


@pytest.fixture
async def bot(world: Emulator) -> AsyncIterator[Bot]:
    info = world.add_bot()
    client = aiogram_bot(world, info.token)
    try:
        yield client
    finally:
        await client.session.close()


async def test_webhook_delivery_carries_the_secret_header_and_is_retried_after_a_500(
        world: Emulator, bot: Bot, receiver: Receiver) -> None:
    world.webhook_retry = WebhookRetry(initial_backoff_s=0.01, max_attempts=5)
    await bot.set_webhook(receiver.url, secret_token="s3cr3t-token")
    receiver.statuses = [500]
    update = await world.user_sends(bot.token, ALICE, "/start hello")
    await world.wait_webhook_idle(bot.token, timeout=10)
    assert [(body, secret) for body, secret in receiver.received] == [(update, "s3cr3t-token")] * 2
    message = update["message"]
    assert message["text"] == "/start hello" and message["chat"] == {
        "id": ALICE, "type": "private", "first_name": "Alice"}
    assert message["entities"] == [{"type": "bot_command", "offset": 0, "length": 6}]
    info = await bot.get_webhook_info()
    assert info.pending_update_count == 0
    assert info.last_error_message == "Wrong response from the webhook: 500 Internal Server Error"
    assert world.stats(bot.token)["webhook"] == {
        "delivered": 1, "failed_attempts": 1, "given_up": 0, "pending": 0}


async def test_webhook_delivery_gives_up_after_bounded_attempts(
        world: Emulator, bot: Bot, receiver: Receiver) -> None:
    world.webhook_retry = WebhookRetry(initial_backoff_s=0.01, max_backoff_s=0.02, max_attempts=3)
    await bot.set_webhook(receiver.url)
    receiver.statuses = [503] * 10
    await world.user_sends(bot.token, ALICE, "hello")
    await world.wait_webhook_idle(bot.token, timeout=10)
    assert len(receiver.received) == 3
    assert all(secret is None for _, secret in receiver.received)
    assert world.stats(bot.token)["webhook"]["given_up"] == 1
    assert world.webhook(bot.token)["last_error_message"].startswith("Wrong response from the webhook: 503")


async def test_unreachable_webhook_records_the_connection_error(world: Emulator, bot: Bot) -> None:
    world.webhook_retry = WebhookRetry(initial_backoff_s=0.01, max_backoff_s=0.02, max_attempts=2)
    await bot.set_webhook("http://127.0.0.1:9/tg")
    await world.user_sends(bot.token, ALICE, "hello")
    await world.wait_webhook_idle(bot.token, timeout=10)
    assert world.webhook(bot.token)["last_error_message"] == "Connection refused"


async def test_updates_reach_the_webhook_in_update_id_order(
        world: Emulator, bot: Bot, receiver: Receiver) -> None:
    await bot.set_webhook(receiver.url, max_connections=1)
    message = await bot.send_message(ALICE, "Pick", reply_markup={
        "inline_keyboard": [[{"text": "A", "callback_data": "a"}]]})  # type: ignore[arg-type]
    produced = [
        await world.user_sends(bot.token, ALICE, "one"),
        await world.user_sends_in_group(bot.token, GROUP, BOB, "two"),
        await world.press_button(bot.token, ALICE, message.message_id, "a"),
        await world.request_join(bot.token, GROUP, CAROL),
        await world.block(bot.token, BOB),
        await world.unblock(bot.token, BOB),
    ]
    await world.wait_webhook_idle(bot.token, timeout=10)
    received = [body for body, _ in receiver.received]
    assert received == produced
    assert [u["update_id"] for u in received] == sorted(u["update_id"] for u in received)
    assert received[3]["chat_join_request"]["user_chat_id"] == CAROL
    blocked, unblocked = received[4]["my_chat_member"], received[5]["my_chat_member"]
    assert (blocked["old_chat_member"]["status"], blocked["new_chat_member"]["status"]) == (
        "member", "kicked")
    assert (unblocked["old_chat_member"]["status"], unblocked["new_chat_member"]["status"]) == (
        "kicked", "member")


async def test_block_makes_sends_fail_and_writing_again_unblocks(world: Emulator, bot: Bot) -> None:
    await world.block(bot.token, ALICE)
    with pytest.raises(TelegramForbiddenError, match="bot was blocked by the user"):
        await bot.send_message(ALICE, "hi")
    await world.user_sends(bot.token, ALICE, "/start")
    await bot.send_message(ALICE, "welcome back")
    assert [m.text for m in world.sent(bot.token)] == ["welcome back"]


async def test_allowed_updates_filter_what_is_delivered(
        world: Emulator, bot: Bot, receiver: Receiver) -> None:
    await bot.set_webhook(receiver.url, allowed_updates=["callback_query"])
    await world.user_sends(bot.token, ALICE, "ignored")
    message = await bot.send_message(ALICE, "Pick", reply_markup={
        "inline_keyboard": [[{"text": "A", "callback_data": "a"}]]})  # type: ignore[arg-type]
    wanted = await world.press_button(bot.token, ALICE, message.message_id, "a")
    await world.wait_webhook_idle(bot.token, timeout=10)
    assert [body for body, _ in receiver.received] == [wanted]


async def test_get_updates_without_webhook_confirms_with_offset(world: Emulator, bot: Bot) -> None:
    first = await world.user_sends(bot.token, ALICE, "one")
    second = await world.user_sends(bot.token, BOB, "two")
    updates = await bot.get_updates()
    assert [u.update_id for u in updates] == [first["update_id"], second["update_id"]]
    assert updates[0].message is not None and updates[0].message.text == "one"
    rest = await bot.get_updates(offset=second["update_id"])
    assert [u.update_id for u in rest] == [second["update_id"]]
    assert await bot.get_updates(offset=second["update_id"] + 1) == []
    await bot.set_webhook("https://hooks.example.org/tg")
    with pytest.raises(TelegramConflictError, match="can't use getUpdates method while webhook is active"):
        await bot.get_updates()


async def test_drop_pending_updates_forgets_the_queue(world: Emulator, bot: Bot) -> None:
    await world.user_sends(bot.token, ALICE, "one")
    assert world.webhook(bot.token)["pending_update_count"] == 1
    await bot.delete_webhook(drop_pending_updates=True)
    assert world.webhook(bot.token)["pending_update_count"] == 0


# --- control API -----------------------------------------------------------------------------------

@pytest.mark.emulator(limits="off")
async def test_control_api_drives_the_emulator_from_another_process(telegram_emulator: Emulator) -> None:
    base = f"{telegram_emulator.base_url}/_emulator"
    async with aiohttp.ClientSession() as http:
        async def call(method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
            async with http.request(method, f"{base}/{path}", **kwargs) as resp:
                return resp.status, await resp.json()

        status, created = await call("POST", "bots", json={"username": "ctl_bot"})
        assert status == 200
        token = created["result"]["token"]
        status, users = await call("POST", "users", json={
            "count": 100, "start_id": 1000, "blocked_share": 0.2, "token": token, "seed": 7})
        blocked = users["result"]["blocked"]
        assert users["result"]["added"] == 100 and 5 < len(blocked) < 40
        sendable = [uid for uid in range(1000, 1010) if uid not in blocked]
        status, update = await call("POST", "user_sends", json={
            "token": token, "user_id": sendable[0], "text": "/start"})
        assert update["result"]["message"]["text"] == "/start"
        bot = aiogram_bot(telegram_emulator, token)
        try:
            for uid in sendable:
                await bot.send_message(uid, f"hi {uid}")
            with pytest.raises(TelegramForbiddenError):
                await bot.send_message(blocked[0], "hi")
        finally:
            await bot.session.close()
        status, page = await call("GET", "sent", params={"token": token, "since": 1, "limit": 2})
        assert [m["text"] for m in page["result"]["messages"]] == [f"hi {uid}" for uid in sendable[1:3]]
        assert page["result"]["next"] == 3 and page["result"]["total"] == len(sendable)
        status, stats = await call("GET", "stats", params={"token": token})
        assert stats["result"]["methods"]["sendMessage"] == {
            "accepted": len(sendable), "too_many_requests": 0, "client_errors": 1, "server_errors": 0,
            "timeouts": 0, "dropped": 0}
        status, error = await call("POST", "users", json={"count": "many"})
        assert status == 400 and error["ok"] is False
        status, error = await call("POST", "user_sends", json={"token": token, "user_id": 5, "text": "x"})
        assert status == 400 and "unknown user 5" in error["error"]
        status, _ = await call("POST", "faults", json={"method": "getMe", "error_rate_5xx": 1.0})
        assert status == 200
        async with http.post(f"{telegram_emulator.base_url}/bot{token}/getMe") as resp:
            assert resp.status == 500
        status, _ = await call("POST", "reset")
        status, page = await call("GET", "sent", params={"token": token})
        assert page["result"]["messages"] == []
        async with http.post(f"{telegram_emulator.base_url}/bot{token}/getMe") as resp:
            assert resp.status == 200, "reset keeps bots and clears faults"


# --- the process -----------------------------------------------------------------------------------

async def test_clarion_dev_telegram_runs_until_sigterm() -> None:
    token = "4242424:process-token-aaaaaaaaaaaaaaaaaaaaaaaaaaa"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from clarion_dev.cli import main; sys.exit(main(sys.argv[1:]))",
        "dev", "telegram", "--port", "0", "--limits", "off", "--bot", f"{token}:proc_bot",
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stderr.readline(), 20)
        event = json.loads(line)
        assert event["event"] == "telegram emulator listening"
        bot = Bot(token, session=AiohttpSession(api=TelegramAPIServer.from_base(event["url"])))
        try:
            me = await bot.get_me()
        finally:
            await bot.session.close()
        assert me.username == "proc_bot"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
