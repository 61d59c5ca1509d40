"""A channel's notification workers end to end: the operator runs `<channel>-workers-<lane>`, the pod
runner runs its pod as a `clarion-worker` process under the namespace's own Postgres role and Redis ACL
user, and what is accepted into the outbox reaches Telegram."""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from clarion.db import notifications as q
from clarion.streams import NotificationTask, notify_stream
from clarion_dev.podrunner import PodRunner
from clarion_dev.telegram import Emulator
from clarion_dev.testing.campaigns import make_channel
from clarion_dev.testing.cluster import KubeApis
from clarion_dev.testing.operator import Operator
from clarion_dev.testing.waiting import async_wait_for

pytestmark = pytest.mark.e2e


async def _accept(db: asyncpg.Pool, redis: aioredis.Redis, channel_id: int, key: str,
                  chats: Iterable[int]) -> list[uuid.UUID]:
    """Instant notifications to `chats`, accepted into the outbox and put on the lane's stream as the
    webhook does."""
    ids = []
    for chat in chats:
        new = q.NewNotification(id=uuid.uuid4(), channel_id=channel_id, lane="instant", recipient=str(chat),
                                content={"text": f"Your code is {chat}"}, reference=None, api_key_id=None,
                                trace_id=os.urandom(16).hex(), scheduled_for=None, max_attempts=3)
        async with db.acquire() as conn:
            row, _ = await q.accept(conn, new)
        assert row is not None
        ids.append(row.id)
        task = NotificationTask(notification_id=str(row.id), trace_id=row.trace_id)
        await redis.xadd(notify_stream(key, "instant"), task.to_fields())  # type: ignore[arg-type]
    return ids


def _all_sent(db: asyncpg.Pool, ids: list[uuid.UUID]) -> Callable[[], Awaitable[int | None]]:
    async def all_sent() -> int | None:
        sent: int = await db.fetchval(
            "SELECT count(*) FROM notifications WHERE id = ANY($1::uuid[]) AND status = 'sent'", ids)
        return sent if sent == len(ids) else None
    return all_sent


async def test_the_operator_runs_a_channel_s_workers_and_they_send_its_notifications_as_the_tenant(
    telegram_emulator: Emulator, operator: Operator, pod_runner: PodRunner, k8s: KubeApis,
    kube_namespace: str, db: asyncpg.Pool, redis: aioredis.Redis,
) -> None:
    channel = await make_channel(k8s, kube_namespace, telegram_emulator, operator, db, workers=1)
    telegram_emulator.add_users(30, 100_000)

    def worker_deployment() -> Any:
        found: Any = k8s.apps.list_namespaced_deployment(
            kube_namespace, label_selector="app.kubernetes.io/component=worker,clarion.io/lane=instant")
        return found.items or None

    try:
        [deployment] = await async_wait_for(worker_deployment, timeout=60, interval=0.3,
                                            what="the channel's worker Deployment")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- operator log ---\n{operator.log()}") from None
    assert deployment.metadata.name == "news-workers-instant"
    container = deployment.spec.template.spec.containers[0]
    assert container.command == [
        "clarion-worker", "--channel", f"{kube_namespace}.news", "--lanes", "instant"]
    assert {p.name for p in container.ports} == {"metrics"}
    assert deployment.metadata.owner_references[0].kind == "NotificationChannel"

    ids = await _accept(db, redis, channel.id, f"{kube_namespace}.news", range(100_000, 100_030))
    all_sent = _all_sent(db, ids)

    try:
        done: int = await async_wait_for(all_sent, timeout=120, interval=0.3, what="30 notifications sent")
        assert done == 30
    except AssertionError as exc:
        logs = "\n".join(pod_runner.logs(name.partition("/")[2])[-3000:]
                         for name in pod_runner.running_pods())
        raise AssertionError(f"{exc}\n--- worker pods ---\n{logs}\n--- operator ---\n{operator.log()}") \
            from None

    received = sorted(m.chat_id for m in telegram_emulator.sent(channel.token))
    assert received == list(range(100_000, 100_030))
    [pod] = [p.partition("/")[2] for p in pod_runner.running_pods() if "/news-workers-instant" in p]
    assert "sender.fatal" not in pod_runner.logs(pod)
    # the pod logged in as the namespace's own role, not as the operator's
    roles = await db.fetchrow("SELECT role_a, role_b FROM tenants WHERE namespace = $1", kube_namespace)
    sessions = await db.fetchval(
        """SELECT count(*) FROM pg_stat_activity
           WHERE datname = current_database() AND usename = ANY($1::name[])""",
        [r for r in (roles["role_a"], roles["role_b"]) if r is not None])
    assert sessions >= 1


async def test_a_lane_at_zero_gets_a_worker_for_one_new_notification_which_is_sent_then_none_again(
    telegram_emulator: Emulator, operator: Operator, pod_runner: PodRunner, k8s: KubeApis,
    kube_namespace: str, db: asyncpg.Pool, redis: aioredis.Redis,
) -> None:
    scaling = {"minReplicas": 0, "maxReplicas": 2, "scaleDownCooldownSeconds": 5}
    channel = await make_channel(k8s, kube_namespace, telegram_emulator, operator, db, name="quiet",
                                 autoscaling=scaling)
    telegram_emulator.add_users(1, 200_000)

    def instant_replicas() -> int | None:
        found: Any = k8s.apps.list_namespaced_deployment(
            kube_namespace, field_selector="metadata.name=quiet-workers-instant")
        return found.items[0].spec.replicas if found.items else None

    async def until(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
        try:
            return await async_wait_for(check, timeout=timeout, interval=0.3, what=what)
        except AssertionError as exc:
            logs = "\n".join(pod_runner.logs(name.partition("/")[2])[-3000:]
                             for name in pod_runner.running_pods())
            raise AssertionError(f"{exc}\n--- pods ---\n{logs}\n--- operator ---\n{operator.log()}") from None

    await until("the instant lane's Deployment, at zero", lambda: instant_replicas() == 0)
    assert not [p for p in pod_runner.running_pods() if "/quiet-workers" in p]

    ids = await _accept(db, redis, channel.id, f"{kube_namespace}.quiet", [200_000])
    assert await until("the notification sent", _all_sent(db, ids), timeout=120) == 1
    assert [m.chat_id for m in telegram_emulator.sent(channel.token)] == [200_000]

    await until("the instant lane back at zero", lambda: instant_replicas() == 0)
