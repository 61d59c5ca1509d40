"""Issue 16's figure: from a `chat_join_request` update to the approve call, policy approve.

The bot runs as in the support desk's acceptance stack (`clarion_dev.testing.support_stack`:
`clarion-webhook`, the channel's workers and `clarion-bot` as processes, on the local Postgres, a scratch
database, and Redis, db of `CLARION_BENCH_REDIS_URL`, default 13, emptied); the Telegram emulator (limits
off) in this process, which is also the client. A ManagedGroup row (policy approve, no welcome) names a
group of the emulator.

1. timed, one at a time: the emulator enqueues a user's `chat_join_request` → it POSTs the update to the
   webhook → Redis → the bot looks the group up (cached 5 s), stores the request, decides it, calls
   approveChatJoinRequest → the emulator has the user as a member (polled every 2 ms, this process's
   monotonic clock); the audit and member rows are written after the call, so they are not in the figure;
2. the floor of the same path: a user's `/ping n` → the bot's `pong n` in the emulator, one at a time
   (one user each, so that no private chat's budget paces it, and 40 ms apart, untimed, so that the
   bot's global budget of 30 messages/s does not either; an approve call takes no send slot). The pong
   still takes its slot from the shared limiter in Redis, which the approve does not.

    .venv/bin/python bench/join_requests.py [--count 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clarion_dev.smtp_sink import SmtpSink
from clarion_dev.telegram import Emulator
from clarion_dev.testing.support_stack import DESK, NAMESPACE, SupportStack, support_stack

from bench.sender_common import REDIS_URL, scratch_database, table
from bench.webhook_ingest import percentile

WARMUP = 5
POLL = 0.002
GROUP = -100_9001
FIRST_JOINER = 700_000
FIRST_PINGER = 800_000
#: The bot's sends take a slot of its global budget (at most 30 messages/s): pings 40 ms apart never wait.
SEND_SLOT = 0.04


async def until(check: Callable[[], object], started: float, what: str, desk: SupportStack) -> float:
    while not check():
        if time.monotonic() > started + 30:
            raise RuntimeError(f"{what} not seen in time\n{desk.processes.report()}")
        await asyncio.sleep(POLL)
    return time.monotonic()


async def joins(desk: SupportStack, count: int) -> list[float]:
    group = desk.emulator.groups[GROUP]
    latencies = []
    for n in range(count + WARMUP):
        user = FIRST_JOINER + n
        started = time.monotonic()
        await desk.emulator.request_join(desk.token, GROUP, user)
        done = await until(partial(group.members.__contains__, user), started, f"join {n}", desk)
        if n >= WARMUP:
            latencies.append(done - started)
    return latencies


async def pings(desk: SupportStack, count: int) -> list[float]:
    latencies = []
    for n in range(count + WARMUP):
        user = FIRST_PINGER + n
        await asyncio.sleep(SEND_SLOT)  # untimed: the pong's send slot is free when the ping comes
        started = time.monotonic()
        await desk.emulator.user_sends(desk.token, user, f"/ping {n}")
        done = await until(partial(desk.emulator.sent, desk.token, user), started, f"pong {n}", desk)
        if n >= WARMUP:
            latencies.append(done - started)
    return latencies


def row(measure: str, values: list[float]) -> list[object]:
    ms = [v * 1000 for v in values]
    return [measure, len(ms), percentile(ms, 0.5), percentile(ms, 0.95), percentile(ms, 0.99),
            max(ms, default=float("nan"))]


async def main(args: argparse.Namespace) -> None:
    emulator, sink = Emulator(limits="off"), SmtpSink()
    await emulator.start()
    await sink.start()
    emulator.add_users(args.count + WARMUP, start_id=FIRST_JOINER)
    emulator.add_users(args.count + WARMUP, start_id=FIRST_PINGER)
    emulator.add_group(GROUP, "Bench club")
    try:
        async with scratch_database("join_requests") as (dsn, pool):
            with tempfile.TemporaryDirectory(prefix="clarion-bench-joins-") as logs:
                async with support_stack(emulator, sink, pool, dsn, REDIS_URL, Path(logs),
                                         group=False) as desk:
                    channel_id = await pool.fetchval(
                        "SELECT id FROM channels WHERE namespace = $1 AND name = $2", NAMESPACE, DESK)
                    await pool.execute(
                        "INSERT INTO managed_groups (namespace, name, channel_id, chat_id, spec) "
                        "VALUES ($1, 'club', $2, $3, $4)", NAMESPACE, channel_id, GROUP,
                        {"channelRef": {"name": DESK}, "chatId": GROUP,
                         "joinRequests": {"policy": "approve"}})
                    joined = await joins(desk, args.count)
                    floor = await pings(desk, args.count)
                    audited = await pool.fetchval(
                        "SELECT count(*) FROM audit_log WHERE action = 'group.join_approved'")
    finally:
        await sink.stop()
        await emulator.stop()
    print(table(f"Join requests, issue 16: one at a time, clarion-webhook + clarion-bot (+ the desk's "
                f"workers), "
                f"emulator (limits off) in the client's process, loopback, {os.cpu_count()} CPUs (ms); "
                f"{audited} approvals audited",
                ["measure", "n", "p50", "p95", "p99", "max"],
                [row("chat_join_request enqueued -> approveChatJoinRequest done (policy approve)", joined),
                 row("floor: /ping enqueued -> pong sent", floor)]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300, help="timed join requests (and pings)")
    parsed = parser.parse_args()
    if not 1 <= parsed.count <= 5000:
        parser.error("--count must be in 1..5000")
    asyncio.run(main(parsed))
