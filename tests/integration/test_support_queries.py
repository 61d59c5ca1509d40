"""The support-thread queries against a real Postgres."""

from __future__ import annotations

import asyncpg
import pytest
from clarion.db import support

pytestmark = pytest.mark.integration


async def make_channel(db: asyncpg.Pool, name: str) -> int:
    channel_id: int = await db.fetchval(
        """INSERT INTO channels (namespace, name, type, bot_id, config)
           VALUES ('default', $1, 'telegram', 42, '{}'::jsonb) RETURNING id""", name,
    )
    return channel_id


async def test_a_thread_is_found_by_its_reserved_id_and_only_in_its_own_channel(db: asyncpg.Pool) -> None:
    shop, other = await make_channel(db, "shop"), await make_channel(db, "other")
    first, second = await support.reserve_thread_id(db), await support.reserve_thread_id(db)
    assert first != second
    await support.record_thread(db, shop, second, user_chat_id=501, user_message_id=7, admin_chat_id=900,
                                admin_message_id=31, user_name="Иван", user_language="ru")

    assert await support.get_thread(db, shop, second) == support.SupportThread(501, "Иван", "ru")
    assert await support.get_thread(db, other, second) is None  # a Reply button forged in another bot
    assert await support.get_thread(db, shop, first) is None  # reserved, its post never sent
