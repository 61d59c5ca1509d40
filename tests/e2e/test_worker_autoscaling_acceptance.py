"""Issue 14's acceptance run: a backlog of 5,000 notifications scales a lane's workers up, they drain it,
and go back to their minimum; nothing is lost or sent twice across the scale-downs that stopped pods.

Everything is real: the control plane, `clarion-operator` (its scaler), the pod runner running the
worker pods as `clarion-worker` processes (a scale-down deletes pods; the runner stops them with
SIGTERM and the pod's whole grace period, as a kubelet does), `clarion-webhook` (the API, a process),
Postgres, Redis and the SMTP sink. The channel is an email channel: its `ratePerSecond` paces each
worker process on its own, so every extra pod drains faster (a Telegram bot's 30/s is shared by all
its pods through the limiter, so more pods would not), and the backlog lasts long enough for the
scale-downs to happen while entries still wait.

The zero-and-back item (from zero, one new notification starts a worker and is delivered) is
`test_notification_workers.py::test_a_lane_at_zero_gets_a_worker_for_one_new_notification_...`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from clarion_dev.cluster import ControlPlane
from clarion_dev.net import free_port
from clarion_dev.podrunner import PodRunner
from clarion_dev.smtp_sink import SmtpSink
from clarion_dev.testing.campaigns import GROUP, VERSION
from clarion_dev.testing.cluster import KubeApis
from clarion_dev.testing.operator import Operator
from clarion_dev.testing.waiting import async_wait_for

pytestmark = pytest.mark.e2e

TOTAL = 5_000
#: Per worker process (the channel's `ratePerSecond`): one pod alone would need 200 s, four 50 s.
RATE = 25
SCALING = {"minReplicas": 1, "maxReplicas": 4, "targetLagPerReplica": 500, "scaleDownCooldownSeconds": 5,
           "lanes": {"bulk": {"minReplicas": 0, "maxReplicas": 0}}}
KEY = "autoscaling-" + "k" * 40
DEPLOYMENT = "mail-workers-instant"


@pytest.fixture
def pod_runner(control_plane: ControlPlane, kube_namespace: str, tmp_path: Path) -> Iterator[PodRunner]:
    """The namespace's pods as processes, stopped with the pod's own grace period (60 s for workers)
    instead of the default fixture's 5 s cap: a scale-down here is what it is on a kubelet."""
    runner = PodRunner(control_plane.kubeconfig, [kube_namespace], logs_dir=tmp_path / "pod-logs",
                       max_grace_seconds=60)
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()


@dataclass
class Resizes:
    """Every replica count the instant Deployment was seen at, with the notifications not yet sent."""

    seen: list[tuple[int, int]] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return max(replicas for replicas, _ in self.seen)

    def downs_with_work_left(self) -> list[tuple[int, int, int]]:
        """(from, to, unsent) of each scale-down made while notifications were still unsent."""
        return [(before, after, unsent) for (before, _), (after, unsent) in zip(self.seen, self.seen[1:],
                                                                              strict=False)
                if after < before and unsent > 0]


async def _watch_replicas(k8s: KubeApis, namespace: str, db: asyncpg.Pool, channel_id: int,
                          resizes: Resizes) -> None:
    while True:
        scale: Any = await asyncio.to_thread(k8s.apps.read_namespaced_deployment_scale, DEPLOYMENT, namespace)
        replicas = scale.spec.replicas
        if not resizes.seen or resizes.seen[-1][0] != replicas:
            unsent: int = await db.fetchval(
                "SELECT count(*) FROM notifications WHERE channel_id = $1 AND status <> 'sent'", channel_id)
            resizes.seen.append((replicas, unsent))
        await asyncio.sleep(0.2)


def _start_api(database_url: str, redis_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CLARION_DATABASE_URL": database_url, "CLARION_REDIS_URL": redis_url,
           "CLARION_METRICS_PORT": "0", "CLARION_POD_NAME": "api"}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "clarion_webhook.main", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)


def _create_email_channel_and_key(k8s: KubeApis, namespace: str, sink: SmtpSink) -> None:
    """The `mail` channel (plain SMTP to the sink, RATE per worker, SCALING) and an API key Secret for it."""
    core: Any = k8s.core
    core.create_namespaced_secret(namespace, {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "backend", "labels": {"clarion.io/api-key": "true"},
                     "annotations": {"clarion.io/channels": "mail"}},
        "stringData": {"key": KEY}})
    k8s.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "notificationchannels", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "NotificationChannel", "metadata": {"name": "mail"},
        "spec": {"type": "email",
                 "email": {"host": "127.0.0.1", "port": sink.port, "tls": "none",
                           "from": "Shop <shop@example.org>", "ratePerSecond": RATE},
                 "workers": {"autoscaling": SCALING}}})


async def _post_all(port: int, namespace: str) -> list[str]:
    """TOTAL POSTs on the instant lane, 32 in flight, as a backend would send them; their ids."""
    ids: list[str] = []
    todo = iter(range(TOTAL))
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        async def sender() -> None:
            for i in todo:
                body = {"channel": f"{namespace}/mail", "recipient": {"email": f"buyer{i}@example.org"},
                        "content": {"subject": f"Order {i}", "text": f"Order {i} shipped"}}
                answer = await client.post("/api/v1/notifications", json=body, headers=headers)
                assert answer.status_code == 202, f"POST {i}: {answer.status_code} {answer.text}"
                ids.append(answer.json()["id"])

        await asyncio.gather(*(sender() for _ in range(32)))
    return ids


async def test_5000_notifications_scale_the_instant_workers_up_then_back_to_min_and_each_is_sent_once(
    smtp_sink: SmtpSink, operator: Operator, pod_runner: PodRunner, k8s: KubeApis, kube_namespace: str,
    db: asyncpg.Pool, database_url: str, redis_url: str, tmp_path: Path,
) -> None:
    port = free_port()
    api = _start_api(database_url, redis_url, port, tmp_path / "api.log")
    watcher: asyncio.Task[None] | None = None
    resizes = Resizes()

    def logs() -> str:
        pods = "\n".join(f"--- {name} ---\n{pod_runner.logs(name.partition('/')[2])[-2000:]}"
                         for name in pod_runner.running_pods())
        api_log = (tmp_path / "api.log").read_text(errors="replace")[-2000:]
        return f"\n--- replicas seen (replicas, unsent) ---\n{resizes.seen}\n{pods}\n--- api ---\n{api_log}" \
               f"\n--- operator ---\n{operator.log()}"

    async def until(what: str, check: Callable[[], Any], timeout: float) -> Any:
        try:
            return await async_wait_for(check, timeout=timeout, interval=0.3, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}{logs()}") from None

    def instant_pods() -> list[str]:
        return [p for p in pod_runner.running_pods() if f"/{DEPLOYMENT}-" in p]

    try:
        _create_email_channel_and_key(k8s, kube_namespace, smtp_sink)

        async def ready() -> int | None:
            found: int | None = await db.fetchval(
                """SELECT c.id FROM channels c JOIN api_keys k ON k.namespace = c.namespace
                   WHERE c.namespace = $1 AND c.name = 'mail' AND c.ready AND NOT k.revoked""",
                kube_namespace)
            return found

        channel_id: int = await until("channel mail Ready and its API key synced", ready, timeout=60)
        await until("the instant lane's one worker running", lambda: len(instant_pods()) == 1, timeout=60)
        watcher = asyncio.create_task(_watch_replicas(k8s, kube_namespace, db, channel_id, resizes))

        ids = await _post_all(port, kube_namespace)
        assert len(set(ids)) == TOTAL

        # scale up: from min towards max
        await until("the instant workers above their minimum", lambda: resizes.peak > 1, timeout=120)

        async def all_sent() -> bool | None:
            sent: int = await db.fetchval(
                "SELECT count(*) FROM notifications WHERE id = ANY($1::uuid[]) AND status = 'sent'", ids)
            return sent == TOTAL or None

        await until(f"{TOTAL} notifications sent", all_sent, timeout=420)
        # scale down: back to min once drained, and the stopped pods are gone
        await until("the instant workers back at 1", lambda: resizes.seen[-1][0] == 1, timeout=120)
        await until("one instant worker pod left", lambda: len(instant_pods()) == 1, timeout=120)
    finally:
        if watcher is not None:
            watcher.cancel()
        api.terminate()
        api.wait(20)

    assert 1 < resizes.peak <= 4, resizes.seen
    # the case that matters for "nothing lost": pods were stopped while entries were still waiting
    assert resizes.downs_with_work_left(), f"no scale-down happened mid-drain: {resizes.seen}"

    received = Counter(m.rcpt_tos[0] for m in smtp_sink.messages)
    assert set(received) == {f"buyer{i}@example.org" for i in range(TOTAL)}, \
        f"{TOTAL - len(received)} mailboxes got nothing"
    twice = {address: n for address, n in received.items() if n > 1}
    assert not twice, f"{len(twice)} delivered more than once, e.g. {list(twice.items())[:5]}"

    statuses = await db.fetch("SELECT status, count(*) AS n FROM notifications GROUP BY status")
    assert {r["status"]: r["n"] for r in statuses} == {"sent": TOTAL}

    events: Any = k8s.core.list_namespaced_event(kube_namespace, field_selector="involvedObject.name=mail")
    reasons = {e.reason for e in events.items if DEPLOYMENT in (e.message or "")}
    assert {"BacklogGrew", "BacklogShrank"} <= reasons, reasons
