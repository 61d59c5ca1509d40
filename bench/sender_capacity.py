"""Sender capacity per process with limits off, beside a bare aiogram `Bot.send_message` loop.

Both send N messages to the same emulator process (`--limits off`, no latency) with the same
concurrency window; the bare loop runs in this process, the sender as one `clarion-sender campaign`
process doing everything it does in production: claims in Postgres, a Redis limiter reservation per
batch, the send, and recording each result in Postgres. Rates are N over the span between the first
and the last message the emulator accepted (process start-up, mostly importing aiogram, is left out
and printed separately). Goal (DESIGN §7): sender >= 0.8 x the bare loop.

    .venv/bin/python bench/sender_capacity.py [--messages 20000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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

NO_LIMITS = {"globalPerSecond": 1_000_000, "perChatPerSecond": 1_000_000, "perGroupPerMinute": 1_000_000,
             "paidBroadcastPerSecond": 1_000_000}


async def bare_loop(emulator: EmulatorProcess, messages: int, concurrency: int) -> None:
    """aiogram's Bot.send_message from `concurrency` tasks, nothing else."""
    session = AiohttpSession(api=TelegramAPIServer.from_base(emulator.base_url), limit=concurrency + 8)
    bot = Bot(TOKEN, session=session)
    chats = iter(range(FIRST_USER, FIRST_USER + messages))

    async def worker() -> None:
        for chat in chats:
            await bot.send_message(chat_id=chat, text="Benchmark broadcast")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await session.close()


async def main(messages: int, concurrency: int, rounds: int) -> None:
    rows: list[list[object]] = []
    async with scratch_database("capacity") as (dsn, pool), EmulatorProcess("off") as emulator:
        await emulator.add_users(messages)
        for round_ in range(rounds):
            await emulator.control("POST", "limits", {"limits": "off"})
            await emulator.reset()
            await emulator.add_users(messages)
            started, cpu = time.monotonic(), time.process_time()
            await bare_loop(emulator, messages, concurrency)
            wall, cpu = time.monotonic() - started, time.process_time() - cpu
            sent = await emulator.sent()
            assert len(sent) == messages, f"bare loop: {len(sent)} of {messages} accepted"
            bare_rate = messages / span(sent)
            bare_per_cpu = messages / cpu
            rows.append([f"bare aiogram loop #{round_ + 1}", messages, round(span(sent), 3), round(bare_rate),
                         "-", round(bare_per_cpu), "-", "-", round(wall, 3)])

            await emulator.reset()
            await emulator.add_users(messages)
            campaign = await make_campaign(pool, emulator, users=messages, shards=1, rate_limits=NO_LIMITS,
                                           delivery={"batchSize": 1000}, name=f"capacity-{round_}")
            run = await run_senders(dsn, campaign, 1, pool, CLARION_SENDER_CONCURRENCY=str(concurrency))
            sent = await emulator.sent()
            recorded = await pool.fetchval(
                "SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND status = 'sent'", campaign)
            assert len(sent) == messages == recorded, f"sender: {len(sent)} accepted, {recorded} recorded"
            rate = messages / span(sent)
            per_cpu = messages / run.sender_cpu
            rows.append([f"clarion-sender #{round_ + 1}", messages, round(span(sent), 3), round(rate),
                         f"{rate / bare_rate:.2f}", round(per_cpu), f"{per_cpu / bare_per_cpu:.2f}",
                         round(run.postgres_cpu / messages * 1e6), round(run.wall, 3)])
    print(table(f"Sender capacity, limits off, window {concurrency} (msgs/s over the emulator's "
                "first-to-last span; msgs per CPU-second of the sending process)",
                ["run", "messages", "span s", "msgs/s", "vs bare", "msgs/CPU-s", "vs bare",
                 "Postgres CPU us/msg", "wall s (incl. start-up)"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.concurrency, args.rounds))
