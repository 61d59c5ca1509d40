"""`clarion-worker` end to end: real worker processes, Postgres, Redis and the Telegram emulator.

Notifications are accepted the way the API accepts them (`clarion.db.notifications.accept`, then the
entry on the lane's stream); what the emulator received and the rows' status are what is asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from clarion.db import notifications as q
from clarion.settings import CommonSettings
from clarion.streams import (
    NotificationEvent,
    NotificationTask,
    dead_letter_stream,
    notification_status_stream,
    notify_stream,
)
from clarion_dev import dlq_cli
from clarion_dev.smtp_sink import SmtpSink
from clarion_dev.telegram import Emulator
from clarion_dev.testing.processes import stop_processes
from clarion_dev.testing.waiting import async_wait_for

WORKER = str(Path(sys.executable).with_name("clarion-worker"))
CHANNEL = "shop.alerts"
FIRST_USER = 100_000
pytestmark = [pytest.mark.integration, pytest.mark.emulator(limits="scaled", scale=10)]


@dataclass
class World:
    db: asyncpg.Pool
    redis: aioredis.Redis
    emu: Emulator
    token: str
    channel_id: int

    async def notify(self, chat_id: int, text: str, *, lane: str = "instant",
                     scheduled_for: datetime | None = None, enqueue: bool = True) -> uuid.UUID:
        new = q.NewNotification(id=uuid.uuid4(), channel_id=self.channel_id, lane=lane,
                                recipient=str(chat_id),
                                content={"text": text}, reference="test", api_key_id=None,
                                trace_id=os.urandom(16).hex(), scheduled_for=scheduled_for, max_attempts=3)
        async with self.db.acquire() as conn:
            row, _ = await q.accept(conn, new)
        assert row is not None
        if enqueue and row.status == "queued":
            task = NotificationTask(notification_id=str(row.id), trace_id=row.trace_id)
            await self.redis.xadd(notify_stream(CHANNEL, lane), task.to_fields())  # type: ignore[arg-type]
        return row.id

    async def statuses(self) -> Counter[str]:
        rows = await self.db.fetch("SELECT status FROM notifications")
        return Counter(r["status"] for r in rows)

    def received(self) -> Counter[int]:
        return Counter(m.chat_id for m in self.emu.sent(self.token))


@pytest.fixture
async def world(db: asyncpg.Pool, redis: aioredis.Redis, telegram_emulator: Emulator) -> World:
    bot = telegram_emulator.add_bot()
    telegram_emulator.add_users(300, FIRST_USER)
    channel_id = await db.fetchval(
        """INSERT INTO channels (namespace, name, type, bot_id, api_base_url, config, ready)
           VALUES ('shop', 'alerts', 'telegram', $1, $2, $3, true) RETURNING id""",
        bot.id, telegram_emulator.base_url, {"rateLimits": {"globalPerSecond": 300, "perChatPerSecond": 10}})
    return World(db, redis, telegram_emulator, bot.token, channel_id)


class Workers:
    """`clarion-worker` subprocesses of the test's channel."""

    def __init__(self, database_url: str, redis_url: str, world: World, tmp_path: Path) -> None:
        self.env = {**os.environ, "CLARION_DATABASE_URL": database_url, "CLARION_REDIS_URL": redis_url,
                    "CLARION_BOT_TOKEN": world.token, "CLARION_WORKER_CHANNEL": CHANNEL,
                    "CLARION_LOG_FORMAT": "json", "CLARION_LOG_LEVEL": "INFO",
                    "CLARION_RETRY_BACKOFF_SECONDS": "0.2", "CLARION_REPLAY_AFTER_SECONDS": "2"}
        self.tmp_path = tmp_path
        self.procs: dict[str, asyncio.subprocess.Process] = {}

    async def start(self, name: str, **env: str) -> asyncio.subprocess.Process:
        log = (self.tmp_path / f"{name}.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            WORKER, env={**self.env, "CLARION_POD_NAME": name, **env}, stdout=log, stderr=log)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")[-3000:]

    async def stop_all(self) -> None:
        await stop_processes(self.procs.values())


@pytest.fixture
async def workers(database_url: str, redis_url: str, world: World, tmp_path: Path) -> AsyncIterator[Workers]:
    found = Workers(database_url, redis_url, world, tmp_path)
    try:
        yield found
    finally:
        await found.stop_all()


async def _settled(world: World, workers: Workers, total: int, timeout: float = 60) -> Counter[str]:
    async def done() -> Counter[str] | None:
        counts = await world.statuses()
        return counts if sum(counts[s] for s in q.FINAL) >= total else None

    try:
        found: Counter[str] = await async_wait_for(done, timeout=timeout, interval=0.2,
                                                   what=f"{total} notifications settled")
    except AssertionError as exc:
        logs = "\n".join(f"--- {n} ---\n{workers.log(n)}" for n in workers.procs)
        raise AssertionError(f"{exc}\n{logs}") from None
    return found


async def _entries(redis: aioredis.Redis, stream: str) -> list[dict[bytes, bytes]]:
    found: Any = await redis.xrange(stream)
    return [fields for _, fields in found]


async def _events(redis: aioredis.Redis) -> list[NotificationEvent]:
    entries = await _entries(redis, notification_status_stream(CHANNEL))
    return [NotificationEvent.from_fields(f) for f in entries]


async def test_each_notification_reaches_its_chat_once_and_its_row_and_event_say_sent(
    world: World, workers: Workers,
) -> None:
    chats = list(range(FIRST_USER, FIRST_USER + 100))
    ids = [await world.notify(chat, f"Order {chat} shipped", lane="bulk" if chat % 2 else "instant")
           for chat in chats]
    await workers.start("w1")

    counts = await _settled(world, workers, len(ids))

    assert counts == Counter(sent=100)
    assert world.received() == Counter(chats)
    texts = {m.chat_id: m.text for m in world.emu.sent(world.token)}
    assert texts[FIRST_USER + 7] == f"Order {FIRST_USER + 7} shipped"
    row = await world.db.fetchrow("SELECT * FROM notifications WHERE id = $1", ids[0])
    sent = next(m for m in world.emu.sent(world.token) if m.chat_id == chats[0])
    assert (row["attempts"], row["provider_message_id"]) == (1, str(sent.message_id))
    assert row["sent_at"] is not None and row["claimed_by"] is None
    events = await _events(world.redis)
    assert sorted(e.notification_id for e in events) == sorted(str(i) for i in ids)
    assert {e.status for e in events} == {"sent"}
    assert {e.trace_id for e in events} == set(await world.db.fetchval(
        "SELECT array_agg(trace_id) FROM notifications"))


async def test_permanent_failures_fail_at_once_and_blocked_users_are_blocked(
    world: World, workers: Workers,
) -> None:
    world.emu.set_blocked(world.token, FIRST_USER + 1, True)
    stranger = await world.notify(9_999_999, "to nobody")  # Telegram never heard of this chat
    blocked = await world.notify(FIRST_USER + 1, "to someone who blocked the bot")
    fine = await world.notify(FIRST_USER + 2, "hello")
    await workers.start("w1")

    await _settled(world, workers, 3)

    rows = {r["id"]: r for r in await world.db.fetch("SELECT * FROM notifications")}
    assert (rows[stranger]["status"], rows[stranger]["attempts"]) == ("failed", 1)
    assert "chat not found" in rows[stranger]["last_error"]
    assert rows[blocked]["status"] == "blocked" and rows[fine]["status"] == "sent"
    dead = await _entries(world.redis, dead_letter_stream(notify_stream(CHANNEL, "instant")))
    assert [(f[b"notification_id"].decode(), f[b"reason"]) for f in dead] == [(str(stranger), b"permanent")]


async def test_a_5xx_storm_is_retried_with_backoff_and_exhausted_attempts_are_dead_lettered(
    world: World, workers: Workers,
) -> None:
    world.emu.faults.set("sendMessage", error_rate_5xx=1.0, error_status=502)
    doomed = await world.notify(FIRST_USER, "sent into the storm")
    await workers.start("w1")
    await _settled(world, workers, 1)
    row = await world.db.fetchrow("SELECT * FROM notifications WHERE id = $1", doomed)
    assert (row["status"], row["attempts"]) == ("failed", 3)
    dead = await _entries(world.redis, dead_letter_stream(notify_stream(CHANNEL, "instant")))
    assert [f[b"reason"] for f in dead] == [b"attempts_exhausted"]

    world.emu.faults.set("sendMessage", error_rate_5xx=0.5, error_status=503)
    ids = [await world.notify(FIRST_USER + 10 + i, "through the drizzle") for i in range(30)]
    counts = await _settled(world, workers, 31)
    world.emu.faults.clear()
    failed_again = counts["failed"] - 1  # three 503s in a row: (0.5)^3 of them, expected about 4
    assert counts["sent"] + failed_again == 30
    assert world.received()[FIRST_USER] == 0
    retried = await world.db.fetchval(
        "SELECT count(*) FROM notifications WHERE id = ANY($1::uuid[]) AND status = 'sent' AND attempts > 1",
        ids)
    assert retried > 0


async def test_a_sigkilled_worker_s_entries_are_reclaimed_and_nothing_is_lost(
    world: World, workers: Workers,
) -> None:
    world.emu.faults.set("sendMessage", latency=(0.2, 0.05))  # sends stay in flight long enough to be killed
    chats = list(range(FIRST_USER, FIRST_USER + 200))
    for chat in chats:
        await world.notify(chat, "hello")
    victim = await workers.start("victim", CLARION_CLAIM_LEASE_SECONDS="3", CLARION_WORKER_CONCURRENCY="8")

    async def busy() -> int | None:
        sent = sum(world.received().values())
        return sent if sent >= 20 else None

    sending: int = await async_wait_for(busy, timeout=60, interval=0.05, what="the victim sending")
    assert sending >= 20
    held = await world.db.fetchval("SELECT count(*) FROM notifications WHERE status = 'sending'")
    victim.kill()
    await victim.wait()
    in_flight = held + 8  # rows it held, and at most its window more between the count and the kill
    await workers.start("heir", CLARION_CLAIM_LEASE_SECONDS="3")

    counts = await _settled(world, workers, len(chats), timeout=90)

    assert counts == Counter(sent=200)
    received = world.received()
    assert set(received) == set(chats)
    assert sum(received.values()) - len(chats) <= in_flight


async def _consumers(redis: aioredis.Redis, stream: str) -> dict[str, int]:
    """The group's consumers and the entries each holds."""
    found: Any = await redis.xinfo_consumers(stream, "workers")
    return {_text(c["name"]): int(c["pending"]) for c in found}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def test_a_stopped_worker_gives_back_what_waits_for_the_limiter_and_leaves_the_group(
    world: World, workers: Workers,
) -> None:
    # 5 sends a second: most of what the worker read waits for the bot's limiter when it is stopped
    await world.db.execute("UPDATE channels SET config = $1 WHERE id = $2",
                           {"rateLimits": {"globalPerSecond": 5, "perChatPerSecond": 1}}, world.channel_id)
    chats = list(range(FIRST_USER, FIRST_USER + 60))
    for chat in chats:
        await world.notify(chat, "before the scale-down")
    leaving = await workers.start("leaving", CLARION_STOP_GRACE_SECONDS="1", CLARION_WORKER_CONCURRENCY="32")

    async def sending() -> int | None:
        sent = sum(world.received().values())
        return sent if sent >= 3 else None

    first: int = await async_wait_for(sending, timeout=60, interval=0.05, what="the first sends")
    assert first >= 3
    leaving.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(leaving.wait(), 30) == 0
    stream = notify_stream(CHANNEL, "instant")

    # it held 32 (sending or waiting); what it did not send is queued again, on the stream, held by no one
    sent_by_it = sum(world.received().values())
    counts = await world.statuses()
    assert counts["sent"] == sent_by_it
    assert counts["queued"] == len(chats) - sent_by_it
    assert "leaving" not in await _consumers(world.redis, stream)
    assert "worker.giving_back" in workers.log("leaving")

    await workers.start("staying")
    assert await _settled(world, workers, len(chats), timeout=120) == Counter(sent=60)
    assert world.received() == Counter(chats)  # each exactly once: nothing given back had been sent


async def test_a_worker_killed_before_it_could_leave_is_removed_from_the_group_once_stale(
    world: World, workers: Workers,
) -> None:
    stream = notify_stream(CHANNEL, "instant")
    await world.redis.xgroup_create(stream, "workers", id="0", mkstream=True)
    # a consumer holding nothing, as a pod killed on an empty stream leaves it
    await world.redis.xreadgroup("workers", "killed-pod", {stream: ">"}, count=1)
    await workers.start("tidy", CLARION_CLAIM_LEASE_SECONDS="1.5", CLARION_STALE_CONSUMER_SECONDS="1")

    async def forgotten() -> dict[str, int] | None:
        found = await _consumers(world.redis, stream)
        return found if "killed-pod" not in found and "tidy" in found else None

    left: dict[str, int] = await async_wait_for(forgotten, timeout=30, interval=0.2,
                                                what="the killed pod's consumer removed")
    assert left == {"tidy": 0}


async def test_entries_redis_lost_are_replayed_from_postgres(world: World, workers: Workers) -> None:
    ids = [await world.notify(FIRST_USER + i, "kept safe in Postgres") for i in range(20)]
    await world.redis.flushdb()  # Redis loses every entry before any worker read them

    await workers.start("w1")
    counts = await _settled(world, workers, len(ids))

    assert counts == Counter(sent=20)
    assert world.received() == Counter(range(FIRST_USER, FIRST_USER + 20))


async def test_a_backlog_waiting_on_its_stream_is_not_added_again_and_read_entries_are_trimmed(
    world: World, workers: Workers,
) -> None:
    # 200 notifications at 20/s: the backlog waits 10 s, five times the replayer's `replay_after` (2 s)
    await world.db.execute("UPDATE channels SET config = $1 WHERE id = $2",
                           {"rateLimits": {"globalPerSecond": 20, "perChatPerSecond": 10}}, world.channel_id)
    chats = range(FIRST_USER, FIRST_USER + 200)
    for chat in chats:
        await world.notify(chat, "in a backlog", lane="bulk")
    stream = notify_stream(CHANNEL, "bulk")
    await workers.start("w1")
    longest = 0

    async def drained() -> Counter[str] | None:
        nonlocal longest
        longest = max(longest, await world.redis.xlen(stream))
        counts = await world.statuses()
        return counts if counts["sent"] == len(chats) else None

    counts: Counter[str] = await async_wait_for(drained, timeout=90, interval=0.1, what="the backlog sent")

    assert counts == Counter(sent=200)
    assert longest == 200, "rows waiting behind the backlog were put on the stream again"
    assert world.received() == Counter(chats)

    async def trimmed() -> bool | None:
        length: int = await world.redis.xlen(stream)
        return length <= 1 or None  # the last entry read stays: the group's position

    short: bool = await async_wait_for(trimmed, timeout=30, interval=0.2, what="read entries trimmed")
    assert short


async def test_a_scheduled_notification_waits_for_its_time(world: World, workers: Workers) -> None:
    later = datetime.now(UTC) + timedelta(seconds=3)
    scheduled = await world.notify(FIRST_USER, "later", scheduled_for=later)
    now = await world.notify(FIRST_USER + 1, "now")
    await workers.start("w1")

    await _settled(world, workers, 2)

    rows: dict[Any, Any] = {r["id"]: r for r in await world.db.fetch("SELECT * FROM notifications")}
    assert rows[scheduled]["sent_at"] >= later
    assert rows[now]["sent_at"] < later


@pytest.mark.smtp_sink(starttls=True, require_auth=True, users={"clarion": "s3cret"},
                       recipient_replies={"gone@example.org": "550 5.1.1 Mailbox unavailable"})
async def test_an_email_channel_s_worker_sends_over_starttls_with_auth_and_fails_a_refused_mailbox(
    db: asyncpg.Pool, redis: aioredis.Redis, smtp_sink: SmtpSink, database_url: str, redis_url: str,
    tmp_path: Path,
) -> None:
    config = {"host": "127.0.0.1", "port": smtp_sink.port, "tls": "starttls",
              "from": "Shop <shop@example.org>", "ratePerSecond": 500}
    channel_id = await db.fetchval(
        """INSERT INTO channels (namespace, name, type, config, ready)
           VALUES ('shop', 'mail', 'email', $1, true) RETURNING id""", config)
    rows = []
    for address in [*(f"buyer{i}@example.org" for i in range(20)), "gone@example.org"]:
        new = q.NewNotification(
            id=uuid.uuid4(), channel_id=channel_id, lane="instant", recipient=address,
            content={"subject": "Ваш заказ отправлен", "text": f"Hello {address}", "html": "<p>Hello</p>"},
            reference=None, api_key_id=None, trace_id=os.urandom(16).hex(), scheduled_for=None,
            max_attempts=3)
        async with db.acquire() as conn:
            row, _ = await q.accept(conn, new)
        assert row is not None
        rows.append(row)
        task = NotificationTask(notification_id=str(row.id), trace_id=row.trace_id)
        await redis.xadd(notify_stream("shop.mail", "instant"), task.to_fields())  # type: ignore[arg-type]
    log = (tmp_path / "mail-worker.log").open("ab")
    proc = await asyncio.create_subprocess_exec(WORKER, "--channel", "shop.mail", stdout=log, stderr=log,
                                                env={
        **os.environ, "CLARION_DATABASE_URL": database_url, "CLARION_REDIS_URL": redis_url,
        "CLARION_SMTP_USERNAME": "clarion", "CLARION_SMTP_PASSWORD": "s3cret",
        "CLARION_SMTP_CA_FILE": str(smtp_sink.cert_path), "CLARION_LOG_FORMAT": "json"})
    try:
        async def settled() -> Counter[str] | None:
            found = Counter(r["status"] for r in await db.fetch("SELECT status FROM notifications"))
            return found if sum(found[s] for s in q.FINAL) == len(rows) else None

        try:
            counts: Counter[str] = await async_wait_for(settled, timeout=60, interval=0.2,
                                                        what="emails settled")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{(tmp_path / 'mail-worker.log').read_text()[-3000:]}") from None
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()

    assert counts == Counter(sent=20, failed=1)
    assert sorted(m.rcpt_tos[0] for m in smtp_sink.messages) == sorted(
        f"buyer{i}@example.org" for i in range(20))
    first = rows[0]
    [captured] = [m for m in smtp_sink.messages if m.rcpt_tos == ["buyer0@example.org"]]
    assert captured.tls and captured.authenticated_as == "clarion"
    assert captured.message["Subject"] == "Ваш заказ отправлен"
    assert captured.message["Message-ID"] == f"<{first.id}@example.org>"
    assert captured.message["X-Clarion-Trace-Id"] == first.trace_id
    stored = await db.fetchrow("SELECT * FROM notifications WHERE id = $1", first.id)
    assert (stored["status"], stored["provider_message_id"]) == ("sent", f"<{first.id}@example.org>")
    refused = await db.fetchrow("SELECT * FROM notifications WHERE recipient = 'gone@example.org'")
    assert refused["attempts"] == 1 and "550" in refused["last_error"]


async def test_a_dead_letter_is_listed_and_replayed_once_its_cause_is_fixed(
    world: World, workers: Workers, database_url: str, redis_url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    stranger = await world.notify(9_999_999, "before the user existed")
    await workers.start("w1")
    await _settled(world, workers, 1)
    settings = CommonSettings(database_url=database_url, redis_url=redis_url)
    capsys.readouterr()

    await dlq_cli.list_dead(settings, CHANNEL, None, 100)
    [line] = capsys.readouterr().out.splitlines()
    listed = json.loads(line)
    assert (listed["notification_id"], listed["reason"]) == (str(stranger), "permanent")
    assert "chat not found" in listed["error"]

    world.emu.add_user(9_999_999)  # the cause is fixed: the chat exists now
    assert await dlq_cli.replay(settings, [], True, CHANNEL) == 0
    assert await dlq_cli.replay(settings, [stranger], False, None) == 1  # no longer failed: left alone

    async def sent() -> str | None:
        status: str = await world.db.fetchval("SELECT status FROM notifications WHERE id = $1", stranger)
        return status if status == "sent" else None

    status: str = await async_wait_for(sent, timeout=30, interval=0.2, what="the replayed notification sent")
    assert status == "sent"
    assert world.received()[9_999_999] == 1
    assert await _entries(world.redis, dead_letter_stream(notify_stream(CHANNEL, "instant"))) == []
    audit = await world.db.fetch("SELECT actor, action FROM audit_log WHERE subject = $1 ORDER BY id",
                                 str(stranger))
    assert [(a["action"], a["actor"].partition(":")[0]) for a in audit] == [
        ("notification.dead_lettered", "worker"), ("notification.retried", "cli")]
