"""Issue 13's bulk acceptance: a 50,000-row CSV job, with the API process SIGKILLed during its expansion,
ends with exactly 50,000 notifications.

The API is a real `clarion-webhook` process on loopback over the real Postgres and Redis. The test waits
until Postgres shows the expansion part-way, kills the process (SIGKILL: no shutdown, no release of the
job), starts a new one, and reads the outcome from Postgres and the bulk-lane stream.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from clarion.db import api_keys as keys
from clarion.db import bulk as qb
from clarion.models import ApiKeySecret
from clarion.streams import NotificationTask, notify_stream
from clarion_dev.net import free_port
from clarion_dev.testing.templates import stored_templates
from clarion_dev.testing.waiting import async_wait_for

pytestmark = pytest.mark.e2e

ROWS = 50_000
CHUNK_ROWS = 100
KEY = "b" * 40
WEBHOOK = str(Path(sys.executable).with_name("clarion-webhook"))


@contextmanager
def _webhook(port: int, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([WEBHOOK, "--host", "127.0.0.1", "--port", str(port)],
                               env=dict(os.environ) | env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


async def _healthy(url: str) -> bool:
    async with httpx.AsyncClient(timeout=2) as client:
        return (await client.get(f"{url}/readyz")).status_code == 200


async def test_a_50_000_row_csv_job_interrupted_by_sigkill_ends_with_exactly_50_000_notifications(
    db: asyncpg.Pool, database_url: str, redis_url: str, redis: aioredis.Redis, tmp_path: Path,
) -> None:
    code = {"name": "code", "variables": [{"name": "name"}, {"name": "code"}],
            "variants": [{"language": "en", "text": "Hello {{ name }}, your code is {{ code }}"}]}
    await db.execute("INSERT INTO channels (namespace, name, type, config, ready, templates) "
                     "VALUES ('shop', 'alerts', 'telegram', '{}', true, $1)", stored_templates(code))
    await keys.sync_api_key(db, ApiKeySecret(
        namespace="shop", name="backend", uid="uid-backend", channels=("alerts",), rate_per_minute=None,
        key_sha256=hashlib.sha256(KEY.encode()).hexdigest()))
    csv_body = ("chat_id,name,code\r\n"
                + "".join(f'{1_000_000 + n},"Zoë {n}, Jr.",C-{n}\r\n' for n in range(ROWS))).encode()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"CLARION_DATABASE_URL": database_url, "CLARION_REDIS_URL": redis_url, "CLARION_LOG_FORMAT": "json",
           "CLARION_BULK_CHUNK_ROWS": str(CHUNK_ROWS), "CLARION_BULK_LEASE_SECONDS": "2"}
    log = tmp_path / "webhook.log"

    with _webhook(port, env, log) as first:
        up: bool = await async_wait_for(lambda: _healthy(url), timeout=30, interval=0.2, what="the webhook",
                                        ignore=(httpx.HTTPError,))
        assert up
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            answer = await client.post(
                "/api/v1/bulk", content=csv_body,
                params={"channel": "shop/alerts", "template": "code"},
                headers={"Authorization": f"Bearer {KEY}", "Content-Type": "text/csv"})
        assert answer.status_code == 202, answer.text
        job_id = uuid.UUID(answer.json()["id"])

        async def part_way() -> int | None:
            expanded: int = await db.fetchval("SELECT expanded FROM bulk_jobs WHERE id = $1", job_id)
            return expanded if 0 < expanded < ROWS // 2 else None

        seen: int = await async_wait_for(part_way, timeout=60, interval=0.01, what="the expansion under way")
        assert 0 < seen < ROWS
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)

    at_kill = await db.fetchrow(  # one statement: one snapshot of the cursor and the rows
        """SELECT status, expanded, (SELECT count(*) FROM notifications) AS created
           FROM bulk_jobs WHERE id = $1""", job_id)
    assert at_kill["status"] == "expanding" and 0 < at_kill["expanded"] < ROWS, dict(at_kill)
    assert at_kill["created"] == at_kill["expanded"]

    with _webhook(port, env, log):
        async def finished() -> dict[str, Any] | None:
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                view: dict[str, Any] = (await client.get(
                    f"/api/v1/bulk/{job_id}", headers={"Authorization": f"Bearer {KEY}"})).json()
            return view if view["status"] in ("done", "failed") else None

        try:
            view: dict[str, Any] = await async_wait_for(finished, timeout=120, interval=0.3,
                                                        what="the job to finish", ignore=(httpx.HTTPError,))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text()[-3000:]}") from None

    assert (view["status"], view["total"], view["expanded"], view["queued"]) == ("done", ROWS, ROWS, ROWS)
    stored = await db.fetchrow(
        """SELECT count(*) AS n, count(DISTINCT recipient) AS recipients, count(DISTINCT id) AS ids,
                  count(*) FILTER (WHERE lane = 'bulk' AND status = 'queued') AS queued_bulk
           FROM notifications WHERE bulk_job_id = $1""", job_id)
    assert dict(stored) == {"n": ROWS, "recipients": ROWS, "ids": ROWS, "queued_bulk": ROWS}
    assert await db.fetchval("SELECT count(*) FROM notifications") == ROWS
    sample = await db.fetchval("SELECT content->>'text' FROM notifications WHERE recipient = '1049999'")
    assert sample == "Hello Zoë 49999, Jr., your code is C-49999"
    assert await db.fetchval("SELECT count(*) FROM bulk_job_rows") == 0
    # On the bulk lane, each id at most once; only the chunk committed but not yet put on the stream when
    # the process died can be missing there (the workers' replayer enqueues those rows).
    entries: Any = await redis.xrange(notify_stream("shop.alerts", "bulk"))
    on_stream = [NotificationTask.from_fields(fields).notification_id for _, fields in entries]
    assert len(on_stream) == len(set(on_stream))
    expected = {str(qb.notification_id(job_id, n)) for n in range(1, ROWS + 1)}
    assert set(on_stream) <= expected and len(expected - set(on_stream)) <= CHUNK_ROWS
    assert await redis.xlen(notify_stream("shop.alerts", "instant")) == 0
