"""`clarion-worker --lanes group-maintenance` as a real process: the lane's consumer runs the ManagedGroup
maintenance (`group_task_handler`) with the channel's Bot API client and shared limiter, against the
Telegram emulator. What is asserted is what Telegram saw (the invite link), the group's row, and the
stream's consumer group."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from clarion.db import groups
from clarion.streams import WORKER_GROUP, GroupTask, GroupTaskKind, group_maintenance_stream
from clarion_dev.telegram import Emulator
from clarion_dev.testing.processes import stop_processes
from clarion_dev.testing.waiting import async_wait_for

pytestmark = pytest.mark.integration

WORKER = str(Path(sys.executable).with_name("clarion-worker"))
CHANNEL = "shop.alerts"
CHAT = -100_888
OWNER = 5001


async def test_a_rotate_invite_task_makes_the_period_s_link_and_the_stopped_worker_leaves_the_group(
    db: asyncpg.Pool, redis: aioredis.Redis, telegram_emulator: Emulator, database_url: str, redis_url: str,
    tmp_path: Path,
) -> None:
    bot = telegram_emulator.add_bot(username="club_bot")
    telegram_emulator.add_user(OWNER, "Olga")
    telegram_emulator.add_group(CHAT, "Club", admins=[OWNER])
    channel_id = await db.fetchval(
        """INSERT INTO channels (namespace, name, type, bot_id, api_base_url, config, ready)
           VALUES ('shop', 'alerts', 'telegram', $1, $2, '{}', true) RETURNING id""",
        bot.id, telegram_emulator.base_url)
    group = await groups.upsert_group(
        db, namespace="shop", name="club", uid="uid-club", channel_id=channel_id, chat_id=CHAT,
        phase="Growth",
        spec={"channelRef": {"name": "alerts"}, "chatId": CHAT,
              "inviteLinks": {"rotateEveryHours": 24, "memberLimit": 50}})
    assert isinstance(group, groups.GroupRecord)
    stream = group_maintenance_stream(CHANNEL)
    task = GroupTask(group_id=group.id, namespace="shop", name="club", chat_id=CHAT,
                     kind=GroupTaskKind.ROTATE_INVITE, slot=7, trace_id=os.urandom(16).hex())
    await redis.xadd(stream, task.to_fields())  # type: ignore[arg-type]

    log_path = tmp_path / "maintenance.log"
    worker = await asyncio.create_subprocess_exec(
        WORKER, "--channel", CHANNEL, "--lanes", "group-maintenance",
        env={**os.environ, "CLARION_DATABASE_URL": database_url, "CLARION_REDIS_URL": redis_url,
             "CLARION_BOT_TOKEN": bot.token, "CLARION_POD_NAME": "maintenance", "CLARION_LOG_FORMAT": "json"},
        stdout=log_path.open("ab"), stderr=log_path.open("ab"))
    try:
        async def rotated() -> Any:
            row = await db.fetchrow("SELECT invite_link, invite_link_slot FROM managed_groups WHERE id = $1",
                                    group.id)
            return row if row["invite_link"] is not None else None

        try:
            row: Any = await async_wait_for(rotated, timeout=60, interval=0.2, what="the invite link made")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log_path.read_text(errors='replace')}") from None
        [link] = telegram_emulator.groups[CHAT].invite_links.values()
        assert (row["invite_link"], row["invite_link_slot"]) == (link.link, 7)
        assert link.member_limit == 50

        async def acknowledged() -> bool | None:
            summary: Any = await redis.xpending(stream, WORKER_GROUP)
            return int(summary["pending"]) == 0 or None

        done: bool = await async_wait_for(acknowledged, timeout=30, what="the entry acknowledged")
        assert done
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 30) == 0, log_path.read_text(errors="replace")
        assert await redis.xinfo_consumers(stream, WORKER_GROUP) == []
    finally:
        await stop_processes([worker])
