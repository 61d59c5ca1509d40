"""Issue 17's figures: `POST /api/v1/events` with 5 recipients each, per API process, and the time from
an event to its last recipient's delivery.

Every server is its own process on loopback: `clarion-webhook` (one uvicorn worker), one
`clarion-worker`, the Telegram emulator (limits off); the local Postgres and Redis. One route
(booking_created by admin, role member, a route template with two variables) and events whose 5
recipients are members with distinct Telegram chats. Rows:

1. closed loop, `--count` events with `--concurrency` in flight → events/s (and notifications/s, 5
   each), p50/p99, the server's CPU-seconds per 1,000 events; peer: `POST /api/v1/notifications` of
   the same 5 rendered messages one by one (the same durable work through the single-notification path);
2. end to end at `--e2e-rate` events/s for `--seconds`, the worker running: from each POST's scheduled
   time to the emulator accepting the last of its 5 messages (both stamp CLOCK_MONOTONIC) → p50/p99.

Goal (docs/events.md): none set by the issue; read against bench/notifications.py's ≥ 2,000 accepted/s.
Uses a scratch database and the Redis db of `CLARION_BENCH_REDIS_URL` (emptied).

    .venv/bin/python bench/events.py [--count 2000] [--concurrency 32] [--e2e-rate 40] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clarion.db import events
from clarion.models import NotificationRouteSpec
from clarion_dev.net import free_port

from bench.notifications import prepare, wait_settled
from bench.sender_common import REDIS_URL, TOKEN, EmulatorProcess, scratch_database, table
from bench.webhook_ingest import (
    _cpu_seconds,
    percentile,
    post_closed_loop,
    post_open_loop,
    wait_listening,
)

API_KEY = "bench-" + "e" * 40
BIN = Path(sys.executable).parent
FIRST_CHAT = 200_000
RECIPIENTS = 5
HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
ROUTE = NotificationRouteSpec.model_validate({
    "eventType": "booking_created", "initiatorRole": "admin",
    "recipients": [{"role": "member", "channels": [{"channelRef": "salon", "template": "booked"}]}],
    "templates": [{"name": "booked", "variables": [{"name": "service"}, {"name": "when"}],
                   "variants": [{"language": "en", "text": "New booking: {{ service }} on {{ when }}."}]}]})


def event(i: int) -> bytes:
    people = [{"role": "member", "id": f"m{r}", "telegramChatId": FIRST_CHAT + (i * RECIPIENTS + r) % 1000}
              for r in range(RECIPIENTS)]
    return json.dumps({
        "type": "booking_created", "id": f"e{i}", "initiator": {"role": "admin", "id": "a"},
        "recipients": people,
        "data": {"service": "Haircut", "when": "5 Dec 10:00"}}).encode()


def notification(i: int) -> bytes:
    return json.dumps({"channel": "bench/salon", "recipient": {"chatId": FIRST_CHAT + i % 1000},
                       "content": {"text": "New booking: Haircut on 5 Dec 10:00."}}).encode()


async def open_loop(url: str, rate: float, seconds: float, first: int) -> tuple[dict[str, float], int]:
    """POST events at `rate`/s: each accepted event's notification ids → its scheduled time; errors."""
    due_of: dict[str, float] = {}

    def taken(_: int, due: float, answer: bytes) -> None:
        for outcome in json.loads(answer)["recipients"]:
            due_of[outcome["notification"]["id"]] = due

    bodies = [event(first + i) for i in range(int(rate * seconds))]
    _, errors = await post_open_loop(url, bodies, rate, HEADERS, ok=202, on_answer=taken)
    return due_of, errors


async def rows(args: argparse.Namespace) -> list[list[Any]]:
    async with scratch_database("events") as (dsn, pool), EmulatorProcess("off") as emulator:
        await emulator.add_users(1000, FIRST_CHAT)
        await prepare(pool, emulator.base_url, channel="salon", api_key=API_KEY)
        await events.upsert_route(pool, namespace="bench", name="booked", uid="bench", spec=ROUTE)
        port = free_port()
        env = {**os.environ, "CLARION_DATABASE_URL": dsn, "CLARION_REDIS_URL": REDIS_URL,
               "CLARION_LOG_LEVEL": "WARNING"}
        server = subprocess.Popen([sys.executable, "-m", "clarion_webhook.main", "--host", "127.0.0.1",
                                   "--port", str(port)], env=env)
        worker: subprocess.Popen[bytes] | None = None
        try:
            await wait_listening(port, server)
            url = f"http://127.0.0.1:{port}/api/v1/events"
            await post_closed_loop(url, [event(-1 - i) for i in range(100)], HEADERS, 8, ok=202)  # warm up
            cpu = _cpu_seconds(server.pid)
            closed = await post_closed_loop(url, [event(i) for i in range(args.count)], HEADERS,
                                            args.concurrency, ok=202)
            closed["cpu"] = _cpu_seconds(server.pid) - cpu
            peer = await post_closed_loop(f"http://127.0.0.1:{port}/api/v1/notifications",
                                          [notification(i) for i in range(args.count * RECIPIENTS)], HEADERS,
                                          args.concurrency, ok=202)
            worker = subprocess.Popen([str(BIN / "clarion-worker"), "--channel", "bench.salon"], env={
                **env, "CLARION_BOT_TOKEN": TOKEN, "CLARION_WORKER_CONCURRENCY": "64"})
            backlog = await pool.fetchval("SELECT count(*) FROM notifications")
            if await wait_settled(pool, None, timeout=max(60.0, backlog / 50)):
                raise RuntimeError("the worker did not drain the backlog")
            before = (await emulator.stats())["messages_sent"]
            due_of, e2e_errors = await open_loop(url, args.e2e_rate, args.seconds, 10_000_000)
            await wait_settled(pool, list(due_of), timeout=30.0)
            sent = await emulator.sent(since=before)
        finally:
            for proc in (worker, server):
                if proc is not None:
                    proc.terminate()
                    proc.wait(30)
        stored = await pool.fetch(
            "SELECT id::text, recipient, provider_message_id, reference FROM notifications "
            "WHERE id = ANY($1::uuid[])", list(due_of))
    at_by_message = {(str(m["chat_id"]), str(m["message_id"])): float(m["at"]) for m in sent}
    last: dict[str, float] = {}  # the event (its reference) → its last delivery
    due_by_event: dict[str, float] = {}
    delivered = 0
    for r in stored:
        at = at_by_message.get((r["recipient"], r["provider_message_id"]))
        if at is None:
            continue
        delivered += 1
        last[r["reference"]] = max(last.get(r["reference"], 0.0), at)
        due_by_event[r["reference"]] = due_of[r["id"]]
    e2e = [last[e] - due_by_event[e] for e in last]
    return [
        ["events/s, 5 recipients each (closed loop)", round(closed["rate"]), "-"],
        ["  notifications/s", round(closed["rate"] * RECIPIENTS), "-"],
        ["  p50 / p99 ms", f"{closed['p50_ms']:.1f} / {closed['p99_ms']:.1f}", "-"],
        ["  server CPU-s per 1,000 events", round(closed["cpu"] / args.count * 1000, 3), "-"],
        ["  errors", closed["errors"], "0"],
        ["peer: POST /notifications, notifications/s", round(peer["rate"]), "-"],
        [f"event -> last recipient at {args.e2e_rate:g} events/s: p50 / p99 ms",
         f"{percentile(e2e, 0.5) * 1000:.1f} / {percentile(e2e, 0.99) * 1000:.1f}", "-"],
        ["  delivered / created", f"{delivered} / {len(due_of)} (errors {e2e_errors})", "all"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--e2e-rate", type=float, default=40.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(table("POST /api/v1/events", ["measure", "value", "goal"], asyncio.run(rows(args))))


if __name__ == "__main__":
    main()
