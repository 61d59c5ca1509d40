"""The chart installed with helm on a real node: every pod a container of the built images, as the
chart's security settings say, and `helm test` passing."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from clarion_dev.testing.node import NodeCluster, Release

pytestmark = pytest.mark.node


def _pods(cluster: NodeCluster, namespace: str) -> list[dict[str, Any]]:
    pods: dict[str, Any] = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json"))
    return list(pods["items"])


def _process(cluster: NodeCluster, container_id: str) -> tuple[dict[str, str], str]:
    """/proc/<pid>/status fields and the mount options of `/` of a running container's first process."""
    pid = cluster.node.task_pid(container_id.removeprefix("containerd://"))
    assert pid is not None, f"{container_id} is not running"
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":\t" in line)
    root = next(line.split()[3] for line in Path(f"/proc/{pid}/mounts").read_text().splitlines()
                if line.split()[1] == "/")
    return status, root


def test_the_chart_runs_in_containers_of_the_built_images_as_its_security_settings_say(
    node_cluster: NodeCluster, clarion_release: Release,
) -> None:
    pods = _pods(node_cluster, clarion_release.namespace)
    components = sorted(p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods)
    assert components == ["operator", "postgresql", "redis", "webhook", "webhook"]
    expected_uid = {"operator": "10001", "webhook": "10001", "postgresql": "70", "redis": "999"}
    for pod in pods:
        component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        assert pod["status"]["phase"] == "Running", pod["status"]
        (container,) = pod["status"]["containerStatuses"]
        assert container["ready"], container
        assert container["image"] == node_cluster.images[
            "clarion" if component in ("operator", "webhook") else component].ref
        status, root = _process(node_cluster, container["containerID"])
        # The kernel's view of the process: its uids, no capabilities, no privilege gain, a read-only /.
        assert status["Uid"].split() == [expected_uid[component]] * 4, (component, status["Uid"])
        assert int(status["CapEff"], 16) == 0, (component, status["CapEff"])
        assert status["NoNewPrivs"].strip() == "1", component
        assert status["Seccomp"].strip() == "2", component  # filter mode: the RuntimeDefault profile
        assert root.split(",")[0] == "ro", (component, root)


def test_helm_test_passes_and_the_operator_serves_its_probes_and_metrics(
    node_cluster: NodeCluster, clarion_release: Release,
) -> None:
    # The test pod asks the webhook's Service for /readyz, which answers 200 only with Postgres and Redis.
    tested = node_cluster.helm("test", clarion_release.name, "-n", clarion_release.namespace, timeout=180)
    assert "Phase:          Succeeded" in tested.stdout, tested.stdout

    (operator,) = [p for p in _pods(node_cluster, clarion_release.namespace)
                   if p["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"]
    ports = {p["name"]: p["containerPort"] for p in operator["spec"]["containers"][0]["ports"]}
    address = operator["status"]["podIP"]
    with urllib.request.urlopen(f"http://{address}:{ports['metrics']}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    assert "clarion_" in metrics
    with urllib.request.urlopen(f"http://{address}:{ports['health']}/healthz", timeout=10) as answer:
        assert answer.status == 200
