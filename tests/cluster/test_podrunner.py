"""The pod runner turns Pods of the kubelet-less control plane into local processes that the Job,
ReplicaSet and Deployment controllers see as real: completions, failures, restarts and deletions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from clarion_dev.cluster import ControlPlane
from clarion_dev.podrunner import PodRunner
from clarion_dev.testing.cluster import KubeApis, model, name_of, process_alive
from clarion_dev.testing.waiting import wait_for
from kubernetes import client
from kubernetes.client import ApiException

pytestmark = pytest.mark.cluster

PY = sys.executable
SLEEP = [PY, "-c", "import time; time.sleep(600)"]






def job_body(
    name: str,
    script: str,
    *,
    completions: int = 1,
    parallelism: int = 1,
    backoff_limit: int = 0,
    indexed: bool = False,
    restart_policy: str = "Never",
    env: list[dict[str, Any]] | None = None,
) -> client.V1Job:
    spec: dict[str, Any] = {
        "completions": completions,
        "parallelism": parallelism,
        "backoffLimit": backoff_limit,
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {
                "restartPolicy": restart_policy,
                "terminationGracePeriodSeconds": 2,
                "containers": [{
                    "name": "main", "image": "ignored.local/none", "command": [PY, "-c", script],
                    "env": env or [],
                }],
            },
        },
    }
    if indexed:
        spec["completionMode"] = "Indexed"
    return model(client.V1Job, {"metadata": {"name": name}, "spec": spec})


def finished_job(k8s: KubeApis, namespace: str, name: str, timeout: float = 60) -> client.V1Job:
    """Wait until the Job has a true Complete or Failed condition and return it."""

    def finished() -> client.V1Job | None:
        job = k8s.batch.read_namespaced_job(name, namespace)
        conditions = job.status.conditions or [] if job.status else []
        done = any(c.type in ("Complete", "Failed") and c.status == "True" for c in conditions)
        return job if done else None

    return wait_for(finished, timeout=timeout, what=f"Job {namespace}/{name} to finish")


def condition(job: client.V1Job, kind: str) -> client.V1JobCondition | None:
    assert job.status is not None
    return next((c for c in job.status.conditions or [] if c.type == kind and c.status == "True"), None)


def job_pods(k8s: KubeApis, namespace: str, job: str) -> list[client.V1Pod]:
    return list(k8s.core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items)


def terminated(pod: client.V1Pod) -> client.V1ContainerStateTerminated:
    assert pod.status is not None and pod.status.container_statuses
    state = pod.status.container_statuses[0].state
    assert state is not None and state.terminated is not None
    return state.terminated


def running_pid(runner: PodRunner, pod: str) -> int:
    return wait_for(lambda: runner.pid(pod), timeout=30, what=f"a process for pod {pod}")




def test_pods_that_declare_the_same_metrics_port_all_run_because_the_runner_turns_it_off(
    k8s: KubeApis, kube_namespace: str, pod_runner: PodRunner
) -> None:
    """Every pod the operator creates serves /metrics on port 9090; here all pods share one loopback."""
    script = ("import os, socket, time; port = int(os.environ['CLARION_METRICS_PORT']); print(port); "
              "server = socket.create_server(('0.0.0.0', port)) if port else None; time.sleep(1)")
    k8s.batch.create_namespaced_job(kube_namespace, job_body(
        "metrics", script, completions=2, parallelism=2,
        env=[{"name": "CLARION_METRICS_PORT", "value": "9090"}]))

    job = finished_job(k8s, kube_namespace, "metrics")

    assert job.status is not None and job.status.succeeded == 2 and not job.status.failed
    assert [pod_runner.logs(name_of(pod)).strip() for pod in job_pods(k8s, kube_namespace, "metrics")] == [
        "0", "0"]


def test_job_pod_runs_as_a_local_process_and_the_job_completes(
    k8s: KubeApis, kube_namespace: str, pod_runner: PodRunner, tmp_path: Path
) -> None:
    out = tmp_path / "ran"
    script = f"import pathlib; pathlib.Path({str(out)!r}).write_text('ran'); print('hello from the pod')"
    k8s.batch.create_namespaced_job(kube_namespace, job_body("hello", script))

    job = finished_job(k8s, kube_namespace, "hello")

    assert condition(job, "Complete") is not None
    assert job.status is not None and job.status.succeeded == 1 and not job.status.failed
    assert out.read_text() == "ran"
    (pod,) = job_pods(k8s, kube_namespace, "hello")
    assert pod.status is not None and pod.status.phase == "Succeeded"
    assert (terminated(pod).exit_code, terminated(pod).reason) == (0, "Completed")
    assert "hello from the pod" in pod_runner.logs(name_of(pod))


def test_indexed_job_runs_each_completion_index_exactly_once(
    k8s: KubeApis, kube_namespace: str, pod_runner: PodRunner, tmp_path: Path
) -> None:
    seen = tmp_path / "indexes"
    seen.mkdir()
    script = (
        "import os, pathlib, uuid; "
        f"pathlib.Path({str(seen)!r}, os.environ['JOB_COMPLETION_INDEX'] + '.' + uuid.uuid4().hex).touch()"
    )
    k8s.batch.create_namespaced_job(
        kube_namespace, job_body("shards", script, completions=3, parallelism=2, indexed=True)
    )

    job = finished_job(k8s, kube_namespace, "shards")

    assert condition(job, "Complete") is not None
    assert job.status is not None and job.status.succeeded == 3
    assert job.status.completed_indexes == "0-2"
    assert sorted(p.name.split(".")[0] for p in seen.iterdir()) == ["0", "1", "2"]


def test_failing_pod_is_retried_per_backoff_limit_then_the_job_fails(
    k8s: KubeApis, kube_namespace: str, pod_runner: PodRunner, tmp_path: Path
) -> None:
    attempts = tmp_path / "attempts"
    script = f"open({str(attempts)!r}, 'a').write('x\\n'); raise SystemExit(3)"
    k8s.batch.create_namespaced_job(kube_namespace, job_body("flaky", script, backoff_limit=1))

    job = finished_job(k8s, kube_namespace, "flaky", timeout=120)

    failed = condition(job, "Failed")
    assert failed is not None and failed.reason == "BackoffLimitExceeded"
    assert job.status is not None and job.status.failed == 2 and not job.status.succeeded
    assert attempts.read_text().count("x") == 2
    pods = job_pods(k8s, kube_namespace, "flaky")
    assert [(terminated(p).exit_code, terminated(p).reason) for p in pods] == [(3, "Error")] * 2


def test_on_failure_restarts_the_container_in_place_and_counts_restarts(
    k8s: KubeApis, kube_namespace: str, pod_runner: PodRunner, tmp_path: Path
) -> None:
    attempts = tmp_path / "attempts"
    script = (
        f"f = open({str(attempts)!r}, 'a+'); f.write('x'); f.seek(0); n = len(f.read()); "
        "raise SystemExit(0 if n >= 3 else 1)"
    )
    k8s.batch.create_namespaced_job(
        kube_namespace, job_body("retry", script, backoff_limit=5, restart_policy="OnFailure")
    )

    job = finished_job(k8s, kube_namespace, "retry")

    assert condition(job, "Complete") is not None
    (pod,) = job_pods(k8s, kube_namespace, "retry")
    assert pod.status is not None and pod.status.container_statuses
    assert pod.status.container_statuses[0].restart_count == 2
    assert attempts.read_text() == "xxx"


def test_sigkilled_pod_counts_as_a_failure_and_is_replaced(
    k8s: KubeApis, kube_namespace: str, pod_runner: PodRunner, tmp_path: Path
) -> None:
    marker = tmp_path / "first-attempt"
    script = (
        f"import pathlib, time; m = pathlib.Path({str(marker)!r})\n"
        "if m.exists(): raise SystemExit(0)\n"
        "m.touch(); time.sleep(600)"
    )
    k8s.batch.create_namespaced_job(kube_namespace, job_body("victim", script, backoff_limit=2))
    first = name_of(wait_for(lambda: job_pods(k8s, kube_namespace, "victim"), what="the first pod")[0])
    pid = running_pid(pod_runner, first)
    wait_for(marker.exists, what="the first attempt to start")

    os.kill(pid, signal.SIGKILL)

    job = finished_job(k8s, kube_namespace, "victim")
    assert condition(job, "Complete") is not None
    assert job.status is not None and (job.status.failed, job.status.succeeded) == (1, 1)
    killed = k8s.core.read_namespaced_pod(first, kube_namespace)
    assert killed.status is not None and killed.status.phase == "Failed"
    assert (terminated(killed).exit_code, terminated(killed).reason) == (137, "Error")


def test_pod_environment_comes_from_values_secrets_configmaps_and_fields(
    k8s: KubeApis, kube_namespace: str, pod_runner: PodRunner
) -> None:
    k8s.core.create_namespaced_secret(kube_namespace, model(client.V1Secret, {
        "metadata": {"name": "creds"}, "stringData": {"token": "s3cret", "user": "bob"},
    }))
    k8s.core.create_namespaced_config_map(kube_namespace, model(client.V1ConfigMap, {
        "metadata": {"name": "settings"}, "data": {"level": "debug"},
    }))
    names = ["GREETING", "URL", "TOKEN", "LEVEL", "POD", "NS", "UID", "TEAM", "CREDS_user", "CREDS_token"]
    script = f"import json, os; print(json.dumps({{k: os.environ.get(k) for k in {names!r}}}))"
    pod = model(client.V1Pod, {
        "metadata": {"name": "env", "labels": {"team": "growth"}},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": "ignored", "command": [PY, "-c", script],
            "envFrom": [{"secretRef": {"name": "creds"}, "prefix": "CREDS_"}],
            "env": [
                {"name": "GREETING", "value": "hi"},
                {"name": "URL", "value": "http://$(GREETING)/$$(GREETING)/$(MISSING)"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "level"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}}},
            ],
        }]},
    })
    created = k8s.core.create_namespaced_pod(kube_namespace, pod)

    def succeeded() -> bool:
        status = k8s.core.read_namespaced_pod("env", kube_namespace).status
        return status is not None and status.phase == "Succeeded"

    wait_for(succeeded, what="pod env to succeed")
    seen = json.loads(pod_runner.logs("env"))
    assert created.metadata is not None
    assert seen == {
        "GREETING": "hi", "URL": "http://hi/$(GREETING)/$(MISSING)", "TOKEN": "s3cret", "LEVEL": "debug",
        "POD": "env", "NS": kube_namespace, "UID": created.metadata.uid, "TEAM": "growth",
        "CREDS_user": "bob", "CREDS_token": "s3cret",
    }


def test_pod_waits_for_a_missing_secret_then_runs(
    k8s: KubeApis, kube_namespace: str, pod_runner: PodRunner
) -> None:
    pod = model(client.V1Pod, {
        "metadata": {"name": "later"},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": "ignored", "command": [PY, "-c", "import os; print(os.environ['KEY'])"],
            "env": [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "late", "key": "k"}}}],
        }]},
    })
    k8s.core.create_namespaced_pod(kube_namespace, pod)

    def waiting_reason() -> str | None:
        status = k8s.core.read_namespaced_pod("later", kube_namespace).status
        if status is None or not status.container_statuses:
            return None
        state = status.container_statuses[0].state
        return state.waiting.reason if state and state.waiting else None

    first_reason = wait_for(waiting_reason, what="a waiting reason")
    assert first_reason in ("ContainerCreating", "CreateContainerConfigError")
    wait_for(lambda: waiting_reason() == "CreateContainerConfigError", what="CreateContainerConfigError")
    assert k8s.core.read_namespaced_pod("later", kube_namespace).status.phase == "Pending"  # type: ignore[union-attr]

    k8s.core.create_namespaced_secret(
        kube_namespace, model(client.V1Secret, {"metadata": {"name": "late"}, "stringData": {"k": "arrived"}})
    )

    wait_for(lambda: pod_runner.logs("later").strip() == "arrived", what="the pod to print the secret")


def test_deleting_a_pod_terminates_its_process_and_removes_the_pod(
    k8s: KubeApis, kube_namespace: str, pod_runner: PodRunner, tmp_path: Path
) -> None:
    note, ready = tmp_path / "sigterm", tmp_path / "ready"
    script = (
        "import pathlib, signal, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path({str(note)!r}).touch(), exit(0)))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(600)"
    )
    pod = model(client.V1Pod, {
        "metadata": {"name": "sleeper"},
        "spec": {"restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
                 "containers": [{"name": "main", "image": "ignored", "command": [PY, "-c", script]}]},
    })
    k8s.core.create_namespaced_pod(kube_namespace, pod)
    pid = running_pid(pod_runner, "sleeper")
    wait_for(ready.exists, what="the process to install its SIGTERM handler")

    k8s.core.delete_namespaced_pod("sleeper", kube_namespace)

    wait_for(lambda: not process_alive(pid), what="the process to end")
    assert note.exists(), "the process got SIGTERM first"

    def gone() -> bool:
        try:
            k8s.core.read_namespaced_pod("sleeper", kube_namespace)
        except ApiException as exc:
            return bool(exc.status == 404)
        return False

    wait_for(gone, what="the pod object to disappear")


def test_deployment_scaled_to_zero_stops_its_processes(
    k8s: KubeApis, kube_namespace: str, pod_runner: PodRunner
) -> None:
    deployment = model(client.V1Deployment, {
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"terminationGracePeriodSeconds": 2, "containers": [
                    {"name": "main", "image": "ignored", "command": SLEEP},
                ]},
            },
        },
    })
    k8s.apps.create_namespaced_deployment(kube_namespace, deployment)

    def available() -> int:
        status = k8s.apps.read_namespaced_deployment("web", kube_namespace).status
        return (status.available_replicas or 0) if status else 0

    wait_for(lambda: available() == 2, what="2 available replicas")
    names = [name_of(p) for p in k8s.core.list_namespaced_pod(kube_namespace, label_selector="app=web").items]
    pids = [running_pid(pod_runner, name) for name in names]
    assert len(set(pids)) == 2

    k8s.apps.patch_namespaced_deployment_scale("web", kube_namespace, {"spec": {"replicas": 0}})

    wait_for(lambda: not any(process_alive(pid) for pid in pids), what="both processes to stop")
    wait_for(
        lambda: not k8s.core.list_namespaced_pod(kube_namespace, label_selector="app=web").items,
        what="the pods to disappear",
    )


def test_suspending_a_job_stops_its_running_pod(
    k8s: KubeApis, kube_namespace: str, pod_runner: PodRunner
) -> None:
    k8s.batch.create_namespaced_job(kube_namespace, job_body("paused", SLEEP[2]))
    name = name_of(wait_for(lambda: job_pods(k8s, kube_namespace, "paused"), what="a pod")[0])
    pid = running_pid(pod_runner, name)

    k8s.batch.patch_namespaced_job("paused", kube_namespace, {"spec": {"suspend": True}})

    wait_for(lambda: not process_alive(pid), what="the process to stop")
    wait_for(lambda: not job_pods(k8s, kube_namespace, "paused"), what="the pod to disappear")
    job = k8s.batch.read_namespaced_job("paused", kube_namespace)
    assert condition(job, "Suspended") is not None


def test_podrunner_command_runs_selected_pods_until_terminated(
    control_plane: ControlPlane, k8s: KubeApis, kube_namespace: str, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    runner = subprocess.Popen(
        [PY, "-m", "clarion_dev.cli", "dev", "podrunner", "--kubeconfig", str(control_plane.kubeconfig),
         "--namespace", kube_namespace, "--selector", "run=me", "--logs-dir", str(logs), "--env", "WHO=cli"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        for name, labels in (("picked", {"run": "me"}), ("ignored", {"run": "not-me"})):
            k8s.core.create_namespaced_pod(kube_namespace, model(client.V1Pod, {
                "metadata": {"name": name, "labels": labels},
                "spec": {"restartPolicy": "Never", "containers": [{
                    "name": "main", "image": "ignored", "command": ["/bin/sh", "-c", "echo hello $WHO"],
                }]},
            }))

        def phase(name: str) -> str | None:
            status = k8s.core.read_namespaced_pod(name, kube_namespace).status
            return status.phase if status else None

        wait_for(lambda: phase("picked") == "Succeeded", what="the selected pod to succeed")
        assert (logs / f"{kube_namespace}_picked_main.log").read_text() == "hello cli\n"
        assert phase("ignored") == "Pending"
    finally:
        runner.terminate()
        _, stderr = runner.communicate(timeout=30)
    assert runner.returncode == 0, stderr
