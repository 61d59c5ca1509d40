"""Webhook ingest: `clarion-webhook` (durable enqueue to Redis) beside aiogram's SimpleRequestHandler.

Both servers run as their own process, one worker each, on loopback; the same aiohttp load generator
(this process) sends them the same Telegram updates (private messages across 1,000 chats) with the
secret token:

1. closed loop: N updates, `--concurrency` in flight → updates/s, p50/p99 latency, server CPU-seconds;
2. open loop at `--rate` updates/s for `--seconds` against ours only → p50/p99/max latency measured
   from each update's scheduled send time (so a stall is not hidden by sending less).

aiogram handles each update inline (handle_in_background=False) with a trivial message handler, on
uvloop like uvicorn (so the loop is not the difference); ours
dedups and appends every update to its Redis stream before answering 200. Needs the local Postgres and
Redis (`bash scripts/local-services.sh start`); uses the database `clarion_bench_webhook` and Redis db 11.

    .venv/bin/python bench/webhook_ingest.py [--updates 20000] [--concurrency 64] [--rate 2000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from clarion.db import apply_migrations
from clarion_dev.net import free_port

TOKEN = "5555555:bench-token-aaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
SECRET = "bench-secret-token"
CHANNEL = "bench.ingest"
BASE_DSN = os.environ.get("CLARION_DATABASE_URL", "postgresql://clarion@127.0.0.1:55432/postgres")
BENCH_DB = "clarion_bench_webhook"
REDIS_URL = os.environ.get("CLARION_BENCH_REDIS_URL", "redis://127.0.0.1:56379/11")

AIOGRAM_SERVER = """
import sys
import uvloop
from aiohttp import web
from aiogram import Bot, Dispatcher, Router
from aiogram.types import Message
from aiogram.webhook.aiohttp_server import SimpleRequestHandler

router = Router()

@router.message()
async def trivial(message: Message) -> None:
    return None

dp = Dispatcher()
dp.include_router(router)
bot = Bot(sys.argv[2])
app = web.Application()
handler = SimpleRequestHandler(dp, bot, handle_in_background=False, secret_token=sys.argv[3])
handler.register(app, path="/hook")
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None,
            loop=uvloop.new_event_loop())
"""



def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def update_body(update_id: int) -> bytes:
    chat = 100_000 + update_id % 1000
    return json.dumps({"update_id": update_id, "message": {
        "message_id": update_id, "date": 1_700_000_000, "text": f"hello {update_id}",
        "chat": {"id": chat, "type": "private", "first_name": "U"},
        "from": {"id": chat, "is_bot": False, "first_name": "U", "language_code": "en"}}}).encode()


async def prepare_stores() -> None:
    admin = await asyncpg.connect(BASE_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{BENCH_DB}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(bench_dsn())
    try:
        await apply_migrations(conn)
        await conn.execute(
            """INSERT INTO channels (namespace, name, type, bot_id, webhook_secret_sha256, ready)
               VALUES ('bench', 'ingest', 'telegram', 5555555, $1, true)""",
            hashlib.sha256(SECRET.encode()).hexdigest())
    finally:
        await conn.close()
    await flush_redis()


async def flush_redis() -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


async def stream_length() -> int:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        total = 0
        async for key in client.scan_iter(match=f"tg:updates:{CHANNEL}:*"):
            total += int(await client.xlen(key))
        return total
    finally:
        await client.aclose()


def bench_dsn() -> str:
    return BASE_DSN.rpartition("/")[0] + "/" + BENCH_DB


def start_ours(port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CLARION_DATABASE_URL": bench_dsn(), "CLARION_REDIS_URL": REDIS_URL,
           "CLARION_LOG_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-m", "clarion_webhook.main", "--host", "127.0.0.1",
                             "--port", str(port)], env=env)


def start_aiogram(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", AIOGRAM_SERVER, str(port), TOKEN, SECRET])


async def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise TimeoutError(f"nothing listens on {port} after {timeout}s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def post_closed_loop(url: str, bodies: Sequence[bytes], headers: Mapping[str, str], concurrency: int,
                           *, ok: int, warm: bytes | None = None) -> dict[str, Any]:
    """POST every body with `concurrency` in flight (after one `warm` POST, untimed): the rate, p50/p99
    latency, and the answers other than `ok`."""
    latencies: list[float] = []
    errors = 0
    next_index = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:

        async def worker() -> None:
            nonlocal next_index, errors
            while next_index < len(bodies):
                body = bodies[next_index]
                next_index += 1
                started = time.perf_counter()
                async with http.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != ok:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        if warm is not None:
            (await http.post(url, data=warm, headers=headers)).release()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"rate": len(bodies) / elapsed, "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000, "errors": errors, "elapsed": elapsed}


async def post_open_loop(url: str, bodies: Sequence[bytes], rate: float, headers: Mapping[str, str], *,
                         ok: int, on_answer: Callable[[int, float, bytes], None] | None = None,
                         connections: int = 1000) -> tuple[list[float], int]:
    """POST body i at its scheduled time (start + i / rate) whatever came back before: the latencies
    from the scheduled times of the `ok` answers, and how many answers were not `ok`. `on_answer(i,
    scheduled time, answer body)` is called for each `ok` answer."""
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as http:
        start = time.monotonic() + 0.2

        async def one(index: int) -> None:
            nonlocal errors
            due = start + index / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            async with http.post(url, data=bodies[index], headers=headers) as resp:
                answer = await resp.read()
                if resp.status != ok:
                    errors += 1
                    return
            latencies.append(time.monotonic() - due)
            if on_answer is not None:
                on_answer(index, due, answer)

        await asyncio.gather(*(one(i) for i in range(len(bodies))))
    return latencies, errors


async def closed_loop(url: str, first_id: int, count: int, concurrency: int) -> dict[str, Any]:
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"}
    bodies = [update_body(first_id + i) for i in range(count)]
    return await post_closed_loop(url, bodies, headers, concurrency, ok=200, warm=update_body(first_id - 1))


async def open_loop(url: str, first_id: int, rate: float, seconds: float) -> dict[str, Any]:
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"}
    count = int(rate * seconds)
    bodies = [update_body(first_id + i) for i in range(count)]
    latencies: list[float] = []
    errors = 0
    # A pool of keep-alive connections like Telegram's max_connections; a request waiting for a free
    # connection still counts from its scheduled time.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as http:

        async def one(index: int, due: float) -> None:
            nonlocal errors
            try:
                async with http.post(url, data=bodies[index], headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append(time.perf_counter() - due)

        warm = await http.post(url, data=update_body(first_id - 1), headers=headers)
        warm.release()
        tasks = []
        start = time.perf_counter() + 0.05
        sent = 0
        while sent < count:  # every millisecond, start whatever has come due
            now = time.perf_counter()
            due_now = min(count, int((now - start) * rate) + 1) if now >= start else 0
            for i in range(sent, due_now):
                tasks.append(asyncio.create_task(one(i, start + i / rate)))
            sent = max(sent, due_now)
            await asyncio.sleep(0.001)
        await asyncio.gather(*tasks)
    return {"rate": rate, "count": count, "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000, "max_ms": max(latencies) * 1000, "errors": errors}


async def measure(name: str, start: Callable[[int], subprocess.Popen[bytes]], path: str,
                  args: argparse.Namespace, first_id: int) -> dict[str, Any]:
    port = free_port()
    process = start(port)
    try:
        await wait_listening(port, process)
        url = f"http://127.0.0.1:{port}{path}"
        cpu_before, own_before, (busy_before, total_before) = (_cpu_seconds(process.pid), _own_cpu_seconds(),
                                                               _machine_ticks())
        result = await closed_loop(url, first_id, args.updates, args.concurrency)
        busy, total = _machine_ticks()
        result["cpu_s"] = _cpu_seconds(process.pid) - cpu_before
        result["client_cpu_s"] = _own_cpu_seconds() - own_before
        result["busy"] = (busy - busy_before) / max(1, total - total_before)
        result["name"] = name
        if name.startswith("clarion"):
            busy_before, total_before = _machine_ticks()
            result["open"] = await open_loop(url, first_id + args.updates + 10, args.rate, args.seconds)
            busy, total = _machine_ticks()
            result["open"]["busy"] = (busy - busy_before) / max(1, total - total_before)
        return result
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=20_000, help="updates per closed-loop run (<= 200000)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (closed loop)")
    parser.add_argument("--rate", type=float, default=2000.0, help="open-loop rate, updates/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="open-loop duration (max 60)")
    args = parser.parse_args()
    args.updates = max(100, min(args.updates, 200_000))
    args.seconds = max(1.0, min(args.seconds, 60.0))
    await prepare_stores()
    try:
        aiogram = await measure("aiogram SimpleRequestHandler (inline, trivial handler)", start_aiogram,
                                "/hook", args, 1_000_000)
        ours = await measure("clarion-webhook (dedup + XADD to Redis)", start_ours,
                             f"/tg/webhook/{CHANNEL}", args, 2_000_000)
        stored = await stream_length()
    finally:
        await flush_redis()
    print(f"\nclosed loop: {args.updates} updates, {args.concurrency} in flight, loopback, 1 server process")
    print(f"{'server':58} {'updates/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'cpu s':>7} {'upd/cpu-s':>10} "
          f"{'errors':>7} {'client cpu s':>12} {'machine busy':>12}")
    for r in (aiogram, ours):
        print(f"{r['name']:58} {r['rate']:10.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['cpu_s']:7.2f} "
              f"{args.updates / max(r['cpu_s'], 1e-9):10.0f} {r['errors']:7d} {r['client_cpu_s']:12.2f} "
              f"{r['busy']:11.0%}")
    print("(cpu s: the server process; upd/cpu-s: updates per CPU-second of the server, what one free core "
          "would serve; machine busy: all CPUs, every process, during the run)")
    o = ours["open"]
    print(f"\nopen loop against clarion-webhook: {o['count']} updates at {o['rate']:.0f}/s "
          f"(latency from scheduled send time)")
    print(f"p50 {o['p50_ms']:.2f} ms   p99 {o['p99_ms']:.2f} ms   max {o['max_ms']:.2f} ms   "
          f"errors {o['errors']}   machine busy {o['busy']:.0%}")
    expected = args.updates + o["count"] + 2
    print(f"\nentries in Redis streams: {stored} (expected {expected}: every accepted update stored once)")
    print(f"ratio ours/aiogram (updates/s): {ours['rate'] / aiogram['rate']:.2f}")
    return 0 if stored == expected and not ours["errors"] and not o["errors"] else 1


if __name__ == "__main__":
    import uvloop

    raise SystemExit(uvloop.run(main()))
