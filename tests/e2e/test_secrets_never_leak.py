"""No secret ever shows: not in a log, a resource's status, an Event or a /metrics page.

The whole system runs as a user would run it: the operator with a password in its Postgres and its
Redis URL, the webhook (a `clarion-webhook` process) with the same, a channel whose bot runs as a
Deployment pod and takes webhook traffic, a channel with a wrong token, and a campaign sent by a sender
Job. Then every secret that exists (each value of each Secret in the namespace, the passwords inside
URLs, the operator's own passwords) is looked for, as it is and in the encodings a careless line might
use, in every log file, every CR's status, every Event and every /metrics page.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from clarion_dev.cluster import ControlPlane
from clarion_dev.net import free_port
from clarion_dev.podrunner import PodRunner
from clarion_dev.telegram import Emulator
from clarion_dev.testing.campaigns import GROUP, VERSION, Campaigns, Channel
from clarion_dev.testing.cluster import KubeApis
from clarion_dev.testing.operator import OperatorFactory
from clarion_dev.testing.waiting import async_wait_for

pytestmark = pytest.mark.e2e

USERS = (610_001, 610_002, 610_003)


def _with_credentials(url: str, user: str, password: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{urllib.parse.quote(user)}:{urllib.parse.quote(password)}@{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _forms(secret: str) -> set[str]:
    """A secret as it is and as a log line or a status might carry it by mistake."""
    raw = secret.encode()
    return {secret, urllib.parse.quote(secret, safe=""), base64.b64encode(raw).decode().rstrip("="),
            base64.urlsafe_b64encode(raw).decode().rstrip("="), json.dumps(secret)[1:-1]}


def _secrets_of_value(value: str) -> Iterator[str]:
    """The secret parts of one Secret value: a URL's password, a bot token's secret half, or all of it."""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme and parts.password:
        yield urllib.parse.unquote(parts.password)
        return
    head, sep, tail = value.partition(":")
    if sep and head.isdigit() and len(tail) >= 30:  # a bot token: the id before the colon is public
        yield tail
    yield value


def _http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


@pytest.fixture
async def operator_credentials(database_url: str, redis_url: str) -> Any:
    """A Postgres role and a Redis ACL user with real passwords, for the operator and the webhook."""
    user = f"leak_{uuid.uuid4().hex[:10]}"
    pg_password, redis_password = f"pg-{secrets.token_urlsafe(24)}", f"rd-{secrets.token_urlsafe(24)}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(f"CREATE ROLE {user} LOGIN SUPERUSER PASSWORD '{pg_password}'")
    client = aioredis.Redis.from_url(redis_url)
    await client.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", user, "on", f">{redis_password}", "~*", "&*", "+@all")
    try:
        yield (_with_credentials(database_url, user, pg_password),
               _with_credentials(redis_url, user, redis_password), {pg_password, redis_password})
    finally:
        await client.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "DELUSER", user)
        await client.aclose()
        await admin.execute(f"DROP OWNED BY {user}")
        await admin.execute(f"DROP ROLE {user}")
        await admin.close()


async def test_no_secret_shows_in_any_log_status_event_or_metrics_page(
    telegram_emulator: Emulator, operator_factory: OperatorFactory, operator_credentials: Any,
    pod_runner: PodRunner, k8s: KubeApis, kube_namespace: str, db: asyncpg.Pool,
    control_plane: ControlPlane, tmp_path: Path,
) -> None:
    database_url, redis_url, own_passwords = operator_credentials
    core: Any = k8s.core
    ns = kube_namespace

    webhook_port, operator_metrics = free_port(), free_port()
    webhook_log = tmp_path / "webhook.log"
    service_env = {"CLARION_DATABASE_URL": database_url, "CLARION_REDIS_URL": redis_url,
                   "CLARION_LOG_FORMAT": "json", "CLARION_LOG_LEVEL": "DEBUG"}
    webhook = subprocess.Popen(
        [str(Path(sys.executable).with_name("clarion-webhook")), "--host", "127.0.0.1",
         "--port", str(webhook_port)],
        env=dict(os.environ) | service_env, stdout=webhook_log.open("ab"),
        stderr=subprocess.STDOUT)
    try:
        await async_wait_for(lambda: _http_text(f"http://127.0.0.1:{webhook_port}/healthz") is not None,
                             timeout=30, interval=0.2, what="the webhook", ignore=(OSError,))
        operator = operator_factory(service_env | {"CLARION_METRICS_PORT": str(operator_metrics)})

        # A channel that works: its bot runs as a Deployment pod and takes updates through the webhook.
        bot = telegram_emulator.add_bot(username="leak_news_bot")
        core.create_namespaced_secret(ns, {"apiVersion": "v1", "kind": "Secret", "metadata": {
            "name": "news-token"}, "stringData": {"token": bot.token}})
        # A channel with a token Telegram does not know: its failure is reported, the token is not.
        wrong = f"{bot.id + 1}:{secrets.token_urlsafe(26)}"
        core.create_namespaced_secret(ns, {"apiVersion": "v1", "kind": "Secret", "metadata": {
            "name": "broken-token"}, "stringData": {"token": wrong}})
        for name, webhook_section, replicas in (
                ("news", {"url": f"http://127.0.0.1:{webhook_port}"}, 1), ("broken", None, 0)):
            telegram: dict[str, Any] = {
                "botTokenSecretRef": {"name": f"{name}-token", "key": "token"},
                "apiBaseUrl": telegram_emulator.base_url, "bot": {"replicas": replicas}}
            if webhook_section:
                telegram["webhook"] = webhook_section
            k8s.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "notificationchannels", {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "NotificationChannel", "metadata": {"name": name},
                "spec": {"type": "telegram", "telegram": telegram}})

        def ready(name: str) -> str | None:
            obj: Any = k8s.custom.get_namespaced_custom_object(
                GROUP, VERSION, ns, "notificationchannels", name)
            for condition in (obj.get("status") or {}).get("conditions") or ():
                if condition["type"] == "Ready" and condition["status"] != "Unknown":
                    return str(condition["status"])
            return None

        assert await async_wait_for(lambda: ready("news"), timeout=90, interval=0.3,
                                    what="news Ready") == "True", operator.log()
        assert await async_wait_for(lambda: ready("broken"), timeout=90, interval=0.3,
                                    what="broken decided") == "False", operator.log()

        for user in USERS:  # through the emulator → webhook → Redis → the bot pod → Postgres
            telegram_emulator.add_user(user)
            await telegram_emulator.user_sends(bot.token, user, "/start")

        async def subscribed() -> Any:
            n: int = await db.fetchval(
                "SELECT count(*) FROM subscribers s JOIN channels c ON c.id = s.channel_id "
                "WHERE c.namespace = $1 AND c.name = 'news' AND s.subscribed", ns)
            return n if n == len(USERS) else None

        await async_wait_for(subscribed, timeout=120, interval=0.3, what="three subscribers via the bot")

        campaigns = Campaigns(k8s, ns, operator, tmp_path / "pod-logs")
        campaigns.create("hello", Channel("news", bot.token, 0))
        status = await campaigns.wait_phase("hello", "Completed", timeout=180)
        assert status["sent"] == len(USERS)

        metrics = {"operator": _http_text(f"http://127.0.0.1:{operator_metrics}/metrics"),
                   "webhook": _http_text(f"http://127.0.0.1:{webhook_port}/metrics")}
    finally:
        webhook.terminate()
        webhook.wait(timeout=15)

    # Every secret there is: each Secret value in the namespace (tokens, the webhook secret token,
    # the workloads' credentials), the passwords inside URLs, and the operator's own passwords.
    found_secrets: set[str] = set(own_passwords)
    for item in core.list_namespaced_secret(ns).items:
        for value in (item.data or {}).values():
            found_secrets.update(_secrets_of_value(base64.b64decode(value).decode()))
    assert wrong in found_secrets and any(bot.token.endswith(s) for s in found_secrets)
    assert len(found_secrets) >= 5, found_secrets  # 2 tokens, a webhook secret, 2 passwords at least

    places: dict[str, str] = dict(metrics)
    logs: Iterable[Path] = [*tmp_path.rglob("*.log"), *control_plane.logs_dir.rglob("*.log")]
    for path in logs:
        places[f"log {path.name}"] = path.read_text(errors="replace")
    for plural in ("notificationchannels", "broadcastcampaigns"):
        listed: Any = k8s.custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural)
        for obj in listed["items"]:
            places[f"{plural}/{obj['metadata']['name']} status"] = json.dumps(obj.get("status"))
    api: Any = k8s.api
    for event in core.list_namespaced_event(ns).items:
        places[f"event {event.metadata.name}"] = json.dumps(api.sanitize_for_serialization(event))
    assert any("operator" in p for p in places) and any(p.startswith("event") for p in places)
    assert '"Ready"' in places["notificationchannels/broken status"]  # its failure is reported there

    leaks = [f"{where}: {form[:6]}…" for secret in found_secrets for form in _forms(secret)
             for where, text in places.items() if form in text]
    assert leaks == [], f"secrets found in: {leaks}"
