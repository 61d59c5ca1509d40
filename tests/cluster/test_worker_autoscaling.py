"""The operator's worker autoscaler (ADR 0008) against a real kube-apiserver and Redis: a backlog on a
channel's instant stream scales `<channel>-workers-instant` up; once the backlog is consumed and a
cooldown has passed, back to its minimum. The bulk lane, with nothing waiting, stays as it is. The
channel's status, `kubectl get nc` and the operator's /metrics show each lane's pods, backlog and last
resize. A telegram channel also has the two group lanes (ADR 0010), scaled the same way; an email
channel has not."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from clarion.streams import WORKER_GROUP, group_posts_stream, notify_stream
from clarion_dev.cluster import ControlPlane
from clarion_dev.net import free_port
from clarion_dev.smtp_sink import SmtpSink
from clarion_dev.telegram import Emulator
from clarion_dev.testing.operator import Operator, OperatorFactory
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


def _bot_secret(control_plane: ControlPlane, namespace: str, token: str) -> None:
    _apply(control_plane, namespace, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bot-token"},
                                      "stringData": {"token": token}})


def _deployment(control_plane: ControlPlane, namespace: str, name: str) -> dict[str, Any] | None:
    return _kubectl_json(control_plane, namespace, "get", "deployment", name)


async def _until(operator: Operator, what: str, check: Any) -> Any:
    try:
        return await async_wait_for(check, timeout=90, interval=0.5, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- operator log ---\n{operator.log()}") from None


def _lane_status(control_plane: ControlPlane, namespace: str, channel: str, lane: str) -> dict[str, Any]:
    found = _kubectl_json(control_plane, namespace, "get", "notificationchannel", channel)
    assert found is not None
    lane_status: dict[str, Any] = found.get("status", {}).get("workers", {}).get(lane) or {}
    return lane_status


def _metric(metrics_url: str, sample: str) -> float | None:
    """The value of one sample line (`name{labels}`) of the operator's /metrics, or None."""
    for line in httpx.get(metrics_url, timeout=5).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return None


async def test_a_backlog_scales_the_lane_s_workers_up_and_they_return_to_the_minimum_after_the_cooldown(
    telegram_emulator: Emulator, operator_factory: OperatorFactory, control_plane: ControlPlane,
    kube_namespace: str, redis: aioredis.Redis,
) -> None:
    port = free_port()
    operator = operator_factory({"CLARION_METRICS_PORT": str(port)})
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    bot = telegram_emulator.add_bot(username="scaled_bot")
    _bot_secret(control_plane, kube_namespace, bot.token)
    _apply(control_plane, kube_namespace, {
        "apiVersion": f"{GROUP}/v1alpha1", "kind": "NotificationChannel", "metadata": {"name": "scaled"},
        "spec": {"type": "telegram",
                 "telegram": {"botTokenSecretRef": {"name": "bot-token", "key": "token"},
                              "apiBaseUrl": telegram_emulator.base_url, "bot": {"replicas": 0}},
                 "workers": {"autoscaling": {"minReplicas": 1, "maxReplicas": 5, "targetLagPerReplica": 100,
                                             "scaleDownCooldownSeconds": 5}}},
    })

    def replicas(lane: str) -> int | None:
        found = _deployment(control_plane, kube_namespace, f"scaled-workers-{lane}")
        return None if found is None else int(found["spec"]["replicas"])

    await _until(operator, "both lanes' worker Deployments at their minimum",
                lambda: replicas("instant") == 1 and replicas("bulk") == 1)

    stream = notify_stream(f"{kube_namespace}.scaled", "instant")
    await redis.xgroup_create(stream, WORKER_GROUP, id="0", mkstream=True)
    for n in range(250):
        await redis.xadd(stream, {"notification_id": str(n)})

    # 250 entries waiting at 100 per pod: 3 pods
    await _until(operator, "the instant lane scaled to 3 pods", lambda: replicas("instant") == 3 or None)
    assert replicas("bulk") == 1
    events = _kubectl_json(control_plane, kube_namespace, "get", "events",
                           "--field-selector", "reason=BacklogGrew")
    assert events is not None
    assert any("scaled-workers-instant: 1 -> 3 pods (250 entries waiting)" in e["message"]
               for e in events["items"])

    def instant() -> dict[str, Any]:
        return _lane_status(control_plane, kube_namespace, "scaled", "instant")

    scaled_up = await _until(operator, "the scale-up in the channel's status",
                             lambda: instant() if instant().get("replicas") == 3 else None)
    assert scaled_up["engine"] == "operator"
    assert (scaled_up["lag"], scaled_up["pending"], scaled_up["desired"]) == (250, 0, 3)
    assert "lagSource" not in scaled_up  # Redis reported the lag
    assert {k: v for k, v in scaled_up["lastScale"].items() if k != "time"} == {
        "from": 1, "to": 3, "reason": "BacklogGrew"}
    bulk = _lane_status(control_plane, kube_namespace, "scaled", "bulk")
    assert (bulk["replicas"], bulk["lag"], bulk.get("lastScale")) == (1, 0, None)

    table = control_plane.kubectl("-n", kube_namespace, "get", "notificationchannel", "scaled", check=False)
    assert table.returncode == 0, table.stdout + table.stderr
    header, row = (line.split() for line in table.stdout.strip().splitlines())
    assert header == ["NAME", "TYPE", "READY", "BOT", "INSTANT", "BULK", "LAG", "AGE"]
    assert row[:2] == ["scaled", "telegram"] and row[4:7] == ["3", "1", "250"]

    lane = f'{{channel="{kube_namespace}.scaled",lane="instant"}}'
    assert _metric(metrics_url, f"clarion_stream_lag{lane}") == 250
    assert _metric(metrics_url, f"clarion_stream_pending{lane}") == 0
    assert _metric(metrics_url, f"clarion_operator_worker_desired_replicas{lane}") == 3
    assert _metric(metrics_url, f"clarion_operator_worker_replicas{lane}") == 3
    assert _metric(metrics_url, f"clarion_operator_worker_max_replicas{lane}") == 5

    # a worker consumes and acknowledges every entry: back to the minimum after the cooldown
    read: Any = await redis.xreadgroup(WORKER_GROUP, "test-consumer", {stream: ">"}, count=1000)
    ids = [entry_id for _, entries in read for entry_id, _ in entries]
    assert len(ids) == 250
    await redis.xack(stream, WORKER_GROUP, *ids)

    await _until(operator, "the instant lane back to 1 pod", lambda: replicas("instant") == 1 or None)
    assert replicas("bulk") == 1
    scaled_down = await _until(operator, "the scale-down in the channel's status",
                               lambda: instant() if instant().get("replicas") == 1 else None)
    assert (scaled_down["lag"], scaled_down["pending"], scaled_down["desired"]) == (0, 0, 1)
    assert {k: v for k, v in scaled_down["lastScale"].items() if k != "time"} == {
        "from": 3, "to": 1, "reason": "BacklogShrank"}
    assert scaled_down["lastScale"]["time"] >= scaled_up["lastScale"]["time"]
    assert _metric(metrics_url, f"clarion_stream_lag{lane}") == 0

    # a deleted channel leaves no series behind
    deleted = control_plane.kubectl("-n", kube_namespace, "delete", "notificationchannel", "scaled",
                                    "--wait=true", check=False)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert _metric(metrics_url, f"clarion_stream_lag{lane}") is None
    assert _metric(metrics_url, f"clarion_operator_worker_replicas{lane}") is None


async def test_a_reconcile_keeps_the_replicas_someone_else_set_and_removes_the_old_two_lane_deployment(
    telegram_emulator: Emulator, operator: Operator, control_plane: ControlPlane, kube_namespace: str,
) -> None:
    # the one Deployment of both lanes an operator before ADR 0008 ran
    labels = {"app.kubernetes.io/component": "worker", "clarion.io/channel": "kept"}
    _apply(control_plane, kube_namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "kept-workers", "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": "worker", "image": "clarion:old"}]}}}})
    bot = telegram_emulator.add_bot(username="kept_bot")
    _bot_secret(control_plane, kube_namespace, bot.token)
    channel: dict[str, Any] = {
        "apiVersion": f"{GROUP}/v1alpha1", "kind": "NotificationChannel", "metadata": {"name": "kept"},
        "spec": {"type": "telegram",
                 "telegram": {"botTokenSecretRef": {"name": "bot-token", "key": "token"},
                              "apiBaseUrl": telegram_emulator.base_url, "bot": {"replicas": 0}},
                 # KEDA's lanes: the operator's scaler leaves their size alone
                 "workers": {"concurrency": 4, "autoscaling": {"engine": "keda", "minReplicas": 1}}},
    }
    _apply(control_plane, kube_namespace, channel)

    def instant() -> dict[str, Any] | None:
        return _deployment(control_plane, kube_namespace, "kept-workers-instant")

    def concurrency(deployment: dict[str, Any]) -> str:
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        return str({e["name"]: e.get("value") for e in container["env"]}["CLARION_WORKER_CONCURRENCY"])

    created = await _until(operator, "the instant lane's Deployment", instant)
    assert created["spec"]["replicas"] == 1 and concurrency(created) == "4"
    await _until(operator, "the old two-lane Deployment deleted",
                 lambda: _deployment(control_plane, kube_namespace, "kept-workers") is None)

    scaled = control_plane.kubectl("-n", kube_namespace, "scale", "deployment", "kept-workers-instant",
                                   "--replicas=4", check=False)
    assert scaled.returncode == 0, scaled.stdout + scaled.stderr
    channel["spec"]["workers"]["concurrency"] = 8
    _apply(control_plane, kube_namespace, channel)

    def updated() -> dict[str, Any] | None:
        found = instant()
        return found if found is not None and concurrency(found) == "8" else None

    rolled = await _until(operator, "the pod template updated", updated)
    assert rolled["spec"]["replicas"] == 4

    # KEDA's lanes are measured and reported, with no decision of the operator's
    def keda_lane() -> dict[str, Any] | None:
        found = _lane_status(control_plane, kube_namespace, "kept", "instant")
        return found if found.get("replicas") == 4 else None

    reported = await _until(operator, "the KEDA lane's replicas in status", keda_lane)
    assert (reported["engine"], reported["lag"], reported["pending"], reported["lagSource"]) == (
        "keda", 0, 0, "NoStream")
    assert "desired" not in reported and "lastScale" not in reported


async def test_a_telegram_channel_has_both_group_lanes_scaled_on_their_backlog_and_an_email_channel_none(
    telegram_emulator: Emulator, smtp_sink: SmtpSink, operator: Operator, control_plane: ControlPlane,
    kube_namespace: str, redis: aioredis.Redis,
) -> None:
    bot = telegram_emulator.add_bot(username="groups_bot")
    _bot_secret(control_plane, kube_namespace, bot.token)
    _apply(control_plane, kube_namespace, {
        "apiVersion": f"{GROUP}/v1alpha1", "kind": "NotificationChannel", "metadata": {"name": "groups"},
        "spec": {"type": "telegram",
                 "telegram": {"botTokenSecretRef": {"name": "bot-token", "key": "token"},
                              "apiBaseUrl": telegram_emulator.base_url, "bot": {"replicas": 0}},
                 "workers": {"autoscaling": {"maxReplicas": 4, "targetLagPerReplica": 10,
                                             "scaleDownCooldownSeconds": 5,
                                             "lanes": {"groupMaintenance": {"minReplicas": 1}}}}},
    })
    _apply(control_plane, kube_namespace, {
        "apiVersion": f"{GROUP}/v1alpha1", "kind": "NotificationChannel", "metadata": {"name": "mail"},
        "spec": {"type": "email",
                 "email": {"host": "127.0.0.1", "port": smtp_sink.port, "tls": "none",
                           "from": "Shop <shop@example.org>"}},
    })

    def replicas(name: str) -> int | None:
        found = _deployment(control_plane, kube_namespace, name)
        return None if found is None else int(found["spec"]["replicas"])

    def lanes_of(channel: str) -> dict[str, Any]:
        found = _kubectl_json(control_plane, kube_namespace, "get", "notificationchannel", channel)
        assert found is not None
        workers: dict[str, Any] = found.get("status", {}).get("workers") or {}
        return workers

    four = {"instant", "bulk", "groupPosts", "groupMaintenance"}
    await _until(operator, "the telegram channel's four lanes in status",
                 lambda: set(lanes_of("groups")) == four or None)
    assert replicas("groups-workers-group-posts") == 0
    assert replicas("groups-workers-group-maintenance") == 1  # its own lane's minReplicas
    posts = _deployment(control_plane, kube_namespace, "groups-workers-group-posts")
    assert posts is not None
    [container] = posts["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["clarion-worker", "--channel", f"{kube_namespace}.groups",
                                    "--lanes", "group-posts"]
    assert posts["metadata"]["labels"]["clarion.io/lane"] == "group-posts"

    await _until(operator, "the email channel's two lanes in status",
                 lambda: set(lanes_of("mail")) == {"instant", "bulk"} or None)
    for lane in ("group-posts", "group-maintenance"):
        assert _deployment(control_plane, kube_namespace, f"mail-workers-{lane}") is None

    # 25 posts waiting at 10 per pod: 3 pods, on the group-posts lane only
    stream = group_posts_stream(f"{kube_namespace}.groups")
    await redis.xgroup_create(stream, WORKER_GROUP, id="0", mkstream=True)
    for n in range(25):
        await redis.xadd(stream, {"notification_id": str(n)})
    await _until(operator, "the group-posts lane scaled to 3 pods",
                 lambda: replicas("groups-workers-group-posts") == 3 or None)
    assert replicas("groups-workers-instant") == 0
    assert replicas("groups-workers-group-maintenance") == 1
    status = await _until(operator, "the scale-up in the channel's status",
                          lambda: lanes_of("groups")["groupPosts"]
                          if lanes_of("groups")["groupPosts"].get("replicas") == 3 else None)
    assert (status["lag"], status["desired"], status["lastScale"]["reason"]) == (25, 3, "ScaledFromZero")
    events = _kubectl_json(control_plane, kube_namespace, "get", "events",
                           "--field-selector", "reason=ScaledFromZero")
    assert events is not None
    assert any("groups-workers-group-posts: 0 -> 3 pods (25 entries waiting)" in e["message"]
               for e in events["items"])

    wide = control_plane.kubectl("-n", kube_namespace, "get", "notificationchannel", "groups", "-o", "wide",
                                 check=False)
    assert wide.returncode == 0, wide.stdout + wide.stderr
    header, row = (line.split("  ") for line in wide.stdout.strip().splitlines())
    columns = dict(zip([h.strip() for h in header if h.strip()], [r.strip() for r in row if r.strip()],
                       strict=False))
    assert (columns["GROUP POSTS"], columns["GROUP MAINT"]) == ("3", "1")
