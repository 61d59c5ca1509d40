"""The bot's dispatcher fed updates directly, on real Postgres, Redis and the emulator: what an update
costs in Postgres statements. The pool is the bot's own (`clarion.db.create_pool`) with one connection,
so asyncpg's query logger on that connection sees every statement the bot sends.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiogram.dispatcher.event.bases import UNHANDLED
from clarion.db import create_pool, subscribers
from clarion.db.channels import get_channel
from clarion.keys import channel_key
from clarion_bot.context import ChannelHolder
from clarion_bot.dispatcher import build_dispatcher
from clarion_dev.telegram import Emulator
from clarion_dev.testing.telegram import aiogram_bot
from clarion_dev.testing.waiting import async_wait_for

pytestmark = pytest.mark.integration

NAMESPACE, NAME = "tests", "dispatcher-bot"
USER = 501


class Statements:
    """The statements one pooled connection sends to Postgres, in the order they ran (asyncpg's query
    logger), leaving out the reset the pool runs after each use."""

    def __init__(self, conn: Any) -> None:
        self._reset = conn.get_reset_query()
        self._log: list[str] = []
        self._marks = 0
        conn.add_query_logger(self._record)

    def _record(self, record: asyncpg.connection.LoggedQuery) -> None:
        if record.query != self._reset:
            self._log.append(record.query)

    async def sent_since_last_call(self, pool: asyncpg.Pool) -> list[str]:
        """What was logged before a marker statement sent now: the logger reports each statement after
        it ran, in order, so once the marker is in the log everything sent before it is too."""
        self._marks += 1
        marker = f"SELECT 'mark {self._marks}'"
        await pool.execute(marker)
        await async_wait_for(lambda: marker in self._log, timeout=5, interval=0.01,
                             what=f"{marker} in the query log")
        index = self._log.index(marker)
        sent, self._log = self._log[:index], self._log[index + 1:]
        return sent


@pytest.fixture
async def bot_pool(database_url: str) -> AsyncIterator[tuple[asyncpg.Pool, Statements]]:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            statements = Statements(conn)
        yield pool, statements
    finally:
        await pool.close()


async def insert_channel(db: Any, emulator: Emulator, bot_id: int, username: str) -> int:
    channel_id: int = await db.fetchval(
        """INSERT INTO channels (namespace, name, type, bot_id, bot_username, api_base_url,
                                 webhook_secret_sha256, config, ready)
           VALUES ($1, $2, 'telegram', $3, $4, $5, $6, $7, true) RETURNING id""",
        NAMESPACE, NAME, bot_id, username, emulator.base_url, hashlib.sha256(b"secret").hexdigest(),
        {"defaultLanguage": "en"},
    )
    return channel_id


async def test_updates_no_handler_takes_cost_no_postgres_statement_and_a_handled_one_reads_the_language(
        telegram_emulator: Emulator, db: Any, redis: Any,
        bot_pool: tuple[asyncpg.Pool, Statements]) -> None:
    emu = telegram_emulator
    info = emu.add_bot(username="clarion_dispatcher_bot")
    user = emu.add_user(USER, "Ivan", "ivan", "en")
    emu.add_group(-100500, "Fans", members=[USER])
    emu.add_group(-100600, "Club")
    channel_id = await insert_channel(db, emu, info.id, info.username)
    await subscribers.set_language(db, channel_id, USER, "ru")  # chosen with /language earlier
    channel = await get_channel(db, channel_key(NAMESPACE, NAME))
    assert channel is not None
    pool, statements = bot_pool
    dp = build_dispatcher(db=pool, redis=redis, holder=ChannelHolder(channel))
    bot = aiogram_bot(emu, info.token)
    try:
        now = int(time.time())
        unhandled = [  # all of them are update types a channel receives by default, all from a user
            {"update_id": 9_000, "edited_message": {
                "message_id": 1, "from": user.as_dict(), "chat": emu.private_chat(user), "date": now - 60,
                "edit_date": now, "text": "hello, edited"}},
        ]
        for update in unhandled:
            assert await dp.feed_raw_update(bot, update) is UNHANDLED, update
        assert await statements.sent_since_last_call(pool) == []

        # a group message is looked up among the managed groups (for its member's last-seen time; the group
        # remembered a few seconds): not managed here, so nothing else, and no handler takes it
        for text in ("hello everyone", "still here"):
            update = await emu.user_sends_in_group(info.token, -100500, USER, text)
            assert await dp.feed_raw_update(bot, update) is UNHANDLED
        sent = await statements.sent_since_last_call(pool)
        assert len(sent) == 1 and "FROM managed_groups" in sent[0]

        # a join request is looked up among the managed groups (remembered a few seconds): not managed here
        for _ in range(2):
            await dp.feed_raw_update(bot, await emu.request_join(info.token, -100600, USER))
            emu.groups[-100600].join_requests.clear()
        sent = await statements.sent_since_last_call(pool)
        assert sum("FROM managed_groups" in query for query in sent) == 1
        assert emu.groups[-100600].members == set()

        await dp.feed_raw_update(bot, await emu.user_sends(info.token, USER, "/start"))
        await dp.feed_raw_update(bot, await emu.user_sends(info.token, USER, "/help"))
        welcome, help_text = [m.text for m in emu.sent(info.token, USER)]
        assert welcome.startswith("Здравствуйте, Ivan!")
        assert help_text.startswith("/start — подписаться")  # the stored choice, not Telegram's "en"
        sent = await statements.sent_since_last_call(pool)
        assert sum("FROM subscribers" in query for query in sent) == 2  # the language, once per update
    finally:
        await bot.session.close()
