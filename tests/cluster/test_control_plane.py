"""The local control plane is a real Kubernetes: the built version, RBAC with TLS client certificates,
the repository's CRDs established, and the garbage-collector, namespace and Deployment controllers at
work. The `clarion dev cluster` CLI starts and stops one in the background."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from functools import partial
from pathlib import Path

import pytest
import yaml
from clarion_dev.cluster import ControlPlane, ControlPlaneError
from clarion_dev.cluster.launcher import repo_manifests
from clarion_dev.podrunner import PodRunner
from clarion_dev.testing.cluster import KubeApis, model, name_of, process_alive
from clarion_dev.testing.waiting import wait_for
from kubernetes import client
from kubernetes.client import ApiException

pytestmark = pytest.mark.cluster

PY = sys.executable
SLEEP = [PY, "-c", "import time; time.sleep(600)"]








def pods(k8s: KubeApis, namespace: str, selector: str) -> list[client.V1Pod]:
    return list(k8s.core.list_namespaced_pod(namespace, label_selector=selector).items)


def test_control_plane_serves_the_built_version_to_an_admin_certificate(control_plane: ControlPlane) -> None:
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    whoami = json.loads(control_plane.kubectl("auth", "whoami", "-o", "json").stdout)

    assert version["serverVersion"]["gitVersion"] == version["clientVersion"]["gitVersion"]
    assert version["serverVersion"]["gitVersion"].startswith("v1.")
    assert control_plane.server.startswith("https://127.0.0.1:")
    assert "system:masters" in whoami["status"]["userInfo"]["groups"]
    assert control_plane.kubectl("get", "--raw=/readyz").stdout == "ok"


def test_anonymous_requests_are_refused_by_rbac(control_plane: ControlPlane) -> None:
    configuration = client.Configuration()
    configuration.host = control_plane.server
    configuration.ssl_ca_cert = str(control_plane.ca_cert)
    with client.ApiClient(configuration) as anonymous, pytest.raises(ApiException) as refused:
        client.CoreV1Api(anonymous).list_namespace()
    assert refused.value.status == 403
    assert "system:anonymous" in str(refused.value.body)


def test_every_crd_in_the_repository_is_established(control_plane: ControlPlane) -> None:
    names = [
        doc["metadata"]["name"]
        for path in repo_manifests()
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "CustomResourceDefinition"
    ]
    if not names:
        pytest.skip("crds/ holds no CustomResourceDefinition yet")
    for name in names:
        crd = json.loads(control_plane.kubectl("get", "crd", name, "-o", "json").stdout)
        established = [c for c in crd["status"]["conditions"] if c["type"] == "Established"]
        assert established and established[0]["status"] == "True", name


def test_deleting_a_job_in_background_garbage_collects_its_pods(
    k8s: KubeApis, kube_namespace: str, pod_runner: PodRunner
) -> None:
    job = model(client.V1Job, {
        "metadata": {"name": "long"},
        "spec": {"parallelism": 2, "completions": 2, "template": {"spec": {
            "restartPolicy": "Never", "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "main", "image": "ignored", "command": SLEEP}],
        }}},
    })
    k8s.batch.create_namespaced_job(kube_namespace, job)
    wait_for(lambda: len(pods(k8s, kube_namespace, "job-name=long")) == 2, what="two pods")
    names = [name_of(p) for p in pods(k8s, kube_namespace, "job-name=long")]
    pids = [wait_for(partial(pod_runner.pid, name), what=f"{name} running") for name in names]

    k8s.batch.delete_namespaced_job("long", kube_namespace, propagation_policy="Background")

    wait_for(lambda: not pods(k8s, kube_namespace, "job-name=long"), what="the job's pods to be collected")
    wait_for(lambda: not any(process_alive(pid) for pid in pids), what="their processes to stop")


def test_deleting_a_deployment_garbage_collects_replicasets_and_pods(
    k8s: KubeApis, kube_namespace: str, pod_runner: PodRunner
) -> None:
    deployment = model(client.V1Deployment, {
        "metadata": {"name": "api"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "api"}},
            "template": {"metadata": {"labels": {"app": "api"}}, "spec": {
                "terminationGracePeriodSeconds": 2,
                "containers": [{"name": "main", "image": "ignored", "command": SLEEP}],
            }},
        },
    })
    k8s.apps.create_namespaced_deployment(kube_namespace, deployment)
    (pod,) = wait_for(lambda: pods(k8s, kube_namespace, "app=api"), what="the deployment's pod")
    assert pod.metadata is not None and pod.metadata.owner_references
    assert pod.metadata.owner_references[0].kind == "ReplicaSet"
    pid = wait_for(partial(pod_runner.pid, name_of(pod)), what="its process")

    k8s.apps.delete_namespaced_deployment("api", kube_namespace)

    wait_for(
        lambda: not k8s.apps.list_namespaced_replica_set(kube_namespace).items,
        what="the ReplicaSet to be collected",
    )
    wait_for(lambda: not pods(k8s, kube_namespace, "app=api"), what="the pod to be collected")
    wait_for(lambda: not process_alive(pid), what="its process to stop")


def test_deleting_a_namespace_removes_it_with_its_objects(k8s: KubeApis) -> None:
    name = f"doomed-{uuid.uuid4().hex[:8]}"
    k8s.core.create_namespace(model(client.V1Namespace, {"metadata": {"name": name}}))
    k8s.core.create_namespaced_config_map(name, model(client.V1ConfigMap, {"metadata": {"name": "c"}}))

    k8s.core.delete_namespace(name)

    def gone() -> bool:
        try:
            k8s.core.read_namespace(name)
        except ApiException as exc:
            return bool(exc.status == 404)
        return False

    wait_for(gone, timeout=60, what=f"namespace {name} to be finalized")


def test_cluster_cli_starts_once_reports_and_stops(control_plane: ControlPlane, tmp_path: Path) -> None:
    env = {**os.environ, "CLARION_K8S_BIN": str(control_plane.bin_dir)}
    state = tmp_path / "state"

    def clarion(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PY, "-m", "clarion_dev.cli", "dev", "cluster", "--state-dir", str(state), *args],
            capture_output=True, text=True, env=env, timeout=180, check=False,
        )

    first = clarion("up", "--no-crds")
    try:
        assert first.returncode == 0, first.stderr
        assert f"export KUBECONFIG={state / 'kubeconfig'}" in first.stdout
        again = clarion("up", "--no-crds")
        assert again.returncode == 0 and "already up" in again.stdout
        assert clarion("status").returncode == 0
        assert clarion("env").stdout.strip() == f"export KUBECONFIG={state / 'kubeconfig'}"
        supervisor = int((state / "pid").read_text())
        kubectl = [str(control_plane.bin_dir / "kubectl"), f"--kubeconfig={state / 'kubeconfig'}"]
        namespaces = subprocess.run(
            [*kubectl, "get", "ns", "-o", "name"], capture_output=True, text=True, check=True
        )
        assert "namespace/kube-system" in namespaces.stdout.split()
    finally:
        down = clarion("down")
    assert down.returncode == 0
    wait_for(lambda: not process_alive(supervisor), what="the supervisor to exit")
    assert clarion("status").returncode == 1


def test_a_component_that_cannot_start_is_reported_with_its_log(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    broken = tmp_path / "bin"
    broken.mkdir()
    for name in ("etcd", "kube-controller-manager", "kubectl"):
        (broken / name).symlink_to(control_plane.bin_dir / name)
    wrapper = broken / "kube-apiserver"
    wrapper.write_text(f'#!/bin/sh\nexec {control_plane.bin_dir / "kube-apiserver"} --no-such-flag "$@"\n')
    wrapper.chmod(0o755)
    plane = ControlPlane(workdir=tmp_path / "work", binaries=broken)

    with pytest.raises(ControlPlaneError) as failure:
        plane.start(timeout=60)

    message = str(failure.value)
    assert "kube-apiserver exited with code 1" in message
    assert "unknown flag: --no-such-flag" in message
    assert (tmp_path / "work" / "logs" / "kube-apiserver.log").exists()
    assert not plane.pids(), "etcd was stopped again"
