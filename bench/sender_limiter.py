"""Decisions per second of the shared Redis rate limiter (`clarion.telegram.limiter`).

- one chat per call, one call at a time (the round trip bounds it);
- one chat per call, 32 calls in flight;
- 64 chats per call (how the sender asks: one call per chunk of its window);
- Redis's own time per script call, from INFO commandstats (the server-side cost).

Limits are set high so that no decision waits; nothing is sent anywhere.

    .venv/bin/python bench/sender_limiter.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as aioredis
from clarion.telegram.limiter import RateLimiter, RateLimits

from bench.sender_common import REDIS_URL, table

HIGH = RateLimits(global_per_second=10_000_000, per_chat_per_second=1_000_000,
                  per_group_per_minute=1_000_000, paid_broadcast_per_second=10_000_000)


async def measure(limiter: RateLimiter, seconds: float, in_flight: int, per_call: int) -> float:
    deadline = time.monotonic() + seconds
    decisions = 0

    async def worker(offset: int) -> None:
        nonlocal decisions
        chat = offset * 10_000_000
        while time.monotonic() < deadline:
            await limiter.reserve(list(range(chat, chat + per_call)))
            chat += per_call
            decisions += per_call

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(in_flight)))
    return decisions / (time.monotonic() - started)


async def script_usec(redis: aioredis.Redis) -> tuple[float, int]:
    stats = await redis.info("commandstats")
    entry = stats.get("cmdstat_evalsha", {})
    return float(entry.get("usec", 0)), int(entry.get("calls", 0))


async def main(seconds: float) -> None:
    redis = aioredis.Redis.from_url(REDIS_URL, max_connections=64)
    await redis.flushdb()
    limiter = RateLimiter(redis, 777, HIGH)
    rows: list[list[object]] = []
    try:
        for label, in_flight, per_call in [("1 chat/call, sequential", 1, 1),
                                           ("1 chat/call, 32 in flight", 32, 1),
                                           ("64 chats/call, 4 in flight", 4, 64)]:
            await limiter.reserve([1])  # loads the script
            await redis.config_resetstat()
            rate = await measure(limiter, seconds, in_flight, per_call)
            usec, calls = await script_usec(redis)
            rows.append([label, round(rate), round(usec / max(calls, 1), 1),
                         round(usec / max(calls, 1) / per_call, 2)])
    finally:
        await redis.flushdb()
        await redis.aclose()
    print(table("Limiter decisions (one decision = one chat's slot)",
                ["how", "decisions/s (client)", "Redis us/call", "Redis us/decision"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    asyncio.run(main(args.seconds))
