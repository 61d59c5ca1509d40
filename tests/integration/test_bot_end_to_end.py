"""The bot end to end: the emulator (as Telegram) → webhook (uvicorn) → Redis stream → bot → emulator.

Everything is real: the webhook app served by uvicorn on a free port, the emulator delivering updates to
it with the secret token, Postgres, Redis, and the bot's consumer. The several-replica test runs
`clarion-bot` as separate processes and kills one with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from clarion.db import subscribers
from clarion.keys import channel_key
from clarion.streams import (
    BOT_GROUP,
    DEFAULT_PARTITIONS,
    attempts_key,
    dead_letter_stream,
    partition_lease_key,
    rate_key,
    update_partition,
    updates_stream,
)
from clarion_bot.main import run as run_bot
from clarion_bot.settings import BotSettings
from clarion_dev.net import free_port
from clarion_dev.telegram import Emulator
from clarion_dev.testing.telegram import aiogram_bot
from clarion_dev.testing.waiting import WaitTimeout, async_wait_for
from clarion_webhook.app import create_app
from clarion_webhook.settings import WebhookSettings
from prometheus_client import generate_latest

pytestmark = pytest.mark.integration

NAMESPACE, NAME = "tests", "support-bot"
KEY = channel_key(NAMESPACE, NAME)
SECRET = "webhook-Secret_0123456789"
ADMIN = 900
USER = 501




async def until(predicate: Callable[[], Any], **options: Any) -> Any:
    """`async_wait_for` with any predicate (plain or async) and the value it returned."""
    options.setdefault("interval", 0.02)
    return await async_wait_for(predicate, **options)


@dataclass
class Stack:
    emulator: Emulator
    token: str
    channel_id: int
    database_url: str
    redis_url: str
    webhook_port: int

    def texts(self, chat_id: int) -> list[str]:
        return [m.text for m in self.emulator.sent(self.token, chat_id)]

    def bot_settings(self, **overrides: Any) -> BotSettings:
        options: dict[str, Any] = {
            "channel": KEY, "bot_token": self.token, "database_url": self.database_url,
            "redis_url": self.redis_url, "bot_lease_ttl_ms": 2000, "bot_lag_report_seconds": 0.2, **overrides}
        return BotSettings(**options)

    def bot_env(self, replica: str) -> dict[str, str]:
        return {**os.environ, "CLARION_CHANNEL": KEY, "CLARION_BOT_TOKEN": self.token,
                "CLARION_DATABASE_URL": self.database_url, "CLARION_REDIS_URL": self.redis_url,
                "CLARION_REPLICA_ID": replica, "CLARION_BOT_LEASE_TTL_MS": "1500",
                "CLARION_LOG_LEVEL": "INFO"}


@contextlib.asynccontextmanager
async def serve_webhook(settings: WebhookSettings) -> AsyncIterator[None]:
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.webhook_port,
                                           log_config=None, access_log=False, lifespan="on"))
    task = asyncio.create_task(server.serve())
    await until(lambda: server.started or task.done(), timeout=10, interval=0.02,
                         what="uvicorn to start")
    try:
        yield
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def bot_in_process(stack: Stack) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_bot(stack.bot_settings(), stop, handle_signals=False))
    try:
        yield
    finally:
        stop.set()
        assert await task == 0


@contextlib.asynccontextmanager
async def make_stack(emulator: Emulator, db: Any, database_url: str, redis_url: str,
                     max_connections: int = 40, **config: Any) -> AsyncIterator[Stack]:
    info = emulator.add_bot(username="clarion_support_bot")
    channel_id: int = await db.fetchval(
        """INSERT INTO channels (namespace, name, type, bot_id, bot_username, api_base_url,
                                 webhook_secret_sha256, config, ready)
           VALUES ($1, $2, 'telegram', $3, $4, $5, $6, $7, true) RETURNING id""",
        NAMESPACE, NAME, info.id, info.username, emulator.base_url,
        hashlib.sha256(SECRET.encode()).hexdigest(),
        {"adminChatIds": [ADMIN], "supportChatId": ADMIN, "defaultLanguage": "en", **config},
    )
    port = free_port()
    settings = WebhookSettings(database_url=database_url, redis_url=redis_url, webhook_port=port)
    async with serve_webhook(settings):
        bot = aiogram_bot(emulator, info.token)
        try:
            await bot.set_webhook(f"http://127.0.0.1:{port}/tg/webhook/{KEY}", secret_token=SECRET,
                                  max_connections=max_connections)
        finally:
            await bot.session.close()
        yield Stack(emulator, info.token, channel_id, database_url, redis_url, port)


@pytest.fixture
async def stack(telegram_emulator: Emulator, db: Any, database_url: str,
                redis_url: str) -> AsyncIterator[Stack]:
    telegram_emulator.add_user(ADMIN, "Ada", "ada_admin", "en")
    telegram_emulator.add_user(USER, "Иван", "ivan", "ru")
    telegram_emulator.add_user(502, "Bob", None, "de")
    async with make_stack(telegram_emulator, db, database_url, redis_url) as made:
        yield made


async def wait_texts(stack: Stack, chat_id: int, count: int, timeout: float = 20) -> list[str]:
    texts: list[str] = await until(lambda: len(t := stack.texts(chat_id)) >= count and t,
                                   timeout=timeout, what=f"{count} messages to chat {chat_id}")
    return texts


async def test_start_subscribes_in_the_users_language_and_stop_unsubscribes(stack: Stack, db: Any) -> None:
    emu = stack.emulator
    async with bot_in_process(stack):
        await emu.user_sends(stack.token, USER, "/start")
        await emu.user_sends(stack.token, 502, "/start")
        [welcome] = await wait_texts(stack, USER, 1)
        assert welcome.startswith("Здравствуйте, Иван!")
        assert (await wait_texts(stack, 502, 1))[0].startswith("Hello, Bob!")  # German falls back to default
        row = await subscribers.get_subscriber(db, stack.channel_id, USER)
        assert row is not None and row.subscribed and row.language == "ru" and row.username == "ivan"

        await emu.user_sends(stack.token, USER, "/stop")
        await wait_texts(stack, USER, 2)
        assert stack.texts(USER)[1].startswith("Вы отписались")
        row = await subscribers.get_subscriber(db, stack.channel_id, USER)
        assert row is not None and not row.subscribed

        await emu.user_sends(stack.token, 502, "/help")
        assert "/language" in (await wait_texts(stack, 502, 2))[1]


async def test_blocking_marks_unavailable_and_unblocking_makes_available_again(stack: Stack, db: Any) -> None:
    emu = stack.emulator
    async with bot_in_process(stack):
        await emu.user_sends(stack.token, USER, "/start")
        await wait_texts(stack, USER, 1)
        await emu.block(stack.token, USER)

        async def marked() -> Any:
            row = await subscribers.get_subscriber(db, stack.channel_id, USER)
            return row if row is not None and row.unavailable else None

        row = await until(marked, timeout=20, interval=0.05, what="subscriber marked unavailable")
        assert row.unavailable_reason == "blocked" and row.unavailable_since is not None

        await emu.unblock(stack.token, USER)

        async def available() -> Any:
            row = await subscribers.get_subscriber(db, stack.channel_id, USER)
            return row if row is not None and not row.unavailable else None

        row = await until(available, timeout=20, interval=0.05, what="subscriber available again")
        assert row.unavailable_reason is None and row.subscribed


async def test_language_keyboard_switches_the_language(stack: Stack, db: Any) -> None:
    emu = stack.emulator
    async with bot_in_process(stack):
        await emu.user_sends(stack.token, 502, "/start")
        await emu.user_sends(stack.token, 502, "/language")
        menu = await until(lambda: len(m := emu.sent(stack.token, 502)) >= 2 and m, timeout=20,
                                    interval=0.02, what="language menu")
        keyboard = menu[1].reply_markup
        assert keyboard is not None
        buttons = {b["text"]: b["callback_data"] for row in keyboard["inline_keyboard"] for b in row}
        assert set(buttons) == {"English", "Русский"}
        await emu.press_button(stack.token, 502, menu[1].message_id, buttons["Русский"])

        async def stored() -> str | None:
            return await subscribers.get_language(db, stack.channel_id, 502)

        assert await until(lambda: _eq(stored(), "ru"), timeout=20, interval=0.05,
                                    what="language ru stored")
        await until(lambda: emu.stats(stack.token)["methods"].get("editMessageText"), timeout=20,
                             interval=0.02, what="the menu edited")
        await emu.user_sends(stack.token, 502, "/help")
        assert (await wait_texts(stack, 502, 3))[2].startswith("/start — подписаться")


async def _eq(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_support_message_reaches_admin_and_the_admins_answer_reaches_the_user(
        stack: Stack, db: Any) -> None:
    emu = stack.emulator
    async with bot_in_process(stack):
        await emu.user_sends(stack.token, USER, "My order did not arrive")
        [confirmation] = await wait_texts(stack, USER, 1)
        assert confirmation.startswith("Спасибо!")
        [posted] = await until(lambda: emu.sent(stack.token, ADMIN), timeout=20, interval=0.02,
                                        what="support post")
        assert "Иван" in posted.text and "@ivan" in posted.text and "My order did not arrive" in posted.text
        assert posted.reply_markup is not None
        [[button]] = posted.reply_markup["inline_keyboard"]
        assert button["text"] == "Reply"

        await emu.press_button(stack.token, ADMIN, posted.message_id, button["callback_data"])
        prompt = (await wait_texts(stack, ADMIN, 2))[1]
        assert prompt.startswith("Write your answer to Иван")
        await emu.user_sends(stack.token, ADMIN, "It ships tomorrow")
        answer = (await wait_texts(stack, USER, 2))[1]
        assert answer == "Ответ службы поддержки:\n\nIt ships tomorrow"
        assert (await wait_texts(stack, ADMIN, 3))[2] == "Your answer was delivered to Иван."
        thread = await db.fetchrow("SELECT user_chat_id, admin_chat_id, user_name FROM support_threads")
        assert dict(thread) == {"user_chat_id": USER, "admin_chat_id": ADMIN, "user_name": "Иван"}


async def test_same_update_delivered_twice_is_handled_once(stack: Stack, redis: Any) -> None:
    """Telegram re-sends an update whose answer it did not see; the second copy changes nothing."""
    emu = stack.emulator
    async with bot_in_process(stack):
        update = await emu.user_sends(stack.token, 502, "/ping once")
        await wait_texts(stack, 502, 1)
        bot_state = emu.bot(stack.token)
        bot_state.updates.append(update)  # the emulator delivers the very same update again
        emu.start_delivery(bot_state)
        await emu.wait_webhook_idle(stack.token)
        await emu.user_sends(stack.token, 502, "/ping after")
        await wait_texts(stack, 502, 2)
    assert stack.texts(502) == ["pong once", "pong after"]
    lengths = [await redis.xlen(updates_stream(KEY, p)) for p in range(DEFAULT_PARTITIONS)]
    assert sum(lengths) <= 2  # acknowledged entries may be trimmed; never a third


async def test_lag_is_published_per_partition_and_acknowledged_entries_are_trimmed(
        stack: Stack, redis: Any) -> None:
    emu = stack.emulator
    partition = update_partition(502, DEFAULT_PARTITIONS)
    stream = updates_stream(KEY, partition)
    async with bot_in_process(stack):
        for n in range(3):
            await emu.user_sends(stack.token, 502, f"/ping {n}")
        assert await wait_texts(stack, 502, 3) == ["pong 0", "pong 1", "pong 2"]
        lag_line = f'clarion_bot_stream_lag{{channel="{KEY}",partition="{partition}"}} 0.0'
        await until(lambda: lag_line in generate_latest().decode(), timeout=20, what="lag 0 published")
        await until(lambda: _eq(redis.xlen(stream), 1), timeout=20, what="acknowledged entries trimmed")
    metrics = generate_latest().decode()
    assert 'clarion_bot_updates_handled_total{result="handled"}' in metrics
    bot_id = int(stack.token.split(":")[0])
    assert await redis.exists(rate_key(bot_id, "chat:502"))  # replies took slots of the shared budget
    assert "clarion_bot_update_handling_seconds_count" in metrics


async def test_update_left_pending_by_a_crashed_replica_is_handled_and_a_poison_one_is_dead_lettered(
        stack: Stack, redis: Any) -> None:
    """Entries a dead replica had read but not acknowledged are handled by the next lease holder; an entry
    whose handling was already started `bot_max_deliveries` times (it kills every replica) is not."""
    emu = stack.emulator
    stream = updates_stream(KEY, update_partition(502, DEFAULT_PARTITIONS))
    await redis.xgroup_create(stream, BOT_GROUP, id="0", mkstream=True)
    for text in ("/ping poison", "/ping survivor"):
        await emu.user_sends(stack.token, 502, text)
    await emu.wait_webhook_idle(stack.token)
    [[_, entries]] = await redis.xreadgroup(BOT_GROUP, "crashed-replica", {stream: ">"})
    poison_id = entries[0][0]
    await redis.hset(attempts_key(stream), poison_id, 5)
    async with bot_in_process(stack):
        assert await wait_texts(stack, 502, 1) == ["pong survivor"]
        await until(lambda: _eq(redis.xpending(stream, BOT_GROUP), {"pending": 0, "min": None, "max": None,
                                                                     "consumers": []}),
                    timeout=20, what="nothing left pending")
    [(_, dead)] = await redis.xrange(dead_letter_stream(stream))
    assert dead[b"id"] == poison_id and b"6 times" in dead[b"error"]
    assert stack.texts(502) == ["pong survivor"]


async def test_support_post_to_a_missing_chat_is_dead_lettered_with_its_reason_and_the_partition_moves_on(
        stack: Stack, db: Any, redis: Any) -> None:
    emu = stack.emulator
    await db.execute(  # a support chat the bot cannot write to
        "UPDATE channels SET config = config || '{\"supportChatId\": 123456789}'")
    async with bot_in_process(stack):
        await emu.user_sends(stack.token, 502, "help!")  # posting to a chat that does not exist fails
        await emu.user_sends(stack.token, 502, "/ping next")
        await until(lambda: "pong next" in stack.texts(502), timeout=30, interval=0.05,
                             what="the next update handled")
    dead = []
    for partition in range(DEFAULT_PARTITIONS):
        dead += await redis.xrange(dead_letter_stream(updates_stream(KEY, partition)))
    assert len(dead) == 1 and b"chat not found" in dead[0][1][b"error"].lower()
    assert dead[0][1][b"reason"] == b"telegram_failed"


@pytest.mark.emulator(limits="off")  # ordering under load, not Telegram's per-chat budget
async def test_thousand_updates_over_fifty_chats_keep_order_when_a_replica_is_killed(
        telegram_emulator: Emulator, db: Any, database_url: str, redis_url: str, tmp_path: Path) -> None:
    """Two `clarion-bot` processes share the partitions; one is SIGKILLed midway. Every chat gets
    pong 0..19 in order; a redelivered entry may repeat a pong right after itself (at most one per
    partition the dead replica was handling), nothing is lost."""
    emu = telegram_emulator
    chats = list(range(10_001, 10_051))
    for uid in chats:
        emu.add_user(uid, f"U{uid}", None, "en")
    unlimited = {"globalPerSecond": 100_000, "perChatPerSecond": 100_000}
    async with make_stack(emu, db, database_url, redis_url, rateLimits=unlimited) as stack:
        logs = {name: tmp_path / f"{name}.log" for name in ("replica-a", "replica-b")}
        replicas = {name: subprocess.Popen([sys.executable, "-m", "clarion_bot.main"],
                                           env=stack.bot_env(name), stdout=subprocess.DEVNULL,
                                           stderr=log.open("wb"))
                    for name, log in logs.items()}
        try:
            await until(_lease_holders(redis_url, {b"replica-a", b"replica-b"}), timeout=60,
                        what="both replicas holding leases")
            for n in range(20):  # round robin: a webhook batch of up to 50 updates holds each chat once
                for uid in chats:
                    await emu.user_sends(stack.token, uid, f"/ping {n}")
            await until(lambda: len(emu.sent(stack.token)) >= 300, timeout=60,
                        what="300 pongs before the kill")
            replicas["replica-a"].send_signal(signal.SIGKILL)
            replicas["replica-a"].wait()
            killed_at = len(emu.sent(stack.token))
            await until(_lease_holders(redis_url, {b"replica-b"}), timeout=60,
                        what="the survivor holding every partition")

            def unfinished() -> dict[int, list[str]]:
                texts = {uid: stack.texts(uid) for uid in chats}
                return {uid: t for uid, t in texts.items() if _collapse(t)[-1:] != ["pong 19"]}

            def all_done() -> bool:
                return not unfinished()

            try:
                await until(all_done, timeout=120, interval=0.1, what="every chat to get pong 19")
            except WaitTimeout as exc:
                raise AssertionError(f"{exc}; unfinished chats {unfinished()}; emulator "
                                     f"{emu.stats(stack.token)}; survivor log "
                                     f"{logs['replica-b'].read_text()[-3000:]}") from None
            assert replicas["replica-b"].poll() is None
        finally:
            for process in replicas.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for name, process in replicas.items():
                process.wait(timeout=30)
                assert process.returncode in (0, -signal.SIGKILL), logs[name].read_text()[-2000:]
        expected = [f"pong {n}" for n in range(20)]
        duplicates = 0
        for uid in chats:
            texts = stack.texts(uid)
            assert _collapse(texts) == expected, (uid, texts)
            duplicates += len(texts) - len(expected)
        assert duplicates <= DEFAULT_PARTITIONS  # at most the entry in hand of each partition of the dead one
        assert killed_at < len(chats) * 20  # the kill came while work was left


def _collapse(texts: list[str]) -> list[str]:
    """Drop a text that repeats the one just before it (a redelivered entry answered twice)."""
    return [t for i, t in enumerate(texts) if i == 0 or texts[i - 1] != t]


def _lease_holders(redis_url: str, expected: set[bytes]) -> Callable[[], Any]:
    import redis.asyncio as aioredis

    async def check() -> bool:
        client = aioredis.Redis.from_url(redis_url)
        try:
            holders = {await client.get(partition_lease_key(KEY, p)) for p in range(DEFAULT_PARTITIONS)}
        finally:
            await client.aclose()
        return holders == expected

    return check
