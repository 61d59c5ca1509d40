"""The bot against failing dependencies. Telegram: permanent errors are dead-lettered at once with
their reason, temporary ones are retried until they go through. Postgres down: what needs no Postgres
is answered, the rest waits, in order, and goes through once Postgres is back; nothing is
dead-lettered or lost.

Real Postgres, Redis and the emulator; the bot runs in process (`clarion_bot.main.run`) and its
updates are put straight into the streams, as the webhook stores them. For the outage the bot has a
Postgres of its own that the test stops and starts (`PrivatePostgres`: initdb into a temporary
directory, a free loopback port, trust auth, run as the postgres user when tests run as root).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from clarion.db import apply_migrations, create_pool, subscribers
from clarion.keys import channel_key
from clarion.streams import (
    BOT_GROUP,
    DEFAULT_PARTITIONS,
    dead_letter_stream,
    update_envelope_fields,
    update_partition,
    updates_stream,
)
from clarion_bot.main import run as run_bot
from clarion_bot.settings import BotSettings
from clarion_dev.net import free_port
from clarion_dev.telegram import Emulator
from clarion_dev.testing.waiting import async_wait_for
from prometheus_client import REGISTRY

pytestmark = pytest.mark.integration

NAMESPACE, NAME = "tests", "faults-bot"
KEY = channel_key(NAMESPACE, NAME)
USER = 502
STRANGER = 777  # a chat the emulator does not know: answering it is `400 Bad Request: chat not found`


async def until(predicate: Callable[[], Any], **options: Any) -> Any:
    options.setdefault("interval", 0.02)
    options.setdefault("timeout", 30)
    return await async_wait_for(predicate, **options)


async def insert_channel(db: Any, emulator: Emulator, bot_id: int, username: str) -> int:
    channel_id: int = await db.fetchval(
        """INSERT INTO channels (namespace, name, type, bot_id, bot_username, api_base_url,
                                 webhook_secret_sha256, config, ready)
           VALUES ($1, $2, 'telegram', $3, $4, $5, $6, $7, true) RETURNING id""",
        NAMESPACE, NAME, bot_id, username, emulator.base_url, hashlib.sha256(b"secret").hexdigest(),
        {"defaultLanguage": "en"},
    )
    return channel_id


def private_update(update_id: int, user_id: int, text: str) -> dict[str, Any]:
    user = {"id": user_id, "is_bot": False, "first_name": "Someone", "language_code": "en"}
    message: dict[str, Any] = {"message_id": update_id, "from": user, "date": int(time.time()), "text": text,
                               "chat": {"id": user_id, "type": "private", "first_name": "Someone"}}
    if text.startswith("/"):
        message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
    return {"update_id": update_id, "message": message}


async def store_update(redis: Any, update: dict[str, Any]) -> str:
    """XADD the update to its partition's stream the way the webhook does; the stream's name."""
    chat_id = update["message"]["chat"]["id"]
    stream = updates_stream(KEY, update_partition(chat_id, DEFAULT_PARTITIONS))
    await redis.xadd(stream, update_envelope_fields(KEY, update["update_id"], chat_id, time.time(),
                                                    uuid.uuid4().hex, json.dumps(update).encode()))
    return stream


def bot_settings(token: str, database_url: str, redis_url: str, **overrides: Any) -> BotSettings:
    options: dict[str, Any] = {
        "channel": KEY, "bot_token": token, "database_url": database_url, "redis_url": redis_url,
        "bot_lease_ttl_ms": 2000, "bot_retry_base_seconds": 0.05, "bot_retry_max_seconds": 0.5,
        **overrides}
    return BotSettings(**options)


@contextlib.asynccontextmanager
async def bot_running(settings: BotSettings) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_bot(settings, stop, handle_signals=False))
    try:
        yield
    finally:
        stop.set()
        assert await task == 0


async def nothing_pending(redis: Any, stream: str) -> bool:
    return bool((await redis.xpending(stream, BOT_GROUP))["pending"] == 0)


def dead_letters(reason: str) -> float:
    return REGISTRY.get_sample_value("clarion_bot_dead_letters_total", {"reason": reason}) or 0.0


async def test_chat_not_found_is_dead_lettered_after_one_attempt_with_its_reason(
        telegram_emulator: Emulator, db: Any, database_url: str, redis_url: str, redis: Any) -> None:
    emu = telegram_emulator
    info = emu.add_bot(username="clarion_faults_bot")
    emu.add_user(USER, "Bob", None, "en")
    await insert_channel(db, emu, info.id, info.username)
    before = dead_letters("telegram_failed")
    lost = await store_update(redis, private_update(1, STRANGER, "/ping lost"))
    async with bot_running(bot_settings(info.token, database_url, redis_url)):
        await until(lambda: nothing_pending_and_created(redis, lost), what="the entry taken off the stream")
        [(_, dead)] = await redis.xrange(dead_letter_stream(lost))
        for n in range(2):  # the bot goes on answering
            await store_update(redis, private_update(10 + n, USER, f"/ping {n}"))
        await until(lambda: len(emu.sent(info.token, USER)) == 2, what="two pongs")
    assert dead[b"reason"] == b"telegram_failed"
    assert b"chat not found" in dead[b"error"]
    assert json.loads(dead[b"e"])["update"]["message"]["text"] == "/ping lost"
    assert emu.stats(info.token)["methods"]["sendMessage"]["client_errors"] == 1  # one attempt, no retry
    assert dead_letters("telegram_failed") == before + 1
    assert [m.text for m in emu.sent(info.token, USER)] == ["pong 0", "pong 1"]


async def nothing_pending_and_created(redis: Any, stream: str) -> bool:
    groups = await redis.xinfo_groups(stream)
    return bool(groups) and groups[0]["last-delivered-id"] != b"0-0" and await nothing_pending(redis, stream)


async def test_telegram_5xx_is_retried_past_the_attempts_limit_and_answered_once_it_clears(
        telegram_emulator: Emulator, db: Any, database_url: str, redis_url: str, redis: Any) -> None:
    emu = telegram_emulator
    info = emu.add_bot(username="clarion_faults_bot")
    emu.add_user(USER, "Bob", None, "en")
    await insert_channel(db, emu, info.id, info.username)
    emu.faults.set("sendMessage", error_rate_5xx=1.0, error_status=502)
    settings = bot_settings(info.token, database_url, redis_url)
    stream = await store_update(redis, private_update(1, USER, "/ping through"))
    await store_update(redis, private_update(2, USER, "/ping after"))

    def failures() -> int:
        return int(emu.stats(info.token)["methods"].get("sendMessage", {}).get("server_errors", 0))

    async with bot_running(settings):
        await until(lambda: failures() > 2 * settings.bot_max_attempts,
                    what="Bad Gateway answered more often than the attempts limit")
        assert emu.sent(info.token, USER) == []
        emu.faults.clear()
        await until(lambda: len(emu.sent(info.token, USER)) == 2, what="both pongs", timeout=90)
        await until(lambda: nothing_pending(redis, stream), what="both entries acknowledged")
    assert [m.text for m in emu.sent(info.token, USER)] == ["pong through", "pong after"]
    assert await redis.xlen(dead_letter_stream(stream)) == 0


async def test_answer_to_a_group_that_became_a_supergroup_goes_to_the_supergroup(
        telegram_emulator: Emulator, db: Any, database_url: str, redis_url: str, redis: Any) -> None:
    """`/ping` written in a basic group just before it was upgraded: the pong goes to the supergroup."""
    emu = telegram_emulator
    info = emu.add_bot(username="clarion_faults_bot")
    emu.add_user(USER, "Bob", None, "en")
    emu.add_group(-4001, "Fans", "group", members=[USER])
    await insert_channel(db, emu, info.id, info.username)
    update = await emu.user_sends_in_group(info.token, -4001, USER, "/ping moved")
    emu.migrate_group(-4001, -1004001)
    stream = await store_update(redis, update)
    async with bot_running(bot_settings(info.token, database_url, redis_url)):
        await until(lambda: [m.text for m in emu.sent(info.token, -1004001)] == ["pong moved"],
                    what="the pong in the supergroup")
        await until(lambda: nothing_pending(redis, stream), what="the entry acknowledged")
    assert emu.stats(info.token)["methods"]["sendMessage"]["client_errors"] == 1  # the old id, once
    assert await redis.xlen(dead_letter_stream(stream)) == 0


PG_BIN = Path(os.environ.get("CLARION_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PrivatePostgres:
    """A throw-away Postgres cluster that a test may stop and start again on the same port."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="clarion-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://clarion@127.0.0.1:{self.port}/clarion"

    async def _as_postgres(self, *args: str) -> None:
        command = ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)
        proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {out.decode(errors='replace')}")

    async def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        await self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "clarion",
                                "--auth=trust", "--no-sync", "-E", "UTF8")
        await self.start()
        conn = await asyncpg.connect(f"postgresql://clarion@127.0.0.1:{self.port}/postgres")
        try:
            await conn.execute("CREATE DATABASE clarion")
        finally:
            await conn.close()
        conn = await asyncpg.connect(self.url)
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()

    async def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        await self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options,
                                "-l", str(self.dir / "log"), "-w", "start")

    async def stop(self) -> None:
        await self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    async def remove(self) -> None:
        with contextlib.suppress(RuntimeError):
            await self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"no Postgres binaries in {PG_BIN}")
    server = PrivatePostgres()
    try:
        await server.init()
        yield server
    finally:
        await server.remove()


def deferred() -> float:
    return REGISTRY.get_sample_value("clarion_bot_updates_deferred_total",
                                     {"reason": "database_unavailable"}) or 0.0


SUBSCRIBING = [601, 602, 603, 604]  # /start, then /ping: the pong must come after the welcome
PINGING = [701, 702]  # /ping and /help only: answered while Postgres is down
WATCHER = 700  # answered before the outage: the bot is up


async def pending_total(redis: Any, streams: set[str]) -> int:
    return sum([(await redis.xpending(s, BOT_GROUP))["pending"] for s in streams if await redis.exists(s)])


async def test_updates_arriving_while_postgres_is_down_are_all_handled_in_order_once_it_is_back(
        telegram_emulator: Emulator, private_postgres: PrivatePostgres, redis_url: str, redis: Any) -> None:
    emu = telegram_emulator
    info = emu.add_bot(username="clarion_outage_bot")
    for user in (WATCHER, *SUBSCRIBING, *PINGING):
        emu.add_user(user, f"User{user}", None, "en")
    db = await create_pool(private_postgres.url, min_size=1, max_size=2)
    try:
        channel_id = await insert_channel(db, emu, info.id, info.username)
    finally:
        await db.close()
    settings = bot_settings(info.token, private_postgres.url, redis_url, bot_retry_max_seconds=1.0)
    streams = {updates_stream(KEY, p) for p in range(DEFAULT_PARTITIONS)}

    def texts(user: int) -> list[str]:
        return [m.text for m in emu.sent(info.token, user)]

    async with bot_running(settings):
        await store_update(redis, private_update(1, WATCHER, "/ping up"))
        await until(lambda: texts(WATCHER) == ["pong up"], what="the bot answering")

        await private_postgres.stop()
        before = deferred()
        update_id = 100
        for user in SUBSCRIBING:
            for text in ("/start", f"/ping {user}"):
                update_id += 1
                await store_update(redis, private_update(update_id, user, text))
        for user in PINGING:
            for text in ("/ping down", "/help"):
                update_id += 1
                await store_update(redis, private_update(update_id, user, text))

        await until(lambda: all(len(texts(u)) == 2 for u in PINGING), what="pings answered without Postgres")
        # Each /start and the /ping behind it stay pending; every /start fails on Postgres more often
        # than the attempts limit and the deliveries limit together, and none is dead-lettered for it.
        await until(lambda: _eq(pending_total(redis, streams), 2 * len(SUBSCRIBING)),
                    what="the answered entries acknowledged, the others pending")
        enough = len(SUBSCRIBING) * (settings.bot_max_attempts + settings.bot_max_deliveries)
        await until(lambda: deferred() - before > enough, timeout=60, what="the /start updates retried")
        assert all(texts(u) == [] for u in SUBSCRIBING)
        assert await pending_total(redis, streams) == 2 * len(SUBSCRIBING)
        assert [await redis.xlen(dead_letter_stream(s)) for s in streams] == [0] * len(streams)

        await private_postgres.start()
        await until(lambda: all(len(texts(u)) == 2 for u in SUBSCRIBING), timeout=60,
                    what="every held-back update answered")
        await until(lambda: _eq(pending_total(redis, streams), 0), what="every entry acknowledged")

    for user in SUBSCRIBING:
        welcome, pong = texts(user)
        assert welcome.startswith("Hello, Someone!") and pong == f"pong {user}"
    for user in PINGING:
        pong, help_text = texts(user)
        assert pong == "pong down" and help_text.startswith("/start — subscribe")
    assert [await redis.xlen(dead_letter_stream(s)) for s in streams] == [0] * len(streams)
    db = await create_pool(private_postgres.url, min_size=1, max_size=2)
    try:
        for user in SUBSCRIBING:
            row = await subscribers.get_subscriber(db, channel_id, user)
            assert row is not None and row.subscribed
    finally:
        await db.close()


async def _eq(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
