"""Capacity of the Telegram emulator itself: sendMessage calls per second with limits off.

Besides the wall-clock rate (which depends on what else the machine runs), it reports requests per
CPU-second of the emulator process: what one free core could serve.

The emulator runs as its own process (`clarion dev telegram --limits off`); this process drives it
with bare aiohttp (form bodies, as aiogram sends them) and, with --aiogram, through aiogram's Bot.

    .venv/bin/python bench/emulator_capacity.py [--seconds 5] [--concurrency 64] [--aiogram]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time

import aiohttp
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from clarion_dev.net import free_port

TOKEN = "5555555:bench-token-aaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
USERS = 1000
START_ID = 100_000


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")



async def _drive_aiohttp(base: str, seconds: float, concurrency: int) -> int:
    url = f"{base}/bot{TOKEN}/sendMessage"
    deadline = time.monotonic() + seconds
    done = 0

    async def worker(offset: int, http: aiohttp.ClientSession) -> None:
        nonlocal done
        i = offset
        while time.monotonic() < deadline:
            data = {"chat_id": str(START_ID + i % USERS), "text": "capacity check"}
            async with http.post(url, data=data) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"unexpected status {resp.status}")
            done += 1
            i += concurrency

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(worker(k, http) for k in range(concurrency)))
    return done


async def _drive_aiogram(base: str, seconds: float, concurrency: int) -> int:
    bot = Bot(TOKEN, session=AiohttpSession(api=TelegramAPIServer.from_base(base), limit=concurrency))
    deadline = time.monotonic() + seconds
    done = 0

    async def worker(offset: int) -> None:
        nonlocal done
        i = offset
        while time.monotonic() < deadline:
            await bot.send_message(START_ID + i % USERS, "capacity check")
            done += 1
            i += concurrency

    try:
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    finally:
        await bot.session.close()
    return done


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--aiogram", action="store_true", help="drive it through aiogram's Bot")
    args = parser.parse_args()
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from clarion_dev.cli import main; sys.exit(main(sys.argv[1:]))",
        "dev", "telegram", "--port", str(port), "--limits", "off", "--bot", TOKEN,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    try:
        event = json.loads(await asyncio.wait_for(proc.stderr.readline(), 30))
        base = event["url"]
        async with aiohttp.ClientSession() as http:
            await http.post(f"{base}/_emulator/users", json={"count": USERS, "start_id": START_ID})
        drive = _drive_aiogram if args.aiogram else _drive_aiohttp
        await drive(base, 1.0, args.concurrency)
        cpu_before = _cpu_seconds(proc.pid)
        started = time.monotonic()
        done = await drive(base, args.seconds, args.concurrency)
        elapsed = time.monotonic() - started
        cpu = _cpu_seconds(proc.pid) - cpu_before
        client = "aiogram Bot" if args.aiogram else "bare aiohttp"
        print(f"emulator capacity (limits off, client: {client}, concurrency {args.concurrency}): "
              f"{done} sendMessage in {elapsed:.2f}s = {done / elapsed:,.0f}/s wall; "
              f"emulator used {cpu:.2f} CPU-s = {done / cpu:,.0f} sendMessage per CPU-second; "
              f"load average {os.getloadavg()[0]:.1f}")
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)


if __name__ == "__main__":
    asyncio.run(main())
