"""Issue 15's figure: an admin's Mini App reply, from the POST to the edited admin post.

Goal (issue 15, docs/support.md): from `POST /app/api/replies` to the admin post edited "✅ Replied by …",
with the SMTP sink, p99 ≤ 2 s.

The desk runs as in the acceptance test (`clarion_dev.testing.support_stack`): `clarion-webhook`, a
`clarion-worker` for the telegram channel and one for its email channel, `clarion-bot`, as processes, on
the local Postgres (a scratch database) and Redis (db of `CLARION_BENCH_REDIS_URL`, default 13;
emptied); the Telegram emulator (limits off) and the SMTP sink (no TLS) in this process, which is also the
client. The support chat is the admin's private chat and the channel's `rateLimits.perChatPerSecond` is
30, so the chat's budget does not pace the edits: this measures the path, not Telegram's ~1 message a
second per chat (a desk whose admins answer faster than that into one chat waits for the budget).

1. untimed: `--count` (+5 warm-up) requests by `POST /api/v1/requests`, until every admin post is sent
   and its message id recorded by the bot (a reply normally comes long after its request);
2. timed, one reply at a time: `POST /app/api/replies` (initData signed with the bot's token) → the
   emulator holding the post with its ✅ text (polled every 2 ms, this process's monotonic clock), which
   takes: the webhook storing and queueing the reply, the email worker sending it to the sink, its
   status event, the bot's follower recording the outcome and editing the post. Beside it, the 202 alone;
3. the floor of the same path without the edit: `POST /api/v1/notifications` of one email on the same
   email channel → the sink holding it (its arrival stamped by the sink), one at a time.

Each timed phase stops after `--seconds`. Takes about a minute with the defaults.

    .venv/bin/python bench/support_reply.py [--count 150] [--seconds 120]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clarion_dev.smtp_sink import SmtpSink
from clarion_dev.telegram import Emulator
from clarion_dev.testing.support_stack import SupportStack, support_stack, thread_of
from clarion_dev.testing.waiting import async_wait_for

from bench.sender_common import REDIS_URL, scratch_database, table
from bench.webhook_ingest import percentile

WARMUP = 5
POLL = 0.002
GOAL = 2.0


async def requests_posted(desk: SupportStack, count: int) -> dict[int, int]:
    """`count` requests, once each post is sent and its message id recorded; thread id → message id."""
    threads = [await desk.request(f"buyer{i}@example.org", f"Buyer {i}", f"Where is order {i}?")
               for i in range(count)]

    async def recorded() -> bool | None:
        desk.processes.assert_running()
        done: int = await desk.db.fetchval(
            "SELECT count(*) FROM support_threads WHERE admin_message_id IS NOT NULL")
        return True if done == count else None

    ready: bool = await async_wait_for(recorded, timeout=180, interval=0.2, what=f"{count} posts recorded")
    assert ready
    posts = {thread_of(m): m.message_id for m in desk.posts()}
    return {t: posts[t] for t in threads}


async def edited(desk: SupportStack, message_id: int, deadline: float) -> float:
    """When the post first shows ✅ (this process's monotonic clock)."""
    while time.monotonic() < deadline:
        post = desk.emulator.message(desk.token, desk.support_chat, message_id)
        if post is not None and (post.text or "").startswith("✅"):
            return time.monotonic()
        await asyncio.sleep(POLL)
    raise RuntimeError(f"post {message_id} not edited ✅ in time\n{desk.processes.report()}")


async def replies(desk: SupportStack, threads: dict[int, int],
                  seconds: float) -> tuple[list[float], list[float]]:
    """One reply at a time: (POST → post edited ✅, POST → 202), warm-up excluded."""
    to_edit: list[float] = []
    to_202: list[float] = []
    stop = time.monotonic() + seconds
    for n, (thread_id, message_id) in enumerate(threads.items()):
        if time.monotonic() > stop:
            break
        started = time.monotonic()
        answer = await desk.reply(thread_id, f"Order {thread_id} ships today.")
        accepted = time.monotonic()
        assert answer.status_code == 202, answer.text
        done = await edited(desk, message_id, started + 30)
        if n >= WARMUP:
            to_edit.append(done - started)
            to_202.append(accepted - started)
    return to_edit, to_202


async def emails(desk: SupportStack, count: int, seconds: float) -> list[float]:
    """One email notification at a time: POST → the sink holding it."""
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    for n in range(count + WARMUP):
        if time.monotonic() > stop:
            break
        before = len(desk.sink.messages)
        started = time.monotonic()
        await desk.notify_email(f"floor{n}@example.org", "Your order", f"Order {n} ships today.")
        while len(desk.sink.messages) == before:
            if time.monotonic() > started + 30:
                raise RuntimeError(f"email {n} not delivered in time\n{desk.processes.report()}")
            await asyncio.sleep(POLL)
        if n >= WARMUP:
            latencies.append(desk.sink.messages[before].at - started)
    return latencies


def row(measure: str, values: list[float], goal: str) -> list[object]:
    ms = [v * 1000 for v in values]
    return [measure, len(ms), percentile(ms, 0.5), percentile(ms, 0.95), percentile(ms, 0.99),
            max(ms, default=float("nan")), goal]


async def main(args: argparse.Namespace) -> None:
    emulator, sink = Emulator(limits="off"), SmtpSink()
    await emulator.start()
    await sink.start()
    try:
        async with scratch_database("support_reply") as (dsn, pool):
            with tempfile.TemporaryDirectory(prefix="clarion-bench-support-") as logs:
                async with support_stack(emulator, sink, pool, dsn, REDIS_URL, Path(logs), group=False,
                                         rate_limits={"globalPerSecond": 30, "perChatPerSecond": 30}) as desk:
                    threads = await requests_posted(desk, args.count + WARMUP)
                    to_edit, to_202 = await replies(desk, threads, args.seconds)
                    floor = await emails(desk, args.count, args.seconds)
    finally:
        await sink.stop()
        await emulator.stop()
    print(table(f"Support replies, issue 15: one at a time, clarion-webhook + a clarion-worker per channel + "
                f"clarion-bot, emulator (limits off) and SMTP sink in the client's process, loopback, "
                f"{os.cpu_count()} CPUs (ms)",
                ["measure", "n", "p50", "p95", "p99", "max", "goal"],
                [row("POST /app/api/replies -> admin post edited ✅ (email via the sink)", to_edit,
                     f"p99 ≤ {GOAL * 1000:,.0f}"),
                 row("  of which POST -> 202", to_202, ""),
                 row("floor: POST /api/v1/notifications (email) -> sink", floor, "")]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=150, help="timed replies (and emails)")
    parser.add_argument("--seconds", type=float, default=120, help="longest a timed phase runs")
    parsed = parser.parse_args()
    if not 1 <= parsed.count <= 1000:
        parser.error("--count must be in 1..1000")
    asyncio.run(main(parsed))
