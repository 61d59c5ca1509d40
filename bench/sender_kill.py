"""What a SIGKILLed sender costs a broadcast: the same campaign (900 recipients at the real 30 msg/s
limit, 2 shards, emulator with a 50 ms ±10 ms round trip) run twice, once undisturbed and once with
the sender of shard 0 SIGKILLed `--kills` times `--interval` seconds apart, its replacement (a new
pod name, as the Job controller would create) started at once. Claim leases are 60 s (the default
is 15 s), so a replacement that waited out its predecessor's lease would show.

Broadcast time is the span from the first to the last message the emulator accepted plus one slot.
The figure is (killed run - clean run) / kills, goal <= 3 s. "lost" counts recipients who got no
message, "duplicates" messages beyond one per recipient.

    .venv/bin/python bench/sender_kill.py [--messages 900] [--kills 3] [--interval 6]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from bench.sender_common import (
    BIN,
    REDIS_URL,
    TOKEN,
    EmulatorProcess,
    make_campaign,
    scratch_database,
    span,
    table,
)

TELEGRAM = {"globalPerSecond": 30, "perChatPerSecond": 1, "perGroupPerMinute": 20,
            "paidBroadcastPerSecond": 1000}
RATE = 30.0
SHARDS = 2


@dataclass(frozen=True)
class Run:
    broadcast: float  # first to last accepted message, plus one slot
    lost: int
    duplicates: int
    too_many: int  # 429s
    recorded: int  # deliveries recorded sent
    wall: float  # launch of the senders to the last exit
    kill_at: list[float]  # seconds after the first accepted message


async def _sender(dsn: str, campaign_id: int, shard: int, pod: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(BIN / "clarion-sender"), "campaign", stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "CLARION_DATABASE_URL": dsn, "CLARION_REDIS_URL": REDIS_URL,
             "CLARION_BOT_TOKEN": TOKEN, "CLARION_CAMPAIGN_ID": str(campaign_id),
             "CLARION_LOG_LEVEL": "WARNING", "CLARION_LOG_FORMAT": "json",
             "JOB_COMPLETION_INDEX": str(shard), "CLARION_POD_NAME": pod,
             "CLARION_CLAIM_LEASE_SECONDS": "60"})


async def broadcast(label: str, emulator: EmulatorProcess, dsn: str, pool: asyncpg.Pool, messages: int,
                    kills: int, interval: float) -> Run:
    await emulator.reset()
    await emulator.add_users(messages)
    campaign = await make_campaign(pool, emulator, users=messages, shards=SHARDS, rate_limits=TELEGRAM,
                                   delivery={"batchSize": 100}, name=label)
    procs = [await _sender(dsn, campaign, shard, f"bench-{shard}-0") for shard in range(SHARDS)]
    readers = {id(p): asyncio.create_task(p.communicate()) for p in procs}
    launched = time.monotonic()
    kill_at: list[float] = []
    while kills and not await emulator.sent():
        await asyncio.sleep(0.05)
    first = time.monotonic()
    for n in range(1, kills + 1):
        # Each kill at its time, and only once the victim holds claims (a replacement needs seconds
        # of CPU to start: killing it before it claims anything would cost nothing).
        pod = f"bench-0-{n - 1}"
        while time.monotonic() < first + n * interval or not await pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM deliveries WHERE campaign_id = $1 AND status = 'sending'"
                " AND claimed_by = $2)", campaign, pod):
            if procs[0].returncode is not None:
                raise RuntimeError(f"the sender of shard 0 had already exited before kill {n}")
            await asyncio.sleep(0.05)
        procs[0].kill()
        kill_at.append(time.monotonic() - first)
        await readers[id(procs[0])]
        procs[0] = await _sender(dsn, campaign, 0, f"bench-0-{n}")  # the Job's replacement pod
        readers[id(procs[0])] = asyncio.create_task(procs[0].communicate())
    for proc in procs:
        _, err = await readers[id(proc)]
        if proc.returncode:
            raise RuntimeError(f"a sender failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    wall = time.monotonic() - launched
    sent = await emulator.sent()
    stats = await emulator.stats()
    per_chat = Counter(m["chat_id"] for m in sent)
    settled = await pool.fetchval(
        "SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND status = 'sent'", campaign)
    return Run(broadcast=span(sent) + 1 / RATE, lost=messages - len(per_chat),
               duplicates=len(sent) - len(per_chat), too_many=stats["too_many_requests"], recorded=settled,
               wall=wall, kill_at=kill_at)


async def main(messages: int, kills: int, interval: float) -> None:
    async with scratch_database("kill") as (dsn, pool), \
            EmulatorProcess("real", latency_ms=50, jitter_ms=10) as emulator:
        clean = await broadcast("clean", emulator, dsn, pool, messages, 0, interval)
        killed = await broadcast("killed", emulator, dsn, pool, messages, kills, interval)
    rows: list[list[object]] = []
    for label, run, n in (("no kill", clean, 0), (f"{kills} SIGKILLs {interval:g} s apart", killed, kills)):
        rows.append([label, messages, n, round(messages / RATE, 3), round(run.broadcast, 3), run.lost,
                     run.duplicates, run.too_many, run.recorded, round(run.wall, 1),
                     " ".join(f"{t:.1f}" for t in run.kill_at) or "-"])
    print(table(f"A SIGKILLed sender: {messages} messages at {RATE:g}/s, {SHARDS} shards, "
                "emulator with real limits and a 50 ms (±10 ms) round trip",
                ["run", "messages", "kills", "ideal s", "broadcast s", "lost", "duplicates", "429s",
                 "recorded sent", "launch-to-exit s", "kills at s"], rows))
    if kills:
        per_kill = (killed.broadcast - clean.broadcast) / kills
        print(f"one SIGKILL costs {per_kill:.3f} s of broadcast time (goal <= 3 s); "
              f"lost {killed.lost}, duplicates {killed.duplicates}; kills at s after the first message")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=900, help="recipients of each run")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs of shard 0's sender in the second run")
    parser.add_argument("--interval", type=float, default=6.0, help="seconds between kills (first at this)")
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.kills, args.interval))
