"""What an operator of Clarion can see afterwards: the `audit_log` rows of key use, retries and dead
letters, and the Prometheus series of the webhook and the worker after real traffic (a `clarion-webhook`
process, a `clarion-worker` process, real Postgres, Redis and the Telegram emulator)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from clarion.db import api_keys as keys
from clarion.models import ApiKeySecret
from clarion_dev.net import free_port
from clarion_dev.telegram import Emulator
from clarion_dev.testing.waiting import async_wait_for
from clarion_webhook.app import create_app
from clarion_webhook.settings import WebhookSettings
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.integration, pytest.mark.emulator(limits="off")]

BIN = Path(sys.executable).parent
KEY, LIMITED_KEY = "a" * 40, "b" * 40
FIRST_USER = 100_000


def _request(
    chat_id: int = FIRST_USER, channel: str = "shop/alerts", lane: str = "instant"
) -> dict[str, Any]:
    return {
        "channel": channel,
        "recipient": {"chatId": chat_id},
        "content": {"text": "Your order shipped"},
        "lane": lane,
    }


@pytest.fixture
async def shop(db: asyncpg.Pool, telegram_emulator: Emulator) -> str:
    """Channels shop/alerts and shop/news on one emulator bot; KEY may use alerts only, LIMITED_KEY alerts
    at 60/min. Returns the bot's token."""
    bot = telegram_emulator.add_bot()
    telegram_emulator.add_users(20, FIRST_USER)
    await db.execute(
        """INSERT INTO channels (namespace, name, type, bot_id, api_base_url, config, ready)
           VALUES ('shop', 'alerts', 'telegram', $1, $2, '{}', true),
                  ('shop', 'news', 'telegram', $1, $2, '{}', true)""",
        bot.id,
        telegram_emulator.base_url,
    )
    for name, key, rate in (("backend", KEY, None), ("limited", LIMITED_KEY, 60)):
        await keys.sync_api_key(
            db,
            ApiKeySecret(
                namespace="shop",
                name=name,
                uid=f"uid-{name}",
                key_sha256=hashlib.sha256(key.encode()).hexdigest(),
                channels=("alerts",),
                rate_per_minute=rate,
            ),
        )
    return bot.token


async def _audit(db: asyncpg.Pool, action: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT actor, subject, details FROM audit_log WHERE action = $1 ORDER BY id", action
    )
    return rows


async def test_key_use_is_audited_once_per_key_per_window_with_its_refusals_not_once_per_request(
    db: asyncpg.Pool,
    database_url: str,
    redis_url: str,
    shop: str,
) -> None:
    key_ids = {r["name"]: r["id"] for r in await db.fetch("SELECT id, name FROM api_keys")}
    app = create_app(
        WebhookSettings(
            database_url=database_url, redis_url=redis_url, pod_name="webhook-a", api_key_usage_seconds=0.5
        )
    )
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://clarion")
    bearer = {"Authorization": f"Bearer {KEY}"}
    try:
        for chat in range(FIRST_USER, FIRST_USER + 5):
            assert (
                await client.post("/api/v1/notifications", json=_request(chat), headers=bearer)
            ).status_code == 202
        assert (
            await client.post("/api/v1/notifications", json=_request(channel="shop/news"), headers=bearer)
        ).status_code == 403
        assert (
            await client.post(
                "/api/v1/notifications", json=_request(), headers={"Authorization": "Bearer " + "x" * 40}
            )
        ).status_code == 401

        # written by the replica's background flush, while it runs
        used: list[asyncpg.Record] = await async_wait_for(
            lambda: _audit(db, "api_key.used"), timeout=10, what="a key use row"
        )
        assert [(r["actor"], r["subject"]) for r in used] == [
            (f"api-key:{key_ids['backend']}", "shop/backend")
        ]
        details = used[0]["details"]
        assert (details["requests"], details["statuses"], details["replica"]) == (
            6,
            {"202": 5, "403": 1},
            "webhook-a",
        )
        assert details["from"] < details["to"]
        refused = await _audit(db, "api_key.refused")
        assert [(r["subject"], r["details"]["forbidden"]) for r in refused] == [("shop/backend", 1)]

        answers = Counter(
            [
                (
                    await client.post(
                        "/api/v1/notifications",
                        json=_request(),
                        headers={"Authorization": f"Bearer {LIMITED_KEY}"},
                    )
                ).status_code
                for _ in range(14)
            ]
        )
        assert answers == Counter({202: 10, 429: 4})  # 60/min, a burst of 10
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)  # the shutdown writes what is left

    # the rest is written at shutdown; the 14 requests took well under a window, so one or two rows
    limited = [r["details"] for r in await _audit(db, "api_key.used") if r["subject"] == "shop/limited"]
    assert 1 <= len(limited) <= 2, limited
    assert sum(d["requests"] for d in limited) == 14
    assert sum((Counter(d["statuses"]) for d in limited), Counter()) == Counter({"202": 10, "429": 4})
    refused_limited = [
        r["details"] for r in await _audit(db, "api_key.refused") if r["subject"] == "shop/limited"
    ]
    assert sum(d["rate_limited"] for d in refused_limited) == 4
    assert {d["replica"] for d in limited + refused_limited} == {"webhook-a"}


class Process:
    """A Clarion console script as a subprocess, its output in a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
            )

    def tail(self) -> str:
        return f"--- {self.name} ---\n" + self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
async def services(
    database_url: str, redis_url: str, shop: str, tmp_path: Path
) -> AsyncIterator[dict[str, str]]:
    """A webhook and a worker of shop/alerts as processes; their base URLs and metrics URLs."""
    webhook_port, worker_metrics = free_port(), free_port()
    common = {
        "CLARION_DATABASE_URL": database_url,
        "CLARION_REDIS_URL": redis_url,
        "CLARION_LOG_FORMAT": "json",
    }
    started = [
        Process(
            "webhook",
            [str(BIN / "clarion-webhook"), "--host", "127.0.0.1", "--port", str(webhook_port)],
            common,
            tmp_path / "webhook.log",
        ),
        Process(
            "worker",
            [str(BIN / "clarion-worker")],
            common
            | {
                "CLARION_WORKER_CHANNEL": "shop.alerts",
                "CLARION_BOT_TOKEN": shop,
                "CLARION_POD_NAME": "worker-a",
                "CLARION_METRICS_PORT": str(worker_metrics),
                "CLARION_RETRY_BACKOFF_SECONDS": "0.2",
                "CLARION_REPLAY_AFTER_SECONDS": "2",
            },
            tmp_path / "worker.log",
        ),
    ]
    urls = {
        "api": f"http://127.0.0.1:{webhook_port}",
        "webhook_metrics": f"http://127.0.0.1:{webhook_port}/metrics",
        "worker_metrics": f"http://127.0.0.1:{worker_metrics}/metrics",
    }

    async def up() -> bool:
        async with httpx.AsyncClient() as client:
            return all(
                [
                    (await client.get(f"{urls['api']}/readyz")).status_code == 200,
                    (await client.get(urls["worker_metrics"])).status_code == 200,
                ]
            )

    try:
        ready: bool = await async_wait_for(
            up, timeout=30, interval=0.2, what="the webhook and the worker", ignore=(httpx.TransportError,)
        )
        assert ready
        yield urls
    except BaseException:
        print("\n".join(p.tail() for p in started))
        raise
    finally:
        for process in started:
            process.stop()


async def _samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with httpx.AsyncClient() as client:
        text = (await client.get(url)).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_retries_and_dead_letters_are_audited_and_the_series_to_alert_on_are_scraped(
    db: asyncpg.Pool,
    telegram_emulator: Emulator,
    services: dict[str, str],
) -> None:
    bearer = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=services["api"], headers=bearer) as api:
        sent = [
            (await api.post("/api/v1/notifications", json=_request(chat, lane=lane))).json()["id"]
            for chat in range(FIRST_USER, FIRST_USER + 6)
            for lane in ("instant", "bulk")
        ]
        stranger = (await api.post("/api/v1/notifications", json=_request(9_999_999))).json()["id"]

        async def settled(ids: list[str]) -> bool:
            rows = await db.fetch("SELECT status FROM notifications WHERE id = ANY($1::uuid[])", ids)
            return len(rows) == len(ids) and all(r["status"] in ("sent", "failed") for r in rows)

        first: bool = await async_wait_for(
            lambda: settled([*sent, stranger]), timeout=30, what="the first 13 settled"
        )
        telegram_emulator.faults.set("sendMessage", error_rate_5xx=1.0, error_status=502)
        stormed = (await api.post("/api/v1/notifications", json=_request(FIRST_USER + 7))).json()["id"]
        second: bool = await async_wait_for(
            lambda: settled([stormed]), timeout=30, what="the stormed one dead-lettered"
        )
        telegram_emulator.faults.clear()
        assert first and second

    # the audit: each retry with its attempt, reason and next attempt time; each dead letter with its reason
    retries = await _audit(db, "notification.retry_scheduled")
    assert [(r["actor"], r["subject"], r["details"]["attempt"]) for r in retries] == [
        ("worker:worker-a", stormed, 1),
        ("worker:worker-a", stormed, 2),
    ]
    assert all("502" in r["details"]["reason"] and r["details"]["next_attempt_at"] for r in retries)
    dead = await _audit(db, "notification.dead_lettered")
    assert sorted((r["subject"], r["details"]["reason"], r["details"]["attempts"]) for r in dead) == sorted(
        [(stranger, "permanent", 1), (stormed, "attempts_exhausted", 3)]
    )

    webhook = await _samples(services["webhook_metrics"])
    for lane, count in (("instant", 8), ("bulk", 6)):
        assert (
            _value(
                webhook,
                "clarion_api_notifications_total",
                channel="shop.alerts",
                lane=lane,
                result="accepted",
            )
            == count
        )
    # every answer timed: the 14 accepted, by their result
    assert _value(webhook, "clarion_api_accept_seconds_count", result="accepted") == 14

    # the stream's lag and pending are the operator's (it reads them for scaling, also at zero pods)
    worker = await _samples(services["worker_metrics"])
    for lane in ("instant", "bulk"):
        assert (
            _value(
                worker, "clarion_notifications_sent_total", channel="shop.alerts", lane=lane, result="sent"
            )
            == 6
        )
        assert (
            _value(worker, "clarion_notification_delivery_seconds_count", channel="shop.alerts", lane=lane)
            == 6
        )
    assert _value(worker, "clarion_notification_send_seconds_count", channel="shop.alerts") == 12 + 1 + 3
    assert (
        _value(
            worker,
            "clarion_notifications_sent_total",
            channel="shop.alerts",
            lane="instant",
            result="retry",
        )
        == 3
    )
    assert _value(worker, "clarion_notification_retries_total", channel="shop.alerts", lane="instant") == 2
    for reason in ("permanent", "attempts_exhausted"):
        assert (
            _value(worker, "clarion_notification_dead_letters_total", channel="shop.alerts", reason=reason)
            == 1
        )
