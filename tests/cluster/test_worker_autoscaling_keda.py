"""`engine: keda` (ADR 0008) against a real kube-apiserver serving KEDA's own CRDs.

KEDA's ScaledObject and TriggerAuthentication CRDs come from its Go module (pinned in
clarion_dev.testing.gomodules) and are installed into the control plane; the operator runs as a
process with the chart's RBAC. A lane with engine keda gets a ScaledObject the API server accepted as
written (the operator writes with strict field validation, so nothing was pruned) whose trigger
metadata are names KEDA's redis-streams scaler reads; the operator's own scaler leaves that lane's
replicas alone; back on engine operator the objects are deleted and the operator scales the lane.
Without KEDA's CRDs the channel says so in a condition and an Event, and works on.

No KEDA controller runs here: what KEDA does with the ScaledObject is KEDA's; what is proven is that
it is a valid one, aimed at the right Deployment, stream, group and credentials.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis.asyncio as aioredis
from clarion.models import ScalingPolicy
from clarion.streams import WORKER_GROUP, notify_stream
from clarion_dev.cluster import ControlPlane
from clarion_dev.telegram import Emulator
from clarion_dev.testing import gomodules
from clarion_dev.testing.cluster import KubeApis
from clarion_dev.testing.operator import Operator
from clarion_dev.testing.waiting import async_wait_for
from clarion_operator import builders
from clarion_operator.k8s import Kube
from kubernetes import client as k8s_client
from kubernetes.client import ApiException

pytestmark = pytest.mark.cluster

GROUP, VERSION = "clarion.io", "v1alpha1"
KEDA_GROUP, KEDA_VERSION = builders.KEDA_API_VERSION.split("/")
KEDA_CRD_NAMES = tuple(f"{plural}.{KEDA_GROUP}" for plural in gomodules.KEDA_KINDS)


def _scaler_parameters() -> dict[str, set[str]]:
    """What KEDA's redis-streams scaler reads, by source: its own metadata struct and the Redis
    connection struct it embeds (their `keda:"name=..."` tags in the pinned module)."""
    found = gomodules.keda_struct_parameters(gomodules.keda_scaler_source("redis_streams_scaler.go"),
                                             "redisStreamsMetadata")
    connection = gomodules.keda_struct_parameters(gomodules.keda_scaler_source("redis_scaler.go"),
                                                  "redisConnectionInfo")
    for order, names in connection.items():
        found.setdefault(order, set()).update(names)
    return found


@pytest.fixture
def keda_installed(control_plane: ControlPlane) -> None:
    """KEDA's ScaledObject and TriggerAuthentication CRDs, Established (a test without them deletes them)."""
    control_plane.apply_manifests(gomodules.keda_crds())


@pytest.fixture
def keda_absent(control_plane: ControlPlane) -> None:
    """No KEDA CRDs on the control plane (deleted, and waited for, if an earlier test installed them)."""
    result = control_plane.kubectl("delete", "crd", *KEDA_CRD_NAMES, "--ignore-not-found", "--wait=true",
                                   "--timeout=60s", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _apply(control_plane: ControlPlane, namespace: str, obj: dict[str, Any]) -> None:
    result = control_plane.kubectl("-n", namespace, "apply", "-f", "-", check=False,
                                   input_text=json.dumps(obj))
    assert result.returncode == 0, result.stdout + result.stderr


def _channel(emulator: Emulator, name: str, autoscaling: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "NotificationChannel", "metadata": {"name": name},
            "spec": {"type": "telegram",
                     "telegram": {"botTokenSecretRef": {"name": "bot-token", "key": "token"},
                                  "apiBaseUrl": emulator.base_url, "bot": {"replicas": 0}},
                     "workers": {"autoscaling": autoscaling}}}


def _bot_secret(control_plane: ControlPlane, namespace: str, emulator: Emulator, username: str) -> None:
    bot = emulator.add_bot(username=username)
    _apply(control_plane, namespace, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bot-token"},
                                      "stringData": {"token": bot.token}})


def _keda_object(k8s: KubeApis, namespace: str, plural: str, name: str) -> dict[str, Any] | None:
    custom: Any = k8s.custom
    try:
        found: dict[str, Any] = custom.get_namespaced_custom_object(KEDA_GROUP, KEDA_VERSION, namespace,
                                                                    plural, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return found


def _replicas(k8s: KubeApis, namespace: str, name: str) -> int | None:
    apps: Any = k8s.apps
    try:
        return int(apps.read_namespaced_deployment_scale(name, namespace).spec.replicas or 0)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _channel_object(k8s: KubeApis, namespace: str, name: str) -> dict[str, Any]:
    custom: Any = k8s.custom
    found: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                "notificationchannels", name)
    return found


def _condition(channel: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in channel.get("status", {}).get("conditions", []) if c["type"] == type_), None)


async def _until(operator: Operator, what: str, check: Any) -> Any:
    try:
        return await async_wait_for(check, timeout=90, interval=0.5, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- operator log ---\n{operator.log()}") from None


async def _backlog(redis: aioredis.Redis, stream: str, entries: int) -> None:
    await redis.xgroup_create(stream, WORKER_GROUP, id="0", mkstream=True)
    for n in range(entries):
        await redis.xadd(stream, {"notification_id": str(n)})


def test_every_trigger_and_authentication_parameter_is_one_keda_s_redis_streams_scaler_reads() -> None:
    known = _scaler_parameters()
    lag_mode = {"stream", "consumerGroup", "lagCount", "activationLagCount", "address"}
    assert lag_mode <= known["triggerMetadata"]
    policy = ScalingPolicy(engine="keda", max_replicas=3)
    for url in ("redis://r:6379/0", "rediss://u:p@r.example:6380/7"):
        scaled = builders.keda_scaled_object(namespace="ns", channel="c", lane="bulk", policy=policy,
                                             redis=builders.RedisAddress.of(url))
        [trigger] = scaled["spec"]["triggers"]
        assert set(trigger["metadata"]) <= known["triggerMetadata"], url
    auth = builders.keda_trigger_authentication(namespace="ns", channel="c", lane="bulk",
                                                runtime_secret_name="clarion-runtime")
    assert {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]} <= known["authParams"]


async def test_a_keda_lane_gets_a_scaled_object_keda_accepts_and_back_on_the_operator_it_is_deleted(
    keda_installed: None, telegram_emulator: Emulator, operator: Operator, control_plane: ControlPlane,
    kube_namespace: str, k8s: KubeApis, kube_api: k8s_client.ApiClient, redis: aioredis.Redis,
    redis_url: str,
) -> None:
    ns = kube_namespace
    _bot_secret(control_plane, ns, telegram_emulator, "keda_bot")
    autoscaling: dict[str, Any] = {"minReplicas": 1, "maxReplicas": 4, "targetLagPerReplica": 50,
                                   "scaleDownCooldownSeconds": 60, "lanes": {"bulk": {"engine": "keda"}}}
    _apply(control_plane, ns, _channel(telegram_emulator, "mixed", autoscaling))

    scaled = await _until(operator, "the bulk lane's ScaledObject", lambda: _keda_object(
        k8s, ns, builders.SCALED_OBJECTS, "mixed-workers-bulk"))
    # the pass applies the two objects one after the other, then writes the status that says so
    auth = await _until(operator, "the bulk lane's TriggerAuthentication", lambda: _keda_object(
        k8s, ns, builders.TRIGGER_AUTHENTICATIONS, "mixed-workers-bulk"))

    def applied() -> dict[str, Any] | None:
        found = _channel_object(k8s, ns, "mixed")
        ready = _condition(found, "AutoscalerReady")
        return found if ready is not None and ready["reason"] == "ScaledObjectsApplied" else None

    channel = await _until(operator, "AutoscalerReady: ScaledObjectsApplied", applied)
    # the instant lane is the operator's: no KEDA objects
    for plural in (builders.SCALED_OBJECTS, builders.TRIGGER_AUTHENTICATIONS):
        assert _keda_object(k8s, ns, plural, "mixed-workers-instant") is None

    # Accepted as written: the API server kept every field the operator sent (strict validation
    # would have refused an unknown one; a pruned one would be missing here).
    policy = ScalingPolicy(engine="keda", min_replicas=1, max_replicas=4, target_lag_per_replica=50,
                                    scale_down_cooldown_seconds=60)
    expected = builders.keda_scaled_object(namespace=ns, channel="mixed", lane="bulk", policy=policy,
                                           redis=builders.RedisAddress.of(redis_url))
    assert scaled["spec"] == expected["spec"]
    assert expected["metadata"]["labels"].items() <= scaled["metadata"]["labels"].items()
    [owner] = scaled["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("NotificationChannel", "mixed",
                                                            channel["metadata"]["uid"])
    expected_auth = builders.keda_trigger_authentication(namespace=ns, channel="mixed", lane="bulk",
                                                         runtime_secret_name="clarion-runtime")
    assert auth["spec"] == expected_auth["spec"]
    assert auth["metadata"]["ownerReferences"] == scaled["metadata"]["ownerReferences"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["metadata"]["stream"] == notify_stream(f"{ns}.mixed", "bulk")
    known = _scaler_parameters()
    assert set(trigger["metadata"]) <= known["triggerMetadata"]
    assert {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]} <= known["authParams"]
    ready = _condition(channel, "AutoscalerReady")
    assert ready is not None and (ready["status"], ready["reason"]) == ("True", "ScaledObjectsApplied")

    # the operator's write path refuses a field KEDA's CRD does not know instead of dropping it
    unknown = {**expected, "spec": {**expected["spec"], "pollingIntervalSeconds": 5}}
    with pytest.raises(ApiException) as refused:
        await Kube(kube_api).apply_custom(builders.SCALED_OBJECTS, unknown)
    assert ".spec.pollingIntervalSeconds: field not declared in schema" in str(refused.value.body)

    # KEDA's credentials are the namespace's own Redis user, from the runtime Secret's keys
    secret = k8s.core.read_namespaced_secret("clarion-runtime", ns)
    assert {ref["key"] for ref in auth["spec"]["secretTargetRef"]} <= set(secret.data or {})

    # A backlog on both lanes: the operator scales the instant lane, twice, and never the bulk one
    # (the second resize of instant comes after a whole pass over bulk with its backlog waiting).
    await _backlog(redis, notify_stream(f"{ns}.mixed", "bulk"), 200)
    instant = notify_stream(f"{ns}.mixed", "instant")
    await _backlog(redis, instant, 100)
    await _until(operator, "the instant lane at 2 pods",
                 lambda: _replicas(k8s, ns, "mixed-workers-instant") == 2 or None)
    for n in range(100):
        await redis.xadd(instant, {"notification_id": f"more-{n}"})
    await _until(operator, "the instant lane at 4 pods",
                 lambda: _replicas(k8s, ns, "mixed-workers-instant") == 4 or None)
    assert _replicas(k8s, ns, "mixed-workers-bulk") == 1

    # back on the operator: the KEDA objects go, and the operator sizes the bulk lane on its backlog
    autoscaling["lanes"]["bulk"]["engine"] = "operator"
    _apply(control_plane, ns, _channel(telegram_emulator, "mixed", autoscaling))
    await _until(operator, "the bulk lane's KEDA objects deleted", lambda: all(
        _keda_object(k8s, ns, plural, "mixed-workers-bulk") is None
        for plural in (builders.SCALED_OBJECTS, builders.TRIGGER_AUTHENTICATIONS)))
    await _until(operator, "the bulk lane scaled by the operator",
                 lambda: _replicas(k8s, ns, "mixed-workers-bulk") == 4 or None)
    ready = _condition(_channel_object(k8s, ns, "mixed"), "AutoscalerReady")
    assert ready is not None and (ready["status"], ready["reason"]) == ("True", "OperatorScaling")


async def test_without_keda_installed_the_channel_says_so_and_works_on(
    keda_absent: None, telegram_emulator: Emulator, operator: Operator, control_plane: ControlPlane,
    kube_namespace: str, k8s: KubeApis,
) -> None:
    ns = kube_namespace
    _bot_secret(control_plane, ns, telegram_emulator, "no_keda_bot")
    autoscaling: dict[str, Any] = {"engine": "keda", "minReplicas": 1, "maxReplicas": 3}
    _apply(control_plane, ns, _channel(telegram_emulator, "plain", autoscaling))

    def reported() -> dict[str, Any] | None:
        found = _condition(_channel_object(k8s, ns, "plain"), "AutoscalerReady")
        return found if found is not None and found["status"] == "False" else None

    condition = await _until(operator, "AutoscalerReady=False", reported)
    assert condition["reason"] == "KedaNotInstalled"
    assert "instant, bulk" in condition["message"] and "KEDA" in condition["message"]
    channel = _channel_object(k8s, ns, "plain")
    ready = _condition(channel, "Ready")
    assert ready is not None and ready["status"] == "True"
    assert channel["status"]["ready"] is True
    # the workers run at their minimum
    assert _replicas(k8s, ns, "plain-workers-instant") == 1
    assert _replicas(k8s, ns, "plain-workers-bulk") == 1
    events = await _until(operator, "a KedaNotInstalled Event", lambda: k8s.core.list_namespaced_event(
        ns, field_selector="reason=KedaNotInstalled").items)
    assert {e.type for e in events} == {"Warning"}

    # KEDA installed later: the next check (here: an edit of the channel) creates the ScaledObjects
    control_plane.apply_manifests(gomodules.keda_crds())
    autoscaling["maxReplicas"] = 5
    _apply(control_plane, ns, _channel(telegram_emulator, "plain", autoscaling))
    scaled = await _until(operator, "the ScaledObjects", lambda: all(
        (_keda_object(k8s, ns, builders.SCALED_OBJECTS, f"plain-workers-{lane}") or {})
        .get("spec", {}).get("maxReplicaCount") == 5 for lane in ("instant", "bulk")) or None)
    assert scaled
    condition = _condition(_channel_object(k8s, ns, "plain"), "AutoscalerReady")
    assert condition is not None and (condition["status"], condition["reason"]) == ("True",
                                                                                    "ScaledObjectsApplied")
