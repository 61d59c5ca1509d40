"""Rate precision of two sender processes sharing one bot, against the emulator enforcing Telegram's
real limits with a 50 ms round trip (±10 ms jitter).

- free broadcast: N messages at the 30 msg/s limit (goal: wall time <= 1.02 x N / 30, zero 429);
- paid broadcast: N messages at 1000 msg/s over two processes (goal: <= 1.05 x N / 1000, zero 429);
- for contrast, a naive sequential sender (one `await bot.send_message` after another), which at a
  50 ms round trip cannot pass 20 msg/s whatever the limit.

The wall time of a broadcast is the span between the first and the last message the emulator
accepted plus one slot (N slots take N / rate); process start-up (mostly importing aiogram) is
printed separately. "nothing lost" means every recipient got exactly one message and Postgres
records every delivery as sent.

    .venv/bin/python bench/sender_rate.py [--free 600] [--paid 5000] [--naive 60]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer

from bench.sender_common import (
    FIRST_USER,
    TOKEN,
    EmulatorProcess,
    make_campaign,
    run_senders,
    scratch_database,
    span,
    table,
)

TELEGRAM = {"globalPerSecond": 30, "perChatPerSecond": 1, "perGroupPerMinute": 20,
            "paidBroadcastPerSecond": 1000}


async def broadcast(label: str, emulator: EmulatorProcess, dsn: str, pool: asyncpg.Pool, messages: int,
                    rate: float, paid: bool, goal: float) -> list[object]:
    await emulator.reset()
    await emulator.add_users(messages)
    campaign = await make_campaign(pool, emulator, users=messages, shards=2, rate_limits=TELEGRAM,
                                   delivery={"batchSize": 100, "paidBroadcast": paid}, name=label)
    run = await run_senders(dsn, campaign, 2, pool)
    sent = await emulator.sent()
    stats = await emulator.stats()
    recorded = await pool.fetchval(
        "SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND status = 'sent'", campaign)
    per_chat = Counter(m["chat_id"] for m in sent)
    lost = messages - len(per_chat)
    duplicates = len(sent) - len(per_chat)
    wall = span(sent) + 1 / rate
    ideal = messages / rate
    return [label, messages, rate, round(ideal, 3), round(wall, 3), f"{wall / ideal:.4f}", f"<= {goal}",
            stats["too_many_requests"], lost, duplicates, recorded, round(run.wall, 1)]


async def naive(emulator: EmulatorProcess, messages: int) -> list[object]:
    """One send after another: what many broadcast scripts do to stay under the limit."""
    await emulator.reset()
    await emulator.add_users(messages)
    session = AiohttpSession(api=TelegramAPIServer.from_base(emulator.base_url))
    bot = Bot(TOKEN, session=session)
    started = time.monotonic()
    for chat in range(FIRST_USER, FIRST_USER + messages):
        await bot.send_message(chat_id=chat, text="Benchmark broadcast")
    wall = time.monotonic() - started
    await session.close()
    stats = await emulator.stats()
    return ["naive sequential loop", messages, round(messages / wall, 1), "-", round(wall, 3), "-", "-",
            stats["too_many_requests"], 0, 0, "-", "-"]


async def main(free: int, paid: int, naive_n: int) -> None:
    rows: list[list[object]] = []
    async with scratch_database("rate") as (dsn, pool), \
            EmulatorProcess("real", latency_ms=50, jitter_ms=10) as emulator:
        if free:
            rows.append(await broadcast("free, 2 senders", emulator, dsn, pool, free, 30, False, 1.02))
        if paid:
            rows.append(await broadcast("paid, 2 senders", emulator, dsn, pool, paid, 1000, True, 1.05))
        if naive_n:
            rows.append(await naive(emulator, naive_n))
    print(table("Broadcast rate precision: emulator with real limits, 50 ms (±10 ms) round trip",
                ["run", "messages", "limit/s", "ideal s", "wall s", "ratio", "goal", "429s", "lost",
                 "duplicates", "recorded sent", "launch-to-exit s"], rows))
    print("naive row: limit/s column shows the achieved msgs/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--free", type=int, default=600, help="messages at 30/s (>= 600; 0 skips the run)")
    parser.add_argument("--paid", type=int, default=5000, help="messages at 1000/s (0 skips the run)")
    parser.add_argument("--naive", type=int, default=60,
                        help="messages for the naive sequential loop (0 skips it)")
    args = parser.parse_args()
    asyncio.run(main(args.free, args.paid, args.naive))
