"""The notification API and worker: durable accept rate and latency, and accept-to-Telegram latency.

`clarion-webhook` runs as its own process (one uvicorn worker) on the local Postgres and Redis; this
process is the load generator (aiohttp, loopback). Side by side in one run:

1. closed loop, `--count` POSTs with `--concurrency` in flight → accepted/s, p50/p99, the server's
   CPU-seconds; beside it the floor of the same durable work done without HTTP or checks: one INSERT of
   the same row (asyncpg, the same concurrency) and one XADD, from this process (the peer);
2. open loop at `--rate` POSTs/s for `--seconds` → p50/p99/max from each request's scheduled time;
3. end to end at `--e2e-rate`/s for `--seconds` with a `clarion-worker` process and the Telegram
   emulator (its own process, limits off): from the POST's scheduled time to the emulator accepting
   the message (both stamp CLOCK_MONOTONIC, one clock for every process here) → p50/p99.

Goals (docs/notifications.md): ≥ 2,000 accepted/s per API process, p99 ≤ 25 ms at 1,000/s, end to end
p99 ≤ 250 ms at 200/s. Uses a scratch database and Redis db 13 (`bench.sender_common`).

    .venv/bin/python bench/notifications.py [--count 5000] [--concurrency 64] [--rate 1000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from clarion.db import api_keys as keys
from clarion.db import notifications as q
from clarion.models import ApiKeySecret
from clarion.streams import NotificationTask
from clarion_dev.net import free_port

from bench.sender_common import REDIS_URL, TOKEN, EmulatorProcess, scratch_database, table
from bench.webhook_ingest import _cpu_seconds, percentile, wait_listening

API_KEY = "bench-" + "k" * 40
BIN = Path(sys.executable).parent
FIRST_CHAT = 100_000
CHATS = 1000


async def prepare(pool: asyncpg.Pool, emulator_url: str) -> int:
    """The channel on the emulator's bot, with limits lifted, and the API key; the channel's id."""
    channel_id: int = await pool.fetchval(
        """INSERT INTO channels (namespace, name, type, bot_id, api_base_url, config, ready)
           VALUES ('bench', 'alerts', 'telegram', $1, $2, $3, true) RETURNING id""",
        int(TOKEN.split(":")[0]), emulator_url,
        {"rateLimits": {"globalPerSecond": 100_000, "perChatPerSecond": 1000}})
    await keys.sync_api_key(pool, ApiKeySecret(
        namespace="bench", name="load", uid="bench-uid", channels=("*",),
        key_sha256=hashlib.sha256(API_KEY.encode()).hexdigest()))
    return channel_id


def body(i: int) -> bytes:
    return json.dumps({"channel": "bench/alerts", "recipient": {"chatId": FIRST_CHAT + i % CHATS},
                       "content": {"text": f"Order {i} shipped"}, "reference": f"r{i}"}).encode()


HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


async def closed_loop(url: str, count: int, concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    next_index = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        async def worker() -> None:
            nonlocal next_index, errors
            while next_index < count:
                index = next_index
                next_index += 1
                started = time.perf_counter()
                async with http.post(url, data=body(index), headers=HEADERS) as resp:
                    await resp.read()
                    errors += resp.status != 202
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"rate": count / elapsed, "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000, "errors": errors}


async def open_loop(url: str, rate: float, seconds: float,
                    first: int) -> tuple[list[float], list[str], int]:
    """POST at `rate`/s: latencies from each scheduled time, "<id> <scheduled time>" of each accepted one,
    errors."""
    total = int(rate * seconds)
    latencies: list[float] = []
    accepted: list[str] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000)) as http:
        start = time.monotonic() + 0.2

        async def one(index: int) -> None:
            nonlocal errors
            due = start + index / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            async with http.post(url, data=body(first + index), headers=HEADERS) as resp:
                answer = await resp.read()
                if resp.status != 202:
                    errors += 1
                    return
            latencies.append(time.monotonic() - due)
            accepted.append(f"{json.loads(answer)['id']} {due!r}")

        await asyncio.gather(*(one(i) for i in range(total)))
    return latencies, accepted, errors


async def durable_floor(dsn: str, channel_id: int, count: int, concurrency: int) -> float:
    """The same row INSERTed and its id XADDed, with no HTTP and no checks: rows/s."""
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    redis = aioredis.Redis.from_url(REDIS_URL, max_connections=concurrency)
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            next_index += 1
            new = q.NewNotification(id=uuid.uuid4(), channel_id=channel_id, lane="bulk", recipient="1",
                                    content={"text": "x"}, reference=None, api_key_id=None,
                                    trace_id=os.urandom(16).hex(), scheduled_for=None, max_attempts=3)
            async with pool.acquire() as conn:
                await conn.execute(
                    """INSERT INTO notifications (id, channel_id, lane, recipient, content, trace_id,
                                                enqueued_at)
                       VALUES ($1, $2, $3, $4, $5::jsonb, $6, now())""",
                    new.id, new.channel_id, new.lane, new.recipient, json.dumps(new.content), new.trace_id)
            task = NotificationTask(notification_id=str(new.id), trace_id=new.trace_id)
            await redis.xadd("bench:floor", task.to_fields())  # type: ignore[arg-type]

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        rate = count / (time.perf_counter() - started)
        await pool.execute("DELETE FROM notifications WHERE recipient = '1'")  # not for the worker
        return rate
    finally:
        await pool.close()
        await redis.aclose()


async def main(args: argparse.Namespace) -> None:
    async with scratch_database("notifications") as (dsn, pool), EmulatorProcess("off") as emulator:
        await emulator.add_users(CHATS, FIRST_CHAT)
        channel_id = await prepare(pool, emulator.base_url)
        port = free_port()
        env = {**os.environ, "CLARION_DATABASE_URL": dsn, "CLARION_REDIS_URL": REDIS_URL,
               "CLARION_LOG_LEVEL": "WARNING"}
        server = subprocess.Popen([sys.executable, "-m", "clarion_webhook.main", "--host", "127.0.0.1",
                                   "--port", str(port)], env=env)
        worker: subprocess.Popen[bytes] | None = None
        try:
            await wait_listening(port, server)
            url = f"http://127.0.0.1:{port}/api/v1/notifications"
            await closed_loop(url, 200, 8)  # warm up
            cpu = _cpu_seconds(server.pid)
            closed = await closed_loop(url, args.count, args.concurrency)
            closed["cpu"] = _cpu_seconds(server.pid) - cpu
            floor = await durable_floor(dsn, channel_id, args.count, args.concurrency)
            open_latencies, _, open_errors = await open_loop(url, args.rate, args.seconds, 10_000_000)

            # end to end: the worker drains what the runs above queued, then takes the timed traffic
            worker = subprocess.Popen([str(BIN / "clarion-worker"), "--channel", "bench.alerts"], env={
                **env, "CLARION_BOT_TOKEN": TOKEN, "CLARION_WORKER_CONCURRENCY": "64"})
            backlog = await pool.fetchval("SELECT count(*) FROM notifications")
            drain_started = time.monotonic()
            unsettled = "SELECT count(*) FROM notifications WHERE status IN ('created', 'queued', 'sending')"
            while await pool.fetchval(unsettled):
                await asyncio.sleep(0.1)
            drain_rate = backlog / (time.monotonic() - drain_started)
            before = len(await emulator.sent())
            _, accepted, e2e_errors = await open_loop(url, args.e2e_rate, args.seconds, 20_000_000)
            due = {line.split()[0]: float(line.split()[1]) for line in accepted}
            await asyncio.sleep(2.0)
            sent = (await emulator.sent())[before:]
        finally:
            for proc in (worker, server):
                if proc is not None:
                    proc.terminate()
                    proc.wait(30)
        rows = await pool.fetch(
            "SELECT id::text, recipient, provider_message_id FROM notifications WHERE id = ANY($1::uuid[])",
            list(due))
    # Telegram's message ids count per chat: a message is (chat, id)
    at_by_message = {(str(m["chat_id"]), str(m["message_id"])): float(m["at"]) for m in sent}
    e2e = [at_by_message[(r["recipient"], r["provider_message_id"])] - due[r["id"]] for r in rows
           if (r["recipient"], r["provider_message_id"]) in at_by_message]
    print(table(f"Notification API, one clarion-webhook process, {args.concurrency} in flight, loopback",
                ["measure", "value", "goal"], [
                    ["accepted/s, durable (closed loop)", round(closed["rate"]), ">= 2,000"],
                    ["  p50 / p99 ms", f"{closed['p50_ms']:.1f} / {closed['p99_ms']:.1f}", "-"],
                    ["  server CPU-s per 1,000 accepted", round(closed["cpu"] / args.count * 1000, 3), "-"],
                    ["  errors", closed["errors"], "0"],
                    ["peer: INSERT + XADD floor, rows/s", round(floor), "-"],
                    [f"open loop {args.rate:g}/s: p50 / p99 / max ms",
                     f"{percentile(open_latencies, 0.5) * 1000:.1f} / "
                     f"{percentile(open_latencies, 0.99) * 1000:.1f} / {max(open_latencies) * 1000:.1f}",
                     "p99 <= 25"],
                    ["  errors", open_errors, "0"],
                    [f"accept -> emulator at {args.e2e_rate:g}/s: p50 / p99 ms",
                     f"{percentile(e2e, 0.5) * 1000:.1f} / {percentile(e2e, 0.99) * 1000:.1f}", "p99 <= 250"],
                    ["  delivered / accepted", f"{len(e2e)} / {len(due)} (errors {e2e_errors})", "all"],
                    ["worker: backlog drained, notifications/s (one process)", round(drain_rate), "-"],
                ]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--e2e-rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=5)
    asyncio.run(main(parser.parse_args()))
