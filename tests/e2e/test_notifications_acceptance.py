"""Issue 13's acceptance run: 10,000 notifications through the public API while the servers fail.

Everything is a real process on loopback: `clarion-webhook` (the API), two Telegram `clarion-worker`s
and one email `clarion-worker`, a Postgres and a Redis of the test's own (so they can be stopped and
restarted), the Telegram emulator and the SMTP sink (STARTTLS). The load is a client a backend team
would write: every POST carries its own Idempotency-Key and is retried with that key on 503 or a lost
connection until it gets its 202.

While the load runs, each fault once, at a point of progress (never a timing assert):

- Redis is SIGKILLed and restarted without its data (streams, groups and markers are gone);
- one Telegram worker is SIGKILLed, restarted, and SIGKILLed again;
- Postgres is stopped for 20 s: the API keeps accepting, into its Redis inbox (the client sees 202s
  all along), and drains the inbox into Postgres once it is back.

Then: every accepted notification reached the emulator or the SMTP sink; duplicates are no more than
what was in flight at the kills and the Postgres stop (rows `sending`, counted right then); every row
is `sent`, and a Telegram row's provider message id is a message the emulator holds for its chat.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from clarion.db import api_keys as keys
from clarion.models import ApiKeySecret
from clarion_dev.net import free_port
from clarion_dev.smtp_sink import SmtpSink
from clarion_dev.telegram import Emulator
from clarion_dev.testing.servers import PrivatePostgres, PrivateRedis
from clarion_dev.testing.templates import stored_templates
from clarion_dev.testing.waiting import async_wait_for

from . import private_servers

# this module's tests run on a Postgres and a Redis of their own
database_url = private_servers.database_url
redis_url = private_servers.redis_url

pytestmark = [pytest.mark.e2e, pytest.mark.emulator(limits="off"), pytest.mark.smtp_sink(starttls=True)]

TOTAL = 10_000
#: Of the 10,000, this many come as one CSV bulk job (Telegram, the bulk lane), the rest one by one.
BULK_ROWS = 1_000
SINGLES = TOTAL - BULK_ROWS
SHIPPED = {"name": "order-shipped", "variables": [{"name": "order"}],
           "variants": [{"language": "en", "text": "Order {{ order }} shipped"}]}
FIRST_CHAT = 100_000
KEY = "acceptance-" + "k" * 40
BIN = Path(sys.executable).parent
DOWN = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


@dataclass
class Processes:
    """The API and worker processes, started as a Deployment's pods would be, logs in `tmp_path`."""

    env: dict[str, str]
    tmp_path: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], **env: str) -> subprocess.Popen[bytes]:
        log = (self.tmp_path / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, env={**self.env, "CLARION_POD_NAME": name, **env},
                                stdout=log, stderr=log)
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.log(name)}" for name in self.procs)

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")[-2500:]

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class Load:
    """What the client sent and got: one entry per request it made (retries of it included)."""

    accepted: dict[str, dict[str, Any]] = field(default_factory=dict)  # notification id -> request
    answers: Counter[int] = field(default_factory=Counter)
    connection_errors: int = 0
    progress: int = 0
    bulk_job: str | None = None
    accepted_while_postgres_down: int = 0


def _request(i: int) -> dict[str, Any]:
    """Six in ten to Telegram, four in ten by email; every third one on the bulk lane."""
    lane = "bulk" if i % 3 == 0 else "instant"
    if i % 10 < 6:
        return {"channel": "shop/alerts", "recipient": {"chatId": FIRST_CHAT + i},
                "content": {"text": f"Order {i} shipped"}, "lane": lane, "reference": f"order-{i}"}
    return {"channel": "shop/mail", "recipient": {"email": f"buyer{i}@example.org"},
            "content": {"subject": f"Order {i}", "text": f"Order {i} shipped — спасибо"},
            "lane": lane, "reference": f"order-{i}"}


async def _until_accepted(load: Load, what: str,
                          send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """Send until the API answers 202, as a client with an Idempotency-Key would: again after a lost
    connection, a 409 (the first try still being accepted) or a 503, waiting its Retry-After."""
    for _ in range(600):
        try:
            answer: httpx.Response = await send()
        except httpx.TransportError:
            load.connection_errors += 1
            await asyncio.sleep(0.2)
            continue
        load.answers[answer.status_code] += 1
        if answer.status_code == 202:
            return answer
        assert answer.status_code in (409, 503), f"{what}: {answer.status_code} {answer.text}"
        await asyncio.sleep(float(answer.headers.get("Retry-After", "0.5")))
    raise AssertionError(f"{what} was never accepted")


async def _post_until_accepted(client: httpx.AsyncClient, i: int, load: Load) -> None:
    body = _request(i)
    headers = {"Authorization": f"Bearer {KEY}", "Idempotency-Key": f"order-{i}"}
    answer = await _until_accepted(load, f"POST {i}", lambda: client.post("/api/v1/notifications", json=body,
                                                                          headers=headers))
    load.accepted[answer.json()["id"]] = body
    load.progress += 1


async def _post_bulk_until_accepted(client: httpx.AsyncClient, load: Load) -> None:
    """One CSV job of BULK_ROWS recipients (chats after the singles'), retried with its key like a POST."""
    rows = "".join(f"{FIRST_CHAT + SINGLES + row},B-{row}\r\n" for row in range(BULK_ROWS))
    body = ("chat_id,order\r\n" + rows).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Idempotency-Key": "december-bulk",
               "Content-Type": "text/csv"}
    answer = await _until_accepted(load, "the bulk job", lambda: client.post(
        "/api/v1/bulk", content=body, headers=headers,
        params={"channel": "shop/alerts", "template": "order-shipped"}))
    load.bulk_job = answer.json()["id"]


async def _in_flight(db_url: str, worker: str | None = None) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        if worker is None:
            count: int = await conn.fetchval("SELECT count(*) FROM notifications WHERE status = 'sending'")
        else:
            count = await conn.fetchval(
                "SELECT count(*) FROM notifications WHERE status = 'sending' AND claimed_by = $1", worker)
    finally:
        await conn.close()
    return count


async def _postgres_up(database_url: str) -> bool:
    conn = await asyncpg.connect(database_url, timeout=2)
    await conn.close()
    return True


async def _at_progress(load: Load, count: int) -> None:
    while load.progress < count:
        await asyncio.sleep(0.05)


async def test_10000_notifications_survive_redis_loss_worker_kills_and_a_postgres_stop(
    telegram_emulator: Emulator, smtp_sink: SmtpSink, private_postgres: PrivatePostgres,
    private_redis: PrivateRedis, database_url: str, redis_url: str, db: asyncpg.Pool, tmp_path: Path,
) -> None:
    bot = telegram_emulator.add_bot()
    telegram_emulator.add_users(TOTAL, FIRST_CHAT)
    await db.execute(
        """INSERT INTO channels (namespace, name, type, bot_id, api_base_url, config, ready, templates)
           VALUES ('shop', 'alerts', 'telegram', $1, $2, $3, true, $5),
                  ('shop', 'mail', 'email', NULL, NULL, $4, true, '[]')""",
        bot.id, telegram_emulator.base_url,
        {"rateLimits": {"globalPerSecond": 100_000, "perChatPerSecond": 1000}},
        {"host": "127.0.0.1", "port": smtp_sink.port, "tls": "starttls", "from": "Shop <shop@example.org>",
         "ratePerSecond": 1000}, stored_templates(SHIPPED))
    await keys.sync_api_key(db, ApiKeySecret(
        namespace="shop", name="backend", uid="uid-backend",
        key_sha256=hashlib.sha256(KEY.encode()).hexdigest(),
        channels=("alerts", "mail"), rate_per_minute=None))

    port = free_port()
    procs = Processes({**os.environ, "CLARION_DATABASE_URL": database_url, "CLARION_REDIS_URL": redis_url,
                       "CLARION_BOT_TOKEN": bot.token, "CLARION_SMTP_CA_FILE": str(smtp_sink.cert_path),
                       "CLARION_LOG_FORMAT": "json", "CLARION_LOG_LEVEL": "INFO",
                       "CLARION_REPLAY_AFTER_SECONDS": "3", "CLARION_RETRY_BACKOFF_SECONDS": "0.2",
                       "CLARION_METRICS_PORT": "0"}, tmp_path)
    api = procs.start("api", [sys.executable, "-m", "clarion_webhook.main", "--host", "127.0.0.1",
                              "--port", str(port)])
    worker = [str(BIN / "clarion-worker"), "--channel"]
    procs.start("tg-1", [*worker, "shop.alerts"])
    procs.start("tg-2", [*worker, "shop.alerts"])
    procs.start("mail-1", [*worker, "shop.mail"])
    load = Load()
    allowed_duplicates = 0
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            async def listening() -> bool | None:
                assert api.poll() is None, procs.logs()
                try:
                    return (await client.get("/healthz")).status_code == 200 or None
                except httpx.TransportError:
                    return None

            ready: bool = await async_wait_for(listening, timeout=60, interval=0.1, what="the API listening")
            assert ready

            async def producer(lane: int) -> None:
                for i in range(lane, SINGLES, 16):
                    await _post_until_accepted(client, i, load)

            async def bulk_job() -> None:
                await _at_progress(load, 2000)
                await _post_bulk_until_accepted(client, load)

            async def faults() -> None:
                nonlocal allowed_duplicates
                await _at_progress(load, 1500)
                private_redis.kill()
                private_redis.start()
                await _at_progress(load, 3000)
                held = await _in_flight(database_url, "tg-1")
                procs.kill("tg-1")
                allowed_duplicates += held
                procs.start("tg-1", [*worker, "shop.alerts"])
                await _at_progress(load, 4500)
                held = await _in_flight(database_url, "tg-1")
                procs.kill("tg-1")
                allowed_duplicates += held
                procs.start("tg-1", [*worker, "shop.alerts"])
                await _at_progress(load, 6500)
                allowed_duplicates += await _in_flight(database_url)
                private_postgres.stop()
                before = load.progress
                await asyncio.sleep(20)
                load.accepted_while_postgres_down = load.progress - before
                private_postgres.start()
                back: bool = await async_wait_for(lambda: _postgres_up(database_url), timeout=60,
                                                  interval=0.2, what="Postgres back", ignore=DOWN)
                assert back

            await asyncio.gather(faults(), bulk_job(), *(producer(lane) for lane in range(16)))

        assert len(load.accepted) == SINGLES and load.bulk_job is not None

        async def expanded() -> list[str] | None:
            found = await db.fetch("SELECT id::text FROM notifications WHERE bulk_job_id = $1",
                                   uuid.UUID(load.bulk_job))
            return [r["id"] for r in found] if len(found) == BULK_ROWS else None

        bulk_ids: list[str] = await async_wait_for(expanded, timeout=120, interval=0.5,
                                                   what="the bulk job expanded", ignore=DOWN)
        for n, notification_id in enumerate(bulk_ids):
            load.accepted[notification_id] = {"recipient": {"chatId": -1}, "bulk": n}
        ids = list(load.accepted)
        assert len(ids) == TOTAL

        async def all_final() -> Counter[str] | None:
            rows = await db.fetch("SELECT status FROM notifications WHERE id = ANY($1::uuid[])", ids)
            counts = Counter(r["status"] for r in rows)
            return counts if len(rows) == TOTAL and counts["sent"] == TOTAL else None

        try:
            # DOWN: the pool's connections died with the stopped server; it opens new ones
            final: Counter[str] = await async_wait_for(all_final, timeout=420, interval=0.5,
                                                       what="10,000 notifications sent", ignore=DOWN)
            assert final["sent"] == TOTAL
        except AssertionError as exc:
            rows = await db.fetch("SELECT status, count(*) AS n FROM notifications GROUP BY status")
            raise AssertionError(f"{exc}: {[(r['status'], r['n']) for r in rows]}\n{procs.logs()}") from None
    finally:
        procs.stop_all()

    rows = await db.fetch("SELECT id::text, recipient, provider_message_id, status FROM notifications")
    assert len(rows) == TOTAL, "the client's retries created extra notifications"
    telegram = [m for m in telegram_emulator.sent(bot.token)]
    chats = Counter(m.chat_id for m in telegram)
    mails = Counter(m.rcpt_tos[0] for m in smtp_sink.messages)
    wanted_chats = {b["recipient"]["chatId"] for b in load.accepted.values()
                    if "chatId" in b["recipient"] and "bulk" not in b}
    wanted_chats |= {FIRST_CHAT + SINGLES + row for row in range(BULK_ROWS)}
    wanted_mails = {b["recipient"]["email"] for b in load.accepted.values() if "email" in b["recipient"]}
    assert set(chats) == wanted_chats, f"{len(wanted_chats - set(chats))} chats got nothing"
    assert set(mails) == wanted_mails, f"{len(wanted_mails - set(mails))} mailboxes got nothing"
    duplicates = (sum(chats.values()) - len(chats)) + (sum(mails.values()) - len(mails))
    assert duplicates <= allowed_duplicates, f"{duplicates} duplicates, {allowed_duplicates} in flight"
    held = {(m.chat_id, m.message_id) for m in telegram}
    for row in rows:
        assert row["status"] == "sent"
        if "@" not in row["recipient"]:
            assert (int(row["recipient"]), int(row["provider_message_id"])) in held, row
    assert set(load.answers) <= {202, 409, 503}, load.answers
    # the API kept accepting, into its Redis inbox, the whole time Postgres was stopped
    assert load.accepted_while_postgres_down >= 1000, load.accepted_while_postgres_down
