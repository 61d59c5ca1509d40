"""Audience snapshot of 1M subscribers: `clarion.db.campaigns.snapshot_audience` beside a raw
INSERT…SELECT of the same rows, and the cost of `counts()` on the result.

The raw statement copies the reachable subscribers of the channel into deliveries (shard 0); the
snapshot does what the operator runs (audience filters, shard hash, ON CONFLICT, the total). Each
runs in its own transaction into an emptied deliveries table, alternating, best of `--rounds`.
Goal (DESIGN §7): snapshot <= 1.25 x raw.

    .venv/bin/python bench/snapshot.py [--subscribers 1000000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
from clarion.db import campaigns as q
from clarion.models import Audience

from bench.sender_common import scratch_database, table

RAW = """INSERT INTO deliveries (campaign_id, chat_id, shard, language)
         SELECT $1, chat_id, 0, language FROM subscribers
         WHERE channel_id = $2 AND subscribed AND NOT unavailable"""

EVERYONE = Audience(all_subscribers=True)


async def fill(pool: asyncpg.Pool, subscribers: int) -> tuple[int, int, int]:
    channel = await pool.fetchval(
        "INSERT INTO channels (namespace, name, type) VALUES ('bench', 'bench', 'telegram') RETURNING id")
    await pool.execute(
        """INSERT INTO subscribers (channel_id, chat_id, language, tags, unavailable)
           SELECT $1, g, (ARRAY['en', 'de', 'ru'])[1 + g % 3], ARRAY['t' || (g % 10)], g % 50 = 0
           FROM generate_series(1, $2::bigint) g""", channel, subscribers)
    await pool.execute("VACUUM ANALYZE subscribers")
    ids = []
    for name in ("raw", "snapshot"):
        ids.append(await pool.fetchval(
            """INSERT INTO campaigns (namespace, name, uid, channel_id, spec, message_hash, shards)
               VALUES ('bench', $1, $1, $2, '{}'::jsonb, 'h', 8) RETURNING id""", name, channel))
    return channel, ids[0], ids[1]


async def timed_raw(pool: asyncpg.Pool, campaign: int, channel: int) -> tuple[float, int]:
    await pool.execute("TRUNCATE deliveries")
    async with pool.acquire() as conn, conn.transaction():
        started = time.perf_counter()
        status = await conn.execute(RAW, campaign, channel)
        elapsed = time.perf_counter() - started
    return elapsed, int(status.rsplit(" ", 1)[1])


async def timed_snapshot(pool: asyncpg.Pool, campaign: int, channel: int) -> tuple[float, int]:
    await pool.execute("TRUNCATE deliveries")
    await pool.execute("UPDATE campaigns SET total = 0 WHERE id = $1", campaign)
    async with pool.acquire() as conn, conn.transaction():
        started = time.perf_counter()
        total = await q.snapshot_audience(conn, campaign, channel, EVERYONE, 8)
        elapsed = time.perf_counter() - started
    return elapsed, total


async def main(subscribers: int, rounds: int) -> None:
    async with scratch_database("snapshot") as (_, pool):
        started = time.perf_counter()
        channel, raw_campaign, snap_campaign = await fill(pool, subscribers)
        print(f"{subscribers:,} subscribers generated in {time.perf_counter() - started:.1f} s")
        raw_times, snap_times = [], []
        rows_raw = rows_snap = 0
        for _ in range(rounds):
            elapsed, rows_raw = await timed_raw(pool, raw_campaign, channel)
            raw_times.append(elapsed)
            elapsed, rows_snap = await timed_snapshot(pool, snap_campaign, channel)
            snap_times.append(elapsed)
        assert rows_raw == rows_snap, (rows_raw, rows_snap)
        async with pool.acquire() as conn:
            started = time.perf_counter()
            counts = await q.counts(conn, snap_campaign)
            counts_s = time.perf_counter() - started
            started = time.perf_counter()
            for _ in range(100):
                await q.claim(conn, snap_campaign, 0, 100, "bench", 60)
            claim_ms = (time.perf_counter() - started) * 10
        assert counts.pending == rows_snap
        raw, snap = min(raw_times), min(snap_times)
        print(table(f"Audience snapshot, {rows_raw:,} reachable of {subscribers:,} subscribers "
                    f"(best of {rounds})",
                    ["what", "seconds", "rows/s", "vs raw", "goal"],
                    [["raw INSERT…SELECT", round(raw, 3), round(rows_raw / raw), "1.00", "-"],
                     ["snapshot_audience (8 shards)", round(snap, 3), round(rows_snap / snap),
                      f"{snap / raw:.2f}", "<= 1.25"],
                     ["counts() on the snapshot", round(counts_s, 3), "-", "-", "-"],
                     ["claim 100 rows (mean of 100)", round(claim_ms / 1000, 4), "-", "-", "-"]]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.subscribers, args.rounds))
