"""Issue 13's figures side by side in one run: the notification API's durable accept rate and latency,
accept → Telegram, the instant lane under a saturating campaign, and one email worker's rate.

Every server is its own process on loopback: `clarion-webhook` (one uvicorn worker), `clarion-worker`s,
the Telegram emulator, the SMTP sink, `clarion-sender`s; the local Postgres and Redis. This process is
the load generator (aiohttp). Rows, each beside its peer (what the same work costs without the part
measured):

1. closed loop, `--count` POSTs with `--concurrency` in flight → accepted/s, p50/p99, the server's
   CPU-seconds; peer: the floor of the same durable work done without HTTP or checks, one INSERT of
   the same row (asyncpg, the same concurrency) and one XADD, from this process;
2. open loop at `--rate` POSTs/s for `--seconds` → p50/p99/max from each request's scheduled time;
3. end to end at `--e2e-rate`/s for `--seconds` with a `clarion-worker` process and the emulator
   (limits off): from the POST's scheduled time to the emulator accepting the message (both stamp
   CLOCK_MONOTONIC, one clock for every process here) → p50/p99, once every accepted notification
   is settled in Postgres; beside it the rate at which that worker drained the backlog the runs
   above left (all of it, before the timed traffic);
4. instant lane at `--instant-rate`/s for `--instant-seconds` while a campaign (2 `clarion-sender`s)
   keeps the same bot at 30/s, on an emulator with the real limits and a 50 ± 10 ms round trip:
   insert → emulator p50/p99/max with the limiter's instant priority on; peer: priority off
   (`bench/instant_priority.py`'s `compare`, run here);
5. email: `--emails` notifications stored in the outbox and put on their stream as the API does
   (`AcceptBatcher`), then a `clarion-worker --channel bench.mail` process started (its defaults:
   4 SMTP connections, 32 sends in flight) against an email channel with `tls: starttls` and
   `ratePerSecond: 1000` (the model's maximum) and the SMTP sink (`clarion dev smtp --starttls`, a
   certificate made for the run) → emails / (last `sent_at` - first `sent_at`), and the worker's
   CPU-seconds per 1,000 emails (its CPU from the first row sent to the last, so start-up is not
   counted); peer: a bare aiosmtplib loop over one STARTTLS connection sending the same number to
   the same sink (`bench/email_sender.py`'s), the floor of one connection.

Goals (issue 13, docs/notifications.md): ≥ 2,000 accepted/s per API process, p99 ≤ 25 ms at 1,000/s,
end to end p99 ≤ 250 ms at 200/s, instant p99 ≤ 1.5 s under the campaign, ≥ 300 emails/s per worker.
Uses scratch databases and the Redis db of `CLARION_BENCH_REDIS_URL` (default 13; emptied), one part
after the other (`bench.sender_common`). Takes about 2 minutes with the defaults.

    .venv/bin/python bench/notifications.py [--count 5000] [--concurrency 64] [--rate 1000] [--seconds 5]
        [--e2e-rate 200] [--instant-rate 2] [--instant-seconds 20] [--emails 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import redis.asyncio as aioredis
from clarion.db import api_keys as keys
from clarion.db import notifications as q
from clarion.models import ApiKeySecret, EmailSettings
from clarion.streams import NotificationTask, notify_stream
from clarion_dev.net import free_port
from clarion_dev.smtp_sink import self_signed_cert
from clarion_webhook.batcher import AcceptBatcher

from bench import email_sender, instant_priority
from bench.email_sender import sink_process
from bench.sender_common import REDIS_URL, TOKEN, EmulatorProcess, scratch_database, table
from bench.webhook_ingest import (
    _cpu_seconds,
    percentile,
    post_closed_loop,
    post_open_loop,
    wait_listening,
)

API_KEY = "bench-" + "k" * 40
BIN = Path(sys.executable).parent
FIRST_CHAT = 100_000
CHATS = 1000


async def prepare(pool: asyncpg.Pool, emulator_url: str, *, channel: str = "alerts",
                  api_key: str = API_KEY) -> int:
    """The channel bench/`channel` on the emulator's bot, with limits lifted, and the API key; the
    channel's id."""
    channel_id: int = await pool.fetchval(
        """INSERT INTO channels (namespace, name, type, bot_id, api_base_url, config, ready)
           VALUES ('bench', $3, 'telegram', $1, $2, $4, true) RETURNING id""",
        int(TOKEN.split(":")[0]), emulator_url, channel,
        {"rateLimits": {"globalPerSecond": 100_000, "perChatPerSecond": 1000}})
    await keys.sync_api_key(pool, ApiKeySecret(
        namespace="bench", name="load", uid="bench-uid", channels=("*",),
        key_sha256=hashlib.sha256(api_key.encode()).hexdigest()))
    return channel_id


def body(i: int) -> bytes:
    return json.dumps({"channel": "bench/alerts", "recipient": {"chatId": FIRST_CHAT + i % CHATS},
                       "content": {"text": f"Order {i} shipped"}, "reference": f"r{i}"}).encode()


HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


async def closed_loop(url: str, count: int, concurrency: int) -> dict[str, Any]:
    return await post_closed_loop(url, [body(i) for i in range(count)], HEADERS, concurrency, ok=202)


async def open_loop(url: str, rate: float, seconds: float,
                    first: int) -> tuple[list[float], list[str], int]:
    """POST at `rate`/s: latencies from each scheduled time, "<id> <scheduled time>" of each accepted one,
    errors."""
    accepted: list[str] = []

    def taken(_: int, due: float, answer: bytes) -> None:
        accepted.append(f"{json.loads(answer)['id']} {due!r}")

    bodies = [body(first + i) for i in range(int(rate * seconds))]
    latencies, errors = await post_open_loop(url, bodies, rate, HEADERS, ok=202, on_answer=taken)
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


UNSETTLED = """SELECT count(*) FROM notifications
               WHERE status <> ALL($1::text[]) AND ($2::uuid[] IS NULL OR id = ANY($2::uuid[]))"""


async def wait_settled(pool: asyncpg.Pool, ids: list[str] | None, timeout: float) -> int:
    """Wait until the notifications `ids` (None: all) are settled, at most `timeout` s; how many are not."""
    deadline = time.monotonic() + timeout
    while True:
        left: int = await pool.fetchval(UNSETTLED, list(q.FINAL), ids)
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.1)


async def api_rows(args: argparse.Namespace) -> list[list[Any]]:
    """Rows 1-3: the API process, closed and open loop, and accept → emulator through a worker."""
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
            if await wait_settled(pool, None, timeout=max(60.0, backlog / 50)):
                raise RuntimeError("the worker did not drain the backlog")
            drain_rate = backlog / (time.monotonic() - drain_started)
            before = (await emulator.stats())["messages_sent"]
            _, accepted, e2e_errors = await open_loop(url, args.e2e_rate, args.seconds, 20_000_000)
            due = {line.split()[0]: float(line.split()[1]) for line in accepted}
            await wait_settled(pool, list(due), timeout=30.0)
            sent = await emulator.sent(since=before)
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
    return [
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
    ]


async def instant_rows(args: argparse.Namespace) -> list[list[Any]]:
    """Row 4: `bench/instant_priority.py`'s comparison, priority on and off."""
    on, off = await instant_priority.compare(rate=args.instant_rate, seconds=args.instant_seconds)

    def latencies(run: instant_priority.PriorityRun) -> str:
        return f"{run.p50:.3f} / {run.p99:.3f} / {run.max:.3f}"

    def beside(run: instant_priority.PriorityRun) -> str:
        return (f"{run.delivered} / {run.count}; {run.campaign_rate:.1f} / {run.bot_rate:.1f}; "
                f"{run.too_many_requests}")

    return [
        [f"instant at {args.instant_rate:g}/s, campaign at 30/s on the bot, priority on: p50 / p99 / max s",
         latencies(on), "p99 <= 1.5"],
        ["  delivered; campaign / bot msg/s; 429s", beside(on), "all; -; 0"],
        ["peer: priority off, p50 / p99 / max s", latencies(off), "-"],
        ["  delivered; campaign / bot msg/s; 429s", beside(off), "-"],
    ]


async def email_rows(args: argparse.Namespace) -> list[list[Any]]:
    """Row 5: one email worker over STARTTLS to the sink, beside one bare aiosmtplib connection."""
    count = args.emails
    with tempfile.TemporaryDirectory(prefix="clarion-bench-smtp-") as tmp:
        cert, key = self_signed_cert(Path(tmp))
        async with scratch_database("mail") as (dsn, pool), sink_process(cert, key) as (port, sink_pid):
            bare_rate, _, _ = await email_sender.measure(
                lambda: email_sender.bare_loop(port, cert, count), sink_pid, count)
            config = {"host": "127.0.0.1", "port": port, "tls": "starttls", "from": email_sender.FROM,
                      "ratePerSecond": 1000}
            EmailSettings.model_validate(config)  # what the worker will read
            channel_id: int = await pool.fetchval(
                """INSERT INTO channels (namespace, name, type, config, ready)
                   VALUES ('bench', 'mail', 'email', $1, true) RETURNING id""", config)
            await preload_emails(pool, channel_id, count)
            worker = subprocess.Popen([str(BIN / "clarion-worker"), "--channel", "bench.mail"], env={
                **os.environ, "CLARION_DATABASE_URL": dsn, "CLARION_REDIS_URL": REDIS_URL,
                "CLARION_LOG_LEVEL": "WARNING", "CLARION_SMTP_CA_FILE": str(cert)})
            try:
                cpu = await worker_cpu_while_sending(pool, worker.pid, count, timeout=max(60.0, count / 50))
            finally:
                worker.terminate()
                worker.wait(30)
            sent, span = await pool.fetchrow(
                """SELECT count(*), extract(epoch FROM max(sent_at) - min(sent_at))::float8
                   FROM notifications WHERE status = 'sent'""")
    return [
        ["emails/s, one clarion-worker -> SMTP sink, STARTTLS", round(sent / span) if span else "-",
         ">= 300"],
        ["  worker CPU-s per 1,000 emails", round(cpu, 3), "-"],
        ["  sent / stored", f"{sent} / {count}", "all"],
        ["peer: bare aiosmtplib loop, 1 STARTTLS connection, emails/s", round(bare_rate), "-"],
    ]


async def preload_emails(pool: asyncpg.Pool, channel_id: int, count: int) -> None:
    """`count` emails stored and put on the instant lane's stream as the API does (group commit)."""
    redis = aioredis.Redis.from_url(REDIS_URL)
    batcher = AcceptBatcher(pool, redis)
    try:
        await asyncio.gather(*(batcher.accept(q.NewNotification(
            id=uuid.uuid4(), channel_id=channel_id, lane="instant", recipient=f"reader{i}@example.org",
            content={"subject": "Your order has shipped", "text": email_sender.TEXT}, reference=None,
            api_key_id=None, trace_id=os.urandom(16).hex(), scheduled_for=None, max_attempts=3))
            for i in range(count)))
        await batcher.close()
        queued = await redis.xlen(notify_stream("bench.mail", "instant"))
    finally:
        await redis.aclose()
    if queued != count:
        raise RuntimeError(f"{queued} of {count} emails were put on the stream")


async def worker_cpu_while_sending(pool: asyncpg.Pool, pid: int, count: int, timeout: float) -> float:
    """Wait until `count` notifications are settled; the worker's CPU-s per 1,000 sent, from the moment
    the first was seen sent to the last."""
    deadline = time.monotonic() + timeout
    first: tuple[float, int] | None = None
    while True:
        counts = await pool.fetchrow(
            """SELECT count(*) FILTER (WHERE status = 'sent'),
                      count(*) FILTER (WHERE status = ANY($1::text[])) FROM notifications""", list(q.FINAL))
        sent, settled = int(counts[0]), int(counts[1])
        if sent and first is None:
            first = (_cpu_seconds(pid), sent)
        if settled >= count:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{settled} of {count} emails settled in {timeout:g} s")
        await asyncio.sleep(0.05)
    assert first is not None
    return (_cpu_seconds(pid) - first[0]) / max(1, sent - first[1]) * 1000


async def main(args: argparse.Namespace) -> None:
    rows = [*await api_rows(args), *await instant_rows(args), *await email_rows(args)]
    print(table(f"Notifications, issue 13: one clarion-webhook process ({args.concurrency} in flight), "
                f"one clarion-worker per channel, loopback, {os.cpu_count()} CPUs",
                ["measure", "value", "goal"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--e2e-rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--instant-rate", type=float, default=2)
    parser.add_argument("--instant-seconds", type=float, default=20)
    parser.add_argument("--emails", type=int, default=3000)
    parsed = parser.parse_args()
    if not 0 < parsed.instant_seconds <= 60:
        parser.error("--instant-seconds must be in (0, 60]")
    asyncio.run(main(parsed))
