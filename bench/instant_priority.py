"""Instant notifications while a campaign saturates the same bot: the instant lane's priority in the
shared limiter.

One bot on the Telegram emulator (its own process) enforcing the real limits (30 msg/s, 1 msg/s per
chat; every 429 counted) with a 50 ms (±10 ms) round trip. Side by side in one run, twice (priority
on, then off: `CLARION_LIMITER_HORIZON_SECONDS=0` in every process):

- a campaign sent by `--shards` `clarion-sender` processes, each holding up to `--concurrency` sends
  reserved or in flight, keeps the bot at 30 msg/s for the whole run (without the priority they hold
  shards x concurrency slots, i.e. seconds, ahead);
- instant notifications at `--rate`/s for `--seconds`, each INSERTed into the outbox (`accept`, as
  the API does) and its id XADDed to the instant lane, sent by one `clarion-worker` process to chats
  of their own (no per-chat wait).

Reported: insert → emulator accepted, p50 / p99 / max (both stamp CLOCK_MONOTONIC: one clock for
every process here), the campaign's rate while the instants ran, the bot's total rate, and 429s.
Goal (issue 13): instant p99 ≤ 1.5 s with the priority on. Uses a scratch database and Redis db 13
(`bench.sender_common`). `compare` runs both; bench/notifications.py reports them beside the API's
figures.

    .venv/bin/python bench/instant_priority.py [--seconds 30] [--rate 2] [--shards 2] [--concurrency 45]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import redis.asyncio as aioredis
from clarion.db import notifications as q
from clarion.streams import NotificationTask, notify_stream

from bench.sender_common import (
    BIN,
    FIRST_USER,
    REDIS_URL,
    TOKEN,
    EmulatorProcess,
    make_campaign,
    run_senders,
    scratch_database,
    table,
)
from bench.webhook_ingest import percentile

TELEGRAM = {"globalPerSecond": 30, "perChatPerSecond": 1, "perGroupPerMinute": 20,
            "paidBroadcastPerSecond": 1000}
CHANNEL = "bench.bench"  # the channel `make_campaign` creates
FIRST_INSTANT_CHAT = 900_000_000
WARM_UP_MESSAGES = 60  # campaign messages the emulator has before the instants start (2 s at 30/s)
SHARDS = 2  # campaign sender processes
WINDOW = 45  # sends each holds reserved or in flight: 90 slots, 3 s at 30/s, without the priority


async def start_worker(dsn: str, horizon: str, redis: aioredis.Redis) -> subprocess.Popen[bytes]:
    """A `clarion-worker` for the bench channel, once its consumer groups exist."""
    worker = subprocess.Popen([str(BIN / "clarion-worker"), "--channel", CHANNEL], env={
        **os.environ, "CLARION_DATABASE_URL": dsn, "CLARION_REDIS_URL": REDIS_URL, "CLARION_BOT_TOKEN": TOKEN,
        "CLARION_LOG_LEVEL": "WARNING", "CLARION_LIMITER_HORIZON_SECONDS": horizon})
    deadline = time.monotonic() + 120
    while True:
        try:
            if await redis.xinfo_groups(notify_stream(CHANNEL, "instant")):
                return worker
        except aioredis.ResponseError:  # the stream does not exist yet
            pass
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the worker did not start")
        await asyncio.sleep(0.2)


async def instants(pool: asyncpg.Pool, redis: aioredis.Redis, channel_id: int, rate: float,
                   seconds: float) -> dict[str, float]:
    """Open loop: notification `i` is inserted at start + i / rate; chat → its scheduled time."""
    due_by_chat: dict[str, float] = {}
    start = time.monotonic() + 0.1

    async def one(index: int) -> None:
        due = start + index / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        chat = str(FIRST_INSTANT_CHAT + index)
        new = q.NewNotification(id=uuid.uuid4(), channel_id=channel_id, lane="instant", recipient=chat,
                                content={"text": f"Your code is {index}"}, reference=None, api_key_id=None,
                                trace_id=os.urandom(16).hex(), scheduled_for=None, max_attempts=3)
        async with pool.acquire() as conn:
            row, _ = await q.accept(conn, new)
        assert row is not None
        task = NotificationTask(notification_id=str(row.id), trace_id=row.trace_id)
        await redis.xadd(notify_stream(CHANNEL, "instant"), task.to_fields())  # type: ignore[arg-type]
        due_by_chat[chat] = due

    await asyncio.gather(*(one(i) for i in range(int(rate * seconds))))
    return due_by_chat


@dataclass(frozen=True)
class PriorityRun:
    """One run: instants delivered of those inserted, their insert → emulator latencies (s), the
    campaign's and the bot's rates while the instants ran (msg/s), and the 429s the bot got."""

    delivered: int
    count: int
    p50: float
    p99: float
    max: float
    campaign_rate: float
    bot_rate: float
    too_many_requests: int

    def row(self, label: str) -> list[object]:
        return [label, f"{self.delivered} / {self.count}", self.p50, self.p99, self.max,
                round(self.campaign_rate, 2), round(self.bot_rate, 2), self.too_many_requests]


HEADER = ["run", "instants delivered", "p50 s", "p99 s (goal <= 1.5)", "max s", "campaign msg/s",
          "bot msg/s", "429s"]


async def run(horizon: str, emulator: EmulatorProcess, dsn: str, pool: asyncpg.Pool, redis: aioredis.Redis,
              *, rate: float, seconds: float, shards: int, concurrency: int) -> PriorityRun:
    """Instants at `rate`/s for `seconds` while the campaign runs, every process with the limiter's
    horizon `horizon` ("0": priority off)."""
    count = int(rate * seconds)
    users = int(30 * (seconds + 30))  # more than the campaign can send while the instants run
    await emulator.reset()
    await emulator.add_users(users)
    await emulator.add_users(count, FIRST_INSTANT_CHAT)
    campaign = await make_campaign(pool, emulator, users=users, shards=shards, rate_limits=TELEGRAM,
                                   delivery={"batchSize": 100}, name=f"priority-{horizon}")
    channel_id: int = await pool.fetchval("SELECT channel_id FROM campaigns WHERE id = $1", campaign)
    worker = await start_worker(dsn, horizon, redis)
    try:
        senders = asyncio.create_task(run_senders(
            dsn, campaign, shards, pool, CLARION_SENDER_CONCURRENCY=str(concurrency),
            CLARION_LIMITER_HORIZON_SECONDS=horizon))
        while (await emulator.stats())["messages_sent"] < WARM_UP_MESSAGES:
            if senders.done():
                senders.result()
                raise RuntimeError("the campaign ended before the instants started")
            await asyncio.sleep(0.2)
        window_start = time.monotonic()
        due_by_chat = await instants(pool, redis, channel_id, rate, seconds)
        window_end = time.monotonic()
        unsettled = "SELECT count(*) FROM notifications WHERE status IN ('created', 'queued', 'sending')"
        deadline = time.monotonic() + 60
        while await pool.fetchval(unsettled) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await pool.execute("UPDATE campaigns SET phase = 'Paused' WHERE id = $1", campaign)
        await senders
    finally:
        worker.terminate()
        worker.wait(30)
    sent = await emulator.sent()
    stats = await emulator.stats()
    await pool.execute("DELETE FROM notifications")
    await redis.delete(notify_stream(CHANNEL, "instant"), notify_stream(CHANNEL, "bulk"))
    latencies = [float(m["at"]) - due_by_chat[str(m["chat_id"])] for m in sent
                 if str(m["chat_id"]) in due_by_chat]
    in_window = [m for m in sent if window_start <= float(m["at"]) < window_end]
    campaign_in_window = sum(1 for m in in_window if int(m["chat_id"]) < FIRST_INSTANT_CHAT)
    window = window_end - window_start
    return PriorityRun(len(latencies), count, percentile(latencies, 0.5), percentile(latencies, 0.99),
                       max(latencies, default=float("nan")), campaign_in_window / window,
                       len(in_window) / window, stats["too_many_requests"])


async def compare(*, rate: float, seconds: float, shards: int = SHARDS,
                  concurrency: int = WINDOW) -> tuple[PriorityRun, PriorityRun]:
    """(priority on, priority off), each with its own campaign, in a scratch database and on an
    emulator of their own."""
    async with scratch_database("priority") as (dsn, pool), \
            EmulatorProcess("real", latency_ms=50, jitter_ms=10) as emulator:
        redis = aioredis.Redis.from_url(REDIS_URL)
        try:
            on, off = [await run(horizon, emulator, dsn, pool, redis, rate=rate, seconds=seconds,
                                 shards=shards, concurrency=concurrency) for horizon in ("0.5", "0")]
        finally:
            await redis.aclose()
    return on, off


def title(rate: float, seconds: float, shards: int, concurrency: int) -> str:
    return (f"Instant lane at {rate:g}/s for {seconds:g} s while a campaign ({shards} senders, window "
            f"{concurrency} each) saturates the bot at 30/s; emulator with real limits, 50 ms (±10 ms) "
            "round trip")


async def main(args: argparse.Namespace) -> None:
    on, off = await compare(rate=args.rate, seconds=args.seconds, shards=args.shards,
                            concurrency=args.concurrency)
    print(table(title(args.rate, args.seconds, args.shards, args.concurrency), HEADER,
                [on.row("priority on (horizon 0.5 s)"), off.row("priority off")]))
    print(f"campaign users start at {FIRST_USER}; instant chats at {FIRST_INSTANT_CHAT}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30, help="how long instants are sent (<= 60)")
    parser.add_argument("--rate", type=float, default=2, help="instant notifications per second")
    parser.add_argument("--shards", type=int, default=SHARDS, help="campaign sender processes")
    parser.add_argument("--concurrency", type=int, default=WINDOW,
                        help="sends each campaign sender holds reserved or in flight")
    parsed = parser.parse_args()
    if not 0 < parsed.seconds <= 60:
        parser.error("--seconds must be in (0, 60]")
    asyncio.run(main(parsed))
