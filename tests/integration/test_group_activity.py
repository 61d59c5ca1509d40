"""Managed groups beyond join requests, with the bot as it runs (`clarion_bot.main.run`, or `clarion-bot`
processes where a kill is the point): members' last-seen times written in batches, membership from
`chat_member` updates, /rules and /report, the join policy of the group's phase, members' DMs.

The emulator (as Telegram) enqueues the updates → webhook → Redis → the bot; Postgres and Redis real. The
webhook is registered with the channel's default allowed_updates (chat_member is not sent otherwise).
Time: "idle for 40 days" is a stored time moved back, as the inactivity sweep's tests do.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from clarion.models.channel import DEFAULT_ALLOWED_UPDATES
from clarion.streams import DEFAULT_PARTITIONS, report_limit_key, update_partition, updates_stream
from clarion_bot.main import run as run_bot
from clarion_dev.telegram import Emulator
from clarion_dev.testing.telegram import aiogram_bot
from prometheus_client import REGISTRY

from tests.integration.test_bot_end_to_end import (
    ADMIN,
    KEY,
    NAMESPACE,
    SECRET,
    USER,
    Stack,
    _lease_holders,
    make_stack,
    until,
)

pytestmark = pytest.mark.integration

GROUP = -100_7101  # a supergroup: reports link to t.me/c/7101/<message>
DESK = -100_7102  # the moderators' chat
MIA = 503
TOM = 504
CROWD = range(600_001, 600_031)  # 30 members who chat


@pytest.fixture
async def stack(telegram_emulator: Emulator, db: Any, database_url: str,
                redis_url: str) -> AsyncIterator[Stack]:
    emu = telegram_emulator
    emu.add_user(ADMIN, "Ada", "ada_admin", "en")
    emu.add_user(USER, "Иван", "ivan", "ru")
    emu.add_user(MIA, "Mia", "mia", "en")
    emu.add_user(TOM, "Tom", None, "en")
    for uid in CROWD:
        emu.add_user(uid, f"U{uid}", None, "en")
    emu.add_group(GROUP, "Book club", members=[ADMIN, USER, MIA, TOM, *CROWD], admins=[ADMIN])
    emu.add_group(DESK, "Moderators", members=[ADMIN], admins=[ADMIN])
    async with make_stack(emu, db, database_url, redis_url) as made:
        bot = aiogram_bot(emu, made.token)
        try:
            await bot.set_webhook(f"http://127.0.0.1:{made.webhook_port}/tg/webhook/{KEY}",
                                  secret_token=SECRET, allowed_updates=list(DEFAULT_ALLOWED_UPDATES))
        finally:
            await bot.session.close()
        yield made


@contextlib.asynccontextmanager
async def running_bot(stack: Stack, **settings: Any) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_bot(stack.bot_settings(**settings), stop, handle_signals=False))
    try:
        yield
    finally:
        stop.set()
        assert await task == 0


async def manage(stack: Stack, db: Any, phase: str = "Growth", **spec: Any) -> int:
    """The row the operator writes for a ManagedGroup of the stack's channel."""
    full: dict[str, Any] = {"channelRef": {"name": KEY.split(".", 1)[1]}, "chatId": GROUP,
                            "joinRequests": {"policy": "approve"}, **spec}
    group_id: int = await db.fetchval(
        "INSERT INTO managed_groups (namespace, name, channel_id, chat_id, spec, phase) "
        "VALUES ($1, 'club', $2, $3, $4, $5) RETURNING id", NAMESPACE, stack.channel_id, GROUP, full, phase)
    return group_id


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def group_stream() -> str:
    return updates_stream(KEY, update_partition(GROUP, DEFAULT_PARTITIONS))


async def stream_state(redis: Any) -> tuple[int, int]:
    """(entries delivered to the bot so far, entries of them not acknowledged) of the group's partition."""
    groups = await redis.xinfo_groups(group_stream())
    if not groups:
        return 0, 0
    return int(groups[0]["entries-read"] or 0), int(groups[0]["pending"])


async def member(db: Any, user_id: int) -> Any:
    return await db.fetchrow("SELECT status, joined_at, last_activity_at, warned_at FROM group_members "
                             "WHERE user_id = $1", user_id)


async def test_member_messages_keep_last_seen_times_in_far_fewer_statements_than_messages(
        stack: Stack, db: Any, redis: Any) -> None:
    group_id = await manage(stack, db)
    await db.execute("INSERT INTO group_members (group_id, user_id, last_activity_at) "
                     "VALUES ($1, $2, now() - interval '40 days')", group_id, CROWD[0])
    flushes, recorded = metric("clarion_group_activity_flushes_total"), metric(
        "clarion_group_activity_updates_total")
    async with running_bot(stack):
        started = await db.fetchval("SELECT now()")
        for n in range(5):
            for uid in CROWD:
                await stack.emulator.user_sends_in_group(stack.token, GROUP, uid, f"message {n}")
        messages = 5 * len(CROWD)
        await until(lambda: db.fetchval(
            "SELECT count(*) = $2 FROM group_members WHERE group_id = $1 AND last_activity_at >= "
            "$3::timestamptz - interval '1 second'", group_id, len(CROWD), started),
            timeout=30, what="every member seen")
        await until(lambda: _all_acknowledged(redis, messages), timeout=30, what="every entry acknowledged")
    statements = metric("clarion_group_activity_flushes_total") - flushes
    assert metric("clarion_group_activity_updates_total") - recorded == messages
    assert 1 <= statements < messages / 10
    rows = await db.fetch("SELECT status FROM group_members WHERE group_id = $1", group_id)
    assert [r["status"] for r in rows] == ["member"] * len(CROWD)
    assert stack.texts(ADMIN) == []  # group messages are no support requests


async def _all_acknowledged(redis: Any, count: int) -> bool:
    read, pending = await stream_state(redis)
    return read >= count and pending == 0


async def test_chat_member_updates_keep_membership(stack: Stack, db: Any) -> None:
    emu = stack.emulator
    group_id = await manage(stack, db)
    await db.execute(
        "INSERT INTO group_members (group_id, user_id, status, removed_at, joined_at, last_activity_at) "
        "VALUES ($1, $2, 'removed', now() - interval '1 day', now() - interval '90 days', "
        "now() - interval '60 days'), ($1, $3, 'left', NULL, now() - interval '90 days', "
        "now() - interval '60 days')", group_id, MIA, TOM)
    group = emu.groups[GROUP]
    mia = {"id": MIA, "is_bot": False, "first_name": "Mia"}
    async with running_bot(stack):
        emu.member_changed(group, MIA, "member", "left", actor=mia)
        await emu.leave_group(GROUP, USER)
        await until(lambda: db.fetchval("SELECT status = 'left' FROM group_members WHERE user_id = $1", USER),
                    timeout=20, what="the member who left")
        emu.member_changed(group, MIA, "left", "member", actor=mia)
        emu.member_changed(group, TOM, "left", "member", actor=mia | {"id": TOM, "first_name": "Tom"})
        await until(lambda: db.fetchval("SELECT count(*) = 2 FROM group_members WHERE status = 'member' "
                                        "AND joined_at > now() - interval '1 minute'"), timeout=20,
                    what="the members who came back")
    left = await member(db, USER)
    assert left["status"] == "left"
    for uid in (MIA, TOM):  # a removed member and one who had left, back: members from now
        row = await member(db, uid)
        assert row["status"] == "member" and row["last_activity_at"] >= row["joined_at"]


async def test_removed_member_stays_removed_when_the_ban_arrives(stack: Stack, db: Any) -> None:
    group_id = await manage(stack, db)
    await db.execute("INSERT INTO group_members (group_id, user_id, status, removed_at) "
                     "VALUES ($1, $2, 'removed', now())", group_id, TOM)
    async with running_bot(stack):
        # the inactivity sweep's ban (member → kicked), then a member leaving (member → left), in order
        stack.emulator.member_changed(stack.emulator.groups[GROUP], TOM, "member", "kicked",
                                      actor={"id": ADMIN, "is_bot": False, "first_name": "Ada"})
        await stack.emulator.leave_group(GROUP, MIA)
        await until(lambda: db.fetchval("SELECT status = 'left' FROM group_members WHERE user_id = $1", MIA),
                    timeout=20, what="the member who left")
    assert (await member(db, TOM))["status"] == "removed"


async def test_a_warned_member_who_speaks_is_a_member_again(stack: Stack, db: Any) -> None:
    group_id = await manage(stack, db)
    await db.execute(
        "INSERT INTO group_members (group_id, user_id, status, warned_at, last_activity_at) VALUES "
        "($1, $2, 'warned', now() - interval '1 day', now() - interval '40 days'), "
        "($1, $3, 'warned', now() - interval '1 day', now() - interval '40 days')", group_id, MIA, TOM)
    async with running_bot(stack):
        await stack.emulator.user_sends_in_group(stack.token, GROUP, MIA, "I am still here!")
        await until(lambda: db.fetchval("SELECT status = 'member' FROM group_members WHERE user_id = $1",
                                        MIA), timeout=20, what="the warned member back")
    mia, tom = await member(db, MIA), await member(db, TOM)
    assert mia["warned_at"] is None and await db.fetchval(
        "SELECT $1 > now() - interval '1 minute'", mia["last_activity_at"])
    assert tom["status"] == "warned" and tom["warned_at"] is not None  # silent: still warned


async def test_rules_command_answers_with_the_groups_rules(stack: Stack, db: Any) -> None:
    emu = stack.emulator
    await manage(stack, db, rulesText="1. Be kind.\n2. No spam.")
    async with running_bot(stack):
        await emu.user_sends_in_group(stack.token, GROUP, MIA, "/rules")
        await emu.user_sends_in_group(stack.token, GROUP, TOM, "/rules@clarion_support_bot")
        await emu.user_sends_in_group(stack.token, GROUP, TOM, "/rules@some_other_bot")
        await until(lambda: len(stack.texts(GROUP)) >= 2, timeout=20, what="the rules")
        await emu.wait_webhook_idle(stack.token)
        await until(lambda: _no_pending(stack), timeout=20, what="every update handled")
    assert stack.texts(GROUP) == ["1. Be kind.\n2. No spam."] * 2


async def _no_pending(stack: Stack) -> bool:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(stack.redis_url)
    try:
        return await _all_acknowledged(client, 3)
    finally:
        await client.aclose()


async def test_rules_command_without_rules_says_so_in_the_members_language(stack: Stack, db: Any) -> None:
    await manage(stack, db)
    async with running_bot(stack):
        await stack.emulator.user_sends_in_group(stack.token, GROUP, USER, "/rules")
        [answer] = await until(lambda: stack.texts(GROUP), timeout=20, what="the answer")
    assert answer == "Для этой группы правила не заданы."


async def test_report_reaches_the_report_chat_once_a_minute_per_user(
        stack: Stack, db: Any, redis: Any) -> None:
    emu = stack.emulator
    await manage(stack, db, reportChatId=DESK)
    async with running_bot(stack):
        spam = await emu.user_sends_in_group(stack.token, GROUP, TOM, "Buy cheap watches!")
        spam_id = spam["message"]["message_id"]
        await emu.user_sends_in_group(stack.token, GROUP, MIA, "/report")  # no reply: how to use it
        await emu.user_sends_in_group(stack.token, GROUP, MIA, "/report", reply_to=spam_id)
        await until(lambda: stack.texts(DESK), timeout=20, what="the report")
        await emu.user_sends_in_group(stack.token, GROUP, MIA, "/report", reply_to=spam_id)  # too soon
        await until(lambda: len(stack.texts(GROUP)) >= 3, timeout=20, what="the answers in the group")
        assert await redis.pttl(report_limit_key(KEY, MIA)) > 0
    assert stack.texts(DESK) == [
        f"Report in Book club by Mia (@mia) (id {MIA}) about Tom (id {TOM}):\n\nBuy cheap watches!\n\n"
        f"https://t.me/c/7101/{spam_id}"]
    assert stack.texts(GROUP) == ["To report a message, reply to it with /report.",
                                  "Thank you, the admins have your report.",
                                  "You can send one report a minute. Please try again later."]
    assert stack.texts(ADMIN) == []


async def test_report_goes_to_the_join_admin_chat_else_to_support(stack: Stack, db: Any) -> None:
    await manage(stack, db, joinRequests={"policy": "manual", "adminChatId": DESK})
    async with running_bot(stack):
        spam = await stack.emulator.user_sends_in_group(stack.token, GROUP, TOM, "spam")
        await stack.emulator.user_sends_in_group(stack.token, GROUP, MIA, "/report",
                                                 reply_to=spam["message"]["message_id"])
        [report] = await until(lambda: stack.texts(DESK), timeout=20, what="the report")
        await db.execute("UPDATE managed_groups SET spec = spec - 'joinRequests'")
    assert report.startswith("Report in Book club by Mia")
    # without any admin chat in the spec: the channel's support chat
    async with running_bot(stack):
        spam = await stack.emulator.user_sends_in_group(stack.token, GROUP, TOM, "more spam")
        await stack.emulator.user_sends_in_group(stack.token, GROUP, USER, "/report",
                                                 reply_to=spam["message"]["message_id"])
        [to_support] = await until(lambda: stack.texts(ADMIN), timeout=20, what="the report at support")
    assert to_support.startswith("Report in Book club by Иван (@ivan)") and "more spam" in to_support


async def test_join_requests_follow_monitorings_policy_in_monitoring(stack: Stack, db: Any) -> None:
    emu = stack.emulator
    emu.add_user(700_001, "Newcomer", "newcomer", "en")
    emu.add_user(700_002, "Later", "later", "en")
    group_id = await manage(stack, db, lifecycle={"monitoringJoinRequests": {"policy": "decline"}})
    async with running_bot(stack):
        await emu.request_join(stack.token, GROUP, 700_001)
        await until(lambda: db.fetchval("SELECT status FROM group_join_requests WHERE user_id = 700001 "
                                        "AND applied_at IS NOT NULL"), timeout=20, what="the Growth decision")
    await db.execute("UPDATE managed_groups SET phase = 'Monitoring' WHERE id = $1", group_id)
    async with running_bot(stack):
        await emu.request_join(stack.token, GROUP, 700_002)
        await until(lambda: db.fetchval("SELECT status FROM group_join_requests WHERE user_id = 700002 "
                                        "AND applied_at IS NOT NULL"), timeout=20, what="the Monitoring one")
    rows = await db.fetch("SELECT user_id, status FROM group_join_requests")
    statuses = {r["user_id"]: r["status"] for r in rows}
    assert statuses == {700_001: "approved", 700_002: "declined"}
    assert 700_001 in emu.groups[GROUP].members and 700_002 not in emu.groups[GROUP].members


async def test_a_members_private_message_goes_to_support_and_a_group_message_does_not(
        stack: Stack, db: Any) -> None:
    await manage(stack, db)
    async with running_bot(stack):
        await stack.emulator.user_sends_in_group(stack.token, GROUP, MIA, "Can anyone help me?")
        await stack.emulator.user_sends(stack.token, MIA, "Hello support, I need help")
        [post] = await until(lambda: stack.texts(ADMIN), timeout=20, what="the support post")
        await until(lambda: stack.texts(MIA), timeout=20, what="the user told")
        await until(lambda: db.fetchval("SELECT count(*) = 1 FROM group_members WHERE user_id = $1", MIA),
                    timeout=20, what="the member seen")
    assert "Hello support, I need help" in post and "Can anyone help me?" not in post
    assert await db.fetchval("SELECT count(*) FROM support_threads") == 1
    assert stack.texts(GROUP) == []


async def test_a_killed_replica_loses_no_last_seen_time_and_a_stopped_one_flushes(
        stack: Stack, db: Any, redis: Any, tmp_path: Path) -> None:
    """kill -9 with times only in memory: their entries were not acknowledged, so the next replica
    handles them again and writes them. A graceful stop writes what it holds."""
    group_id = await manage(stack, db)
    slow = {"CLARION_BOT_ACTIVITY_FLUSH_SECONDS": "60", "CLARION_BOT_ACTIVITY_FLUSH_ENTRIES": "100000"}
    log = tmp_path / "replica-a.log"
    process = subprocess.Popen([sys.executable, "-m", "clarion_bot.main"],
                               env={**stack.bot_env("replica-a"), **slow}, stdout=subprocess.DEVNULL,
                               stderr=log.open("wb"))
    try:
        await until(_lease_holders(stack.redis_url, {b"replica-a"}), timeout=60, what="the replica leasing")
        for uid in CROWD[:10]:
            await stack.emulator.user_sends_in_group(stack.token, GROUP, uid, "hi")
        await until(lambda: _read_but_pending(redis, 10), timeout=30, what="10 entries handled, not flushed")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert await db.fetchval("SELECT count(*) FROM group_members WHERE group_id = $1", group_id) == 0
    async with running_bot(stack):
        await until(lambda: db.fetchval("SELECT count(*) = 10 FROM group_members WHERE group_id = $1",
                                        group_id), timeout=30, what="the killed replica's times")
        await until(lambda: _read_but_pending(redis, 10, pending=0), timeout=30, what="acknowledged")
    async with running_bot(stack, bot_activity_flush_seconds=60.0):
        recorded = metric("clarion_group_activity_updates_total")
        for uid in CROWD[10:15]:
            await stack.emulator.user_sends_in_group(stack.token, GROUP, uid, "hello")
        # Held in the buffer (read is not enough: a stop leaves entries read but not handled pending).
        await until(lambda: metric("clarion_group_activity_updates_total") - recorded == 5,
                    timeout=30, what="5 more recorded in the buffer")
        assert await _read_but_pending(redis, 15, pending=5)
        assert await db.fetchval("SELECT count(*) FROM group_members WHERE group_id = $1", group_id) == 10
    # stopped gracefully: flushed, then acknowledged
    assert await db.fetchval("SELECT count(*) FROM group_members WHERE group_id = $1", group_id) == 15
    assert (await stream_state(redis))[1] == 0


async def _read_but_pending(redis: Any, read: int, pending: int | None = None) -> bool:
    seen, waiting = await stream_state(redis)
    return seen >= read and waiting == (read if pending is None else pending)
