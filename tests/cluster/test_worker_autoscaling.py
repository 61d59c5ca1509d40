"""The operator's worker autoscaler (ADR 0008) against a real kube-apiserver and Redis: a backlog on a
channel's instant stream scales `<channel>-workers-instant` up; once the backlog is consumed and a
cooldown has passed, back to its minimum. The bulk lane, with nothing waiting, stays as it is."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis.asyncio as aioredis
from clarion.streams import WORKER_GROUP, notify_stream
from clarion_dev.cluster import ControlPlane
from clarion_dev.telegram import Emulator
from clarion_dev.testing.operator import Operator
from clarion_dev.testing.waiting import async_wait_for

pytestmark = pytest.mark.cluster

GROUP = "clarion.io"


def _kubectl_json(control_plane: ControlPlane, namespace: str, *args: str) -> dict[str, Any] | None:
    result = control_plane.kubectl("-n", namespace, *args, "-o", "json", "--ignore-not-found", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout) if result.stdout.strip() else None


def _apply(control_plane: ControlPlane, namespace: str, obj: dict[str, Any]) -> None:
    result = control_plane.kubectl("-n", namespace, "apply", "-f", "-", check=False,
                                   input_text=json.dumps(obj))
    assert result.returncode == 0, result.stdout + result.stderr


async def test_a_backlog_scales_the_lane_s_workers_up_and_they_return_to_the_minimum_after_the_cooldown(
    telegram_emulator: Emulator, operator: Operator, control_plane: ControlPlane, kube_namespace: str,
    redis: aioredis.Redis,
) -> None:
    bot = telegram_emulator.add_bot(username="scaled_bot")
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bot-token"},
              "stringData": {"token": bot.token}}
    _apply(control_plane, kube_namespace, secret)
    _apply(control_plane, kube_namespace, {
        "apiVersion": f"{GROUP}/v1alpha1", "kind": "NotificationChannel", "metadata": {"name": "scaled"},
        "spec": {"type": "telegram",
                 "telegram": {"botTokenSecretRef": {"name": "bot-token", "key": "token"},
                              "apiBaseUrl": telegram_emulator.base_url, "bot": {"replicas": 0}},
                 "workers": {"autoscaling": {"minReplicas": 1, "maxReplicas": 5, "targetLagPerReplica": 100,
                                             "scaleDownCooldownSeconds": 5}}},
    })

    def replicas(lane: str) -> int | None:
        found = _kubectl_json(control_plane, kube_namespace, "get", "deployment", f"scaled-workers-{lane}")
        return None if found is None else int(found["spec"]["replicas"])

    async def until(what: str, check: Any) -> Any:
        try:
            return await async_wait_for(check, timeout=90, interval=0.5, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- operator log ---\n{operator.log()}") from None

    await until("both lanes' worker Deployments at their minimum",
                lambda: replicas("instant") == 1 and replicas("bulk") == 1)

    stream = notify_stream(f"{kube_namespace}.scaled", "instant")
    await redis.xgroup_create(stream, WORKER_GROUP, id="0", mkstream=True)
    for n in range(250):
        await redis.xadd(stream, {"notification_id": str(n)})

    # 250 entries waiting at 100 per pod: 3 pods
    await until("the instant lane scaled to 3 pods", lambda: replicas("instant") == 3 or None)
    assert replicas("bulk") == 1
    events = _kubectl_json(control_plane, kube_namespace, "get", "events",
                           "--field-selector", "reason=BacklogGrew")
    assert events is not None
    assert any("scaled-workers-instant: 1 -> 3" in e["message"] for e in events["items"])

    # a worker consumes and acknowledges every entry: back to the minimum after the cooldown
    read: Any = await redis.xreadgroup(WORKER_GROUP, "test-consumer", {stream: ">"}, count=1000)
    ids = [entry_id for _, entries in read for entry_id, _ in entries]
    assert len(ids) == 250
    await redis.xack(stream, WORKER_GROUP, *ids)

    await until("the instant lane back to 1 pod", lambda: replicas("instant") == 1 or None)
    assert replicas("bulk") == 1
