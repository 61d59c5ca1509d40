"""Issue 16's figure: group-activity updates/s absorbed by one bot process, and the Postgres writes they cost.

One `clarion-bot` process (as its Deployment runs it) on the local Postgres (a scratch database) and
Redis (db of `CLARION_BENCH_REDIS_URL`, default 13, emptied); the Telegram emulator in this process (the
bot calls it for nothing here). A bounded burst of `message` updates (`--count`, default 20,000, from
`--members`, default 2,000, members round robin) is put straight onto the channel's update stream as
the webhook stores them (`clarion.streams.update_envelope_fields`; the webhook's own rate is
bench/webhook_ingest.py), then timed until the bot has read and acknowledged every entry:

1. the peer: the same burst in a group the channel does not manage (looked up, cached 5 s, no handler:
   each entry acknowledged on its own) — the consumer's floor on this machine;
2. the figure: the burst in a managed group: every update recorded in the activity buffer, flushed in
   one statement per flush (`clarion_group_activity_flushes_total`, scraped from the bot's /metrics),
   entries acknowledged after the flush that covers them (clarion_bot.activity).

"Postgres transactions" is the scratch database's `pg_stat_database.xact_commit` over the burst
(every statement outside a transaction is one): the group look-ups and the flushes, nothing per message.

    .venv/bin/python bench/group_activity.py [--count 20000] [--members 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clarion.streams import (
    BOT_GROUP,
    DEFAULT_PARTITIONS,
    partition_lease_key,
    update_envelope_fields,
    update_partition,
    updates_stream,
)
from clarion_dev.net import free_port
from clarion_dev.telegram import Emulator

from bench.sender_common import BIN, REDIS_URL, scratch_database, table

NAMESPACE, NAME = "bench", "groups"
KEY = f"{NAMESPACE}.{NAME}"
MANAGED = -100_9101
PEER = -100_9102
FIRST_MEMBER = 900_000
METRICS = ("clarion_group_activity_updates_total", "clarion_group_activity_flushes_total",
           "clarion_bot_updates_handled_total")


async def scrape(http: httpx.AsyncClient) -> dict[str, float]:
    text = (await http.get("/metrics")).text
    values = dict.fromkeys(METRICS, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in values:
                values[sample.name] += sample.value
    return values


async def transactions(pool: Any) -> int:
    await asyncio.sleep(1.5)  # backends report their counts to the statistics at most once a second
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        value: int = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    return value


def burst(chat_id: int, title: str, first_update: int, count: int, members: int) -> list[dict[str, bytes]]:
    now = int(time.time())
    chat = {"id": chat_id, "type": "supergroup", "title": title}
    entries = []
    for n in range(count):
        user = FIRST_MEMBER + n % members
        update = {"update_id": first_update + n, "message": {
            "message_id": n + 1, "date": now, "chat": chat, "text": f"message {n}",
            "from": {"id": user, "is_bot": False, "first_name": f"M{user}"}}}
        entries.append(update_envelope_fields(KEY, first_update + n, chat_id, time.time(), f"b{n}",
                                              json.dumps(update).encode()))
    return entries


async def absorb(redis: Any, chat_id: int, entries: list[dict[str, bytes]], deadline: float) -> float:
    """Put the entries on the chat's partition; seconds until the bot read and acknowledged them all."""
    stream = updates_stream(KEY, update_partition(chat_id, DEFAULT_PARTITIONS))
    groups = await redis.xinfo_groups(stream)
    read_before = int(groups[0]["entries-read"] or 0) if groups else 0
    started = time.monotonic()
    for start in range(0, len(entries), 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for fields in entries[start:start + 1000]:
                pipe.xadd(stream, fields)
            await pipe.execute()
    while True:
        [group] = [g for g in await redis.xinfo_groups(stream) if g["name"] == BOT_GROUP.encode()]
        if int(group["entries-read"] or 0) - read_before >= len(entries) and group["pending"] == 0:
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise RuntimeError(f"the bot did not absorb the burst in time: {group}")
        await asyncio.sleep(0.01)


async def main(args: argparse.Namespace) -> None:
    emulator = Emulator(limits="off")
    await emulator.start()
    info = emulator.add_bot(username="bench_groups_bot")
    port = free_port()
    rows: list[list[object]] = []
    try:
        async with scratch_database("group_activity") as (dsn, pool):
            channel_id = await pool.fetchval(
                """INSERT INTO channels (namespace, name, type, bot_id, bot_username, api_base_url, config,
                                         ready)
                   VALUES ($1, $2, 'telegram', $3, $4, $5, '{}', true) RETURNING id""",
                NAMESPACE, NAME, info.id, info.username, emulator.base_url)
            group_id = await pool.fetchval(
                "INSERT INTO managed_groups (namespace, name, channel_id, chat_id, spec) "
                "VALUES ($1, 'club', $2, $3, $4) RETURNING id", NAMESPACE, channel_id, MANAGED,
                {"channelRef": {"name": NAME}, "chatId": MANAGED, "joinRequests": {"policy": "approve"}})
            env = {**os.environ, "CLARION_CHANNEL": KEY, "CLARION_BOT_TOKEN": info.token,
                   "CLARION_DATABASE_URL": dsn, "CLARION_REDIS_URL": REDIS_URL,
                   "CLARION_METRICS_PORT": str(port), "CLARION_LOG_LEVEL": "WARNING",
                   "CLARION_REPLICA_ID": "bench-bot"}
            proc = await asyncio.create_subprocess_exec(str(BIN / "clarion-bot"), env=env,
                                                        stdout=asyncio.subprocess.DEVNULL)
            redis = aioredis.Redis.from_url(REDIS_URL)
            http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10)
            try:
                deadline = time.monotonic() + 60
                while any([await redis.get(partition_lease_key(KEY, p)) is None
                           for p in range(DEFAULT_PARTITIONS)]):
                    if proc.returncode is not None or time.monotonic() > deadline:
                        raise RuntimeError("clarion-bot did not lease its partitions")
                    await asyncio.sleep(0.1)
                for label, chat_id, first in (("peer: unmanaged group (no activity)", PEER, 1),
                                              ("managed group (activity batched)", MANAGED, 10_000_001)):
                    entries = burst(chat_id, label, first, args.count, args.members)
                    before, xacts = await scrape(http), await transactions(pool)
                    seconds = await absorb(redis, chat_id, entries, time.monotonic() + 600)
                    after, xacts_after = await scrape(http), await transactions(pool)
                    delta = {name: after[name] - before[name] for name in METRICS}
                    rows.append([label, args.count, round(seconds, 2), round(args.count / seconds),
                                 int(delta["clarion_group_activity_updates_total"]),
                                 int(delta["clarion_group_activity_flushes_total"]),
                                 xacts_after - xacts - 1])  # minus the first reading's own statement
                seen = await pool.fetchval("SELECT count(*) FROM group_members WHERE group_id = $1", group_id)
            finally:
                proc.terminate()
                await proc.wait()
                await http.aclose()
                await redis.aclose()
    finally:
        await emulator.stop()
    print(table(f"Group activity absorbed by one clarion-bot process, issue 16: a burst of {args.count} "
                f"group messages from {args.members} members put on the update stream; {seen} member rows "
                f"written; local Postgres and Redis, loopback, {os.cpu_count()} CPUs",
                ["burst", "updates", "seconds", "updates/s", "recorded", "flushes", "Postgres transactions"],
                rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20_000, help="updates per burst")
    parser.add_argument("--members", type=int, default=2_000, help="members writing them, round robin")
    parsed = parser.parse_args()
    if not 1 <= parsed.members <= parsed.count <= 200_000:
        parser.error("need 1 <= --members <= --count <= 200000")
    asyncio.run(main(parsed))
