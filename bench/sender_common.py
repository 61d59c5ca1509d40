"""Shared pieces of the sender benchmarks: a scratch database, the emulator as a process driven
through its control API, a campaign set up in Postgres, and `clarion-sender` processes.

Everything is on loopback; the database and the Redis db (13) are emptied before and after.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from clarion.db import apply_migrations, create_pool
from clarion.db import campaigns as q
from clarion.models import Audience, BroadcastCampaignSpec
from clarion_dev.net import free_port

BIN = Path(sys.executable).parent
BASE_DSN = os.environ.get("CLARION_DATABASE_URL", "postgresql://clarion@127.0.0.1:55432/postgres")
REDIS_URL = os.environ.get("CLARION_BENCH_REDIS_URL", "redis://127.0.0.1:56379/13")
TOKEN = "6060606:bench-sender-token-aaaaaaaaaaaaaaaaaaaa"
FIRST_USER = 100_000

EVERYONE = Audience(all_subscribers=True)



def dsn_for(database: str) -> str:
    return f"{BASE_DSN.rpartition('/')[0]}/{database}"


@asynccontextmanager
async def scratch_database(name: str) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    """A fresh migrated database and a pool on it; dropped afterwards."""
    admin = await asyncpg.connect(BASE_DSN)
    database = f"clarion_bench_{name}_{os.getpid()}"
    await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{database}"')
    dsn = dsn_for(database)
    conn = await asyncpg.connect(dsn)
    await apply_migrations(conn)
    await conn.close()
    pool = await create_pool(dsn, min_size=1, max_size=8)
    redis = aioredis.Redis.from_url(REDIS_URL)
    await redis.flushdb()
    try:
        yield dsn, pool
    finally:
        await pool.close()
        await redis.flushdb()
        await redis.aclose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


class EmulatorProcess:
    """`clarion dev telegram` in its own process, with one bot (TOKEN) registered."""

    def __init__(self, limits: str, latency_ms: float = 0.0, jitter_ms: float = 0.0) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.args = ["dev", "telegram", "--port", str(self.port), "--limits", limits, "--bot", TOKEN,
                     "--log-level", "WARNING"]
        if latency_ms:
            self.args += ["--latency-ms", str(latency_ms), "--jitter-ms", str(jitter_ms)]
        self.proc: asyncio.subprocess.Process | None = None
        self.http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> EmulatorProcess:
        self.proc = await asyncio.create_subprocess_exec(str(BIN / "clarion"), *self.args)
        self.http = aiohttp.ClientSession()
        deadline = time.monotonic() + 120
        while True:
            try:
                await self.control("GET", "health")
                return self
            except (aiohttp.ClientError, OSError):
                if time.monotonic() > deadline or self.proc.returncode is not None:
                    raise RuntimeError("the emulator did not start") from None
                await asyncio.sleep(0.2)

    async def __aexit__(self, *exc: object) -> None:
        if self.http is not None:
            await self.http.close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await self.proc.wait()

    async def control(self, method: str, path: str, body: dict[str, Any] | None = None,
                      params: dict[str, str] | None = None) -> Any:
        assert self.http is not None
        async with self.http.request(method, f"{self.base_url}/_emulator/{path}", json=body,
                                     params=params) as resp:
            reply = await resp.json()
        if not reply.get("ok"):
            raise RuntimeError(f"emulator control {path}: {reply}")
        return reply["result"]

    async def add_users(self, count: int, start_id: int = FIRST_USER) -> None:
        await self.control("POST", "users", {"count": count, "start_id": start_id})

    async def sent(self, since: int = 0) -> list[dict[str, Any]]:
        """The bot's sent messages from the `since`-th on (0: all), read page by page."""
        out: list[dict[str, Any]] = []
        while True:
            page = await self.control("GET", "sent", params={"token": TOKEN, "since": str(since),
                                                             "limit": "100000"})
            out.extend(page["messages"])
            since = page["next"]
            if since >= page["total"]:
                return out

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.control("GET", "stats", params={"token": TOKEN})
        return result

    async def reset(self) -> None:
        await self.control("POST", "reset")


async def make_campaign(pool: asyncpg.Pool, emulator: EmulatorProcess, *, users: int, shards: int,
                        rate_limits: Mapping[str, float], delivery: dict[str, Any], name: str) -> int:
    """A channel on the emulator's bot (once), `users` subscribers, and a campaign in Sending."""
    channel_id = await pool.fetchval("SELECT id FROM channels WHERE name = 'bench'")
    if channel_id is None:
        channel_id = await pool.fetchval(
            """INSERT INTO channels (namespace, name, type, bot_id, api_base_url, config, ready)
               VALUES ('bench', 'bench', 'telegram', $1, $2, $3, true) RETURNING id""",
            int(TOKEN.split(":")[0]), emulator.base_url, {"rateLimits": dict(rate_limits)},
        )
    else:
        await pool.execute("UPDATE channels SET config = $2 WHERE id = $1", channel_id,
                           {"rateLimits": dict(rate_limits)})
    await pool.execute(
        """INSERT INTO subscribers (channel_id, chat_id, language)
           SELECT $1, g, 'en' FROM generate_series($2::bigint, $3::bigint) g ON CONFLICT DO NOTHING""",
        channel_id, FIRST_USER, FIRST_USER + users - 1,
    )
    spec = BroadcastCampaignSpec.model_validate({
        "channelRef": {"name": "bench"}, "message": {"text": "Benchmark broadcast"},
        "audience": {"allSubscribers": True}, "delivery": delivery}).to_k8s()
    async with pool.acquire() as conn, conn.transaction():
        campaign_id: int = await conn.fetchval(
            """INSERT INTO campaigns (namespace, name, uid, channel_id, spec, message_hash, phase, shards)
               VALUES ('bench', $1, $1 || '-' || gen_random_uuid(), $2, $3, 'h', 'Sending', $4)
               RETURNING id""",
            name, channel_id, spec, shards,
        )
        total = await q.snapshot_audience(conn, campaign_id, channel_id, EVERYONE, shards)
    await q.analyze_after_snapshot(pool, total)  # as the operator does
    return campaign_id


@dataclass
class SenderRun:
    """Wall time from launch to exit, the senders' own CPU while sending (from their stop lines),
    and the CPU the Postgres backends serving this database used meanwhile."""

    wall: float
    sender_cpu: float
    postgres_cpu: float


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return -1.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_senders(dsn: str, campaign_id: int, shards: int, pool: asyncpg.Pool, **env: str) -> SenderRun:
    """Run one `clarion-sender campaign` per shard to the end."""
    base = {**os.environ, "CLARION_DATABASE_URL": dsn, "CLARION_REDIS_URL": REDIS_URL,
            "CLARION_BOT_TOKEN": TOKEN, "CLARION_CAMPAIGN_ID": str(campaign_id),
            "CLARION_LOG_LEVEL": "INFO", "CLARION_LOG_FORMAT": "json", **env}
    database = dsn.rpartition("/")[2]
    started = time.monotonic()
    procs = [await asyncio.create_subprocess_exec(
        str(BIN / "clarion-sender"), "campaign", stderr=asyncio.subprocess.PIPE,
        env={**base, "JOB_COMPLETION_INDEX": str(shard), "CLARION_POD_NAME": f"bench-{shard}"})
        for shard in range(shards)]
    outputs = [asyncio.create_task(proc.communicate()) for proc in procs]
    backends: dict[int, float] = {}
    own = await pool.fetchval("SELECT array_agg(pid) FROM pg_stat_activity WHERE datname = $1", database)
    while not all(o.done() for o in outputs):
        for row in await pool.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database):
            if row["pid"] not in (own or []):
                used = _cpu_seconds(row["pid"])
                if used >= 0:
                    backends[row["pid"]] = used
        await asyncio.wait(outputs, timeout=0.2)
    wall = time.monotonic() - started
    cpu = 0.0
    for proc, output in zip(procs, outputs, strict=True):
        _, err = output.result()
        if proc.returncode:
            raise RuntimeError(f"a sender failed ({proc.returncode}):\n{err.decode()[-2000:]}")
        for line in err.decode().splitlines():
            if '"sender.stop"' in line:
                cpu += float(json.loads(line)["cpu_seconds"])
    return SenderRun(wall, cpu, sum(backends.values()))


def span(messages: list[dict[str, Any]]) -> float:
    """Seconds from the first accepted message to the last, on the emulator's clock."""
    times = [float(m["at"]) for m in messages]
    return max(times) - min(times)


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    cells = [header, *[[f"{c:,.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells[1:]]
    return "\n".join(lines)
