"""The chart's monitors against the pods the operator really creates, on a real kube-apiserver.

prometheus-operator's own CRDs (from its Go module, pinned in clarion_dev.testing.gomodules) are
installed, so the API server validates the chart's PodMonitor, ServiceMonitor and PrometheusRule. The
operator runs as a process with the chart's RBAC; the controller manager turns its bot and worker
Deployments and its sender Job into Pods (there is no kubelet, so they stay Pending, which is all a
scrape-target selection needs). The monitors' selectors are then evaluated by the API server itself
(a label-selector list), the way Prometheus's Kubernetes discovery sees the pods.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
import yaml
from clarion_dev.cluster import ControlPlane
from clarion_dev.telegram import Emulator
from clarion_dev.testing import chart, gomodules
from clarion_dev.testing.cluster import KubeApis, require_control_plane
from clarion_dev.testing.operator import Operator
from clarion_dev.testing.waiting import WaitTimeout, async_wait_for, wait_for
from clarion_operator import builders
from kubernetes import client as k8s_client
from kubernetes.client import ApiException

pytestmark = pytest.mark.cluster

GROUP, VERSION = "clarion.io", "v1alpha1"
MONITORING = ("monitoring.coreos.com", "v1")
MONITOR_TEMPLATES = ("templates/podmonitor.yaml", "templates/servicemonitor.yaml",
                     "templates/prometheusrule.yaml", "templates/service-operator.yaml",
                     "templates/service-webhook.yaml", "templates/deployment-operator.yaml",
                     "templates/deployment-webhook.yaml")


@pytest.fixture(scope="session")
def monitoring_crds(control_plane: ControlPlane) -> None:
    """PodMonitor, ServiceMonitor and PrometheusRule CRDs on the session's control plane (kept: CRDs are
    cluster-wide, like crds/)."""
    try:
        paths = gomodules.monitoring_crds()
    except gomodules.GoModuleUnavailable as exc:
        require_control_plane(exc)
        raise
    control_plane.apply_manifests(paths)


@pytest.fixture
def release_namespace(k8s: KubeApis) -> Iterator[str]:
    """The namespace of the chart's release: apart from the channel's, as on a real cluster."""
    name = f"clarion-system-{uuid.uuid4().hex[:6]}"
    k8s.core.create_namespace(k8s_client.V1Namespace(
        metadata=k8s_client.V1ObjectMeta(name=name, labels={"clarion.io/test": "true"})))
    try:
        yield name
    finally:
        with contextlib.suppress(ApiException):
            k8s.core.delete_namespace(name, propagation_policy="Background")


def _plain(k8s: KubeApis, obj: object) -> Any:
    return k8s.api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]


def _label_selector(selector: dict[str, Any]) -> str:
    """A metav1.LabelSelector as the API's label-selector string."""
    terms = [f"{key}={value}" for key, value in selector.get("matchLabels", {}).items()]
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        terms.append({"In": f"{key} in ({','.join(values)})", "NotIn": f"{key} notin ({','.join(values)})",
                      "Exists": key, "DoesNotExist": f"!{key}"}[operator])
    return ",".join(terms)


def _selected(k8s: KubeApis, kind: str, monitor: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods or services a monitor selects, as Prometheus's discovery finds them: its
    namespaceSelector (`any`, `matchNames`, or by default the monitor's own namespace), then its selector."""
    spec = monitor["spec"]
    labels = _label_selector(spec["selector"])
    namespaces = spec.get("namespaceSelector", {})
    lists = {"pods": (k8s.core.list_pod_for_all_namespaces, k8s.core.list_namespaced_pod),
             "services": (k8s.core.list_service_for_all_namespaces, k8s.core.list_namespaced_service)}
    every, one = lists[kind]
    if namespaces.get("any"):
        return list(_plain(k8s, every(label_selector=labels))["items"])
    names = namespaces.get("matchNames") or [monitor["metadata"]["namespace"]]
    return [item for name in names for item in _plain(k8s, one(name, label_selector=labels))["items"]]


def _container_ports(pod_spec: dict[str, Any]) -> dict[str, int]:
    return {port["name"]: port["containerPort"]
            for container in pod_spec["containers"] for port in container.get("ports", []) if "name" in port}


async def _operator_creates_bot_worker_and_sender_pods(
    k8s: KubeApis, namespace: str, emulator: Emulator, operator: Operator, db: asyncpg.Pool,
) -> None:
    """A Telegram channel with one bot and one worker replica per lane, and a campaign to one subscriber."""
    bot = emulator.add_bot(username="watched_bot")
    k8s.core.create_namespaced_secret(namespace, k8s_client.V1Secret(
        metadata=k8s_client.V1ObjectMeta(name="bot-token"), string_data={"token": bot.token}))
    k8s.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "notificationchannels", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "NotificationChannel", "metadata": {"name": "news"},
        "spec": {"type": "telegram", "workers": {"autoscaling": {"minReplicas": 1, "maxReplicas": 1}},
                 "telegram": {"botTokenSecretRef": {"name": "bot-token", "key": "token"},
                              "apiBaseUrl": emulator.base_url, "bot": {"replicas": 1}}}})

    async def ready_channel() -> Any:
        return await db.fetchval(
            "SELECT id FROM channels WHERE namespace = $1 AND name = 'news' AND ready", namespace)

    def pods_of_every_component() -> bool:
        pods = _plain(k8s, k8s.core.list_namespaced_pod(namespace))["items"]
        components = {p["metadata"]["labels"].get("app.kubernetes.io/component") for p in pods}
        return {"bot", "worker", "sender"} <= components

    try:
        channel_id: int = await async_wait_for(ready_channel, timeout=60, interval=0.3,
                                               what="channel news Ready")
        await db.execute("INSERT INTO subscribers (channel_id, chat_id, language) VALUES ($1, 100000, 'en')",
                         channel_id)
        k8s.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "broadcastcampaigns", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "BroadcastCampaign", "metadata": {"name": "sale"},
            "spec": {"channelRef": {"name": "news"}, "message": {"text": "Sale!"},
                     "audience": {"allSubscribers": True}}})
        await async_wait_for(pods_of_every_component, timeout=90, interval=0.3,
                             what="bot, worker and sender pods")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- operator log ---\n{operator.log()}") from None


@pytest.mark.usefixtures("monitoring_crds")
async def test_the_chart_s_monitors_select_every_pod_the_operator_creates_and_their_metrics_port(
    control_plane: ControlPlane, k8s: KubeApis, kube_namespace: str, release_namespace: str,
    telegram_emulator: Emulator, operator: Operator, db: asyncpg.Pool,
) -> None:
    rendered = chart.render(control_plane, release_namespace, "--api-versions", "/".join(MONITORING),
                            *[a for template in MONITOR_TEMPLATES for a in ("--show-only", template)])
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    # The chart's Services and monitors, applied where the release lives; the API server checks the
    # monitors against prometheus-operator's schemas.
    applied = [d for d in docs if d["kind"] != "Deployment"]
    control_plane.kubectl("apply", "-n", release_namespace, "-f", "-",
                          input_text="\n---\n".join(json.dumps(d) for d in applied))

    def stored(plural: str, doc: dict[str, Any]) -> dict[str, Any]:
        custom: Any = k8s.custom
        obj: dict[str, Any] = custom.get_namespaced_custom_object(
            *MONITORING, release_namespace, plural, doc["metadata"]["name"])
        return obj

    [pod_monitor] = [stored("podmonitors", d) for d in by_kind["PodMonitor"]]
    [service_monitor] = [stored("servicemonitors", d) for d in by_kind["ServiceMonitor"]]
    [rule] = [stored("prometheusrules", d) for d in by_kind["PrometheusRule"]]
    # Nothing was pruned as unknown to the CRDs: the API holds what the chart rendered.
    assert pod_monitor["spec"] == by_kind["PodMonitor"][0]["spec"]
    assert service_monitor["spec"] == by_kind["ServiceMonitor"][0]["spec"]
    assert rule["spec"] == by_kind["PrometheusRule"][0]["spec"]

    await _operator_creates_bot_worker_and_sender_pods(k8s, kube_namespace, telegram_emulator, operator, db)

    # PodMonitor: every pod in the channel's namespace (bot, worker, sender) is a target, through the
    # container port its endpoints name. Compared until both lists agree: a Deployment may still roll.
    left_out: set[str] = set()

    def every_pod_selected() -> dict[str, Any] | None:
        everything = {p["metadata"]["name"] for p in
                      _plain(k8s, k8s.core.list_namespaced_pod(kube_namespace))["items"]}
        chosen = {p["metadata"]["name"]: p for p in _selected(k8s, "pods", pod_monitor)
                  if p["metadata"]["namespace"] == kube_namespace}
        left_out.clear()
        left_out.update(everything - set(chosen))
        return chosen if set(chosen) == everything else None

    try:
        selected = wait_for(every_pod_selected, timeout=30, interval=0.3,
                            what="the PodMonitor to select every pod of the channel's namespace")
    except WaitTimeout as exc:
        raise AssertionError(f"{exc}; not selected: {sorted(left_out)}") from None
    assert {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in selected.values()} == {
        "bot", "worker", "sender"}
    endpoints = pod_monitor["spec"]["podMetricsEndpoints"]
    assert [(e["port"], e["path"]) for e in endpoints] == [(builders.METRICS_PORT_NAME, "/metrics")]
    for name, pod in selected.items():
        ports = _container_ports(pod["spec"])
        assert ports.get(builders.METRICS_PORT_NAME) == builders.METRICS_PORT, f"{name}: ports {ports}"
        env = {e["name"]: e.get("value") for c in pod["spec"]["containers"] for e in c.get("env", [])}
        assert env["CLARION_METRICS_PORT"] == str(builders.METRICS_PORT), name

    # ServiceMonitor: the operator's and the webhook's Services, each through one of its named ports,
    # whose target is a named container port of the pods behind it.
    services = {s["metadata"]["name"]: s for s in _selected(k8s, "services", service_monitor)}
    release = chart.release_name(release_namespace)
    assert set(services) == {f"{release}-operator-metrics", f"{release}-webhook"}
    endpoint_ports = {e["port"] for e in service_monitor["spec"]["endpoints"]}
    for name, service in services.items():
        [port] = [p for p in service["spec"]["ports"] if p["name"] in endpoint_ports]
        [deployment] = [d for d in by_kind["Deployment"] if service["spec"]["selector"].items()
                        <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert port["targetPort"] in _container_ports(deployment["spec"]["template"]["spec"]), name
