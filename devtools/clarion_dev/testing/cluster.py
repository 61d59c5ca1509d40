"""pytest plugin: a real Kubernetes control plane for the cluster and e2e tiers.

Fixtures:
    control_plane   session: a started ControlPlane with every crds/*.yaml applied (CRDs Established)
    kube_api        an admin kubernetes ApiClient (closed after the test)
    k8s             KubeApis: core, batch, apps, custom, rbac clients on that ApiClient
    kube_namespace  a fresh namespace (its `default` ServiceAccount exists), deleted after the test
    pod_runner      a started PodRunner for that namespace, stopped after the test

A failing test that used `pod_runner` gets the tail of every pod log in its report.

When the binaries are missing and cannot be built (no Go), the tests are skipped with the reason on a
developer machine and fail in CI (CI=true). A control plane that has binaries but cannot start fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import threading
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client as k8s_client
from kubernetes.client import ApiException

from clarion_dev.cluster import BinariesUnavailable, ControlPlane, ControlPlaneError, find_binaries
from clarion_dev.cluster.launcher import repo_manifests, tail
from clarion_dev.podrunner import PodRunner
from clarion_dev.testing.waiting import wait_for

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_control_plane(error: BaseException) -> None:
    """Fail in CI, skip elsewhere, naming what is missing."""
    message = (
        f"the local Kubernetes control plane is unavailable: {error}. "
        "Install Go and run `bash scripts/build-k8s.sh` (or set CLARION_K8S_BIN)."
    )
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


M = TypeVar("M")


def model(cls: type[M], data: dict[str, Any]) -> M:
    """A kubernetes client model built from a plain dict (its typed constructor is awkward for tests)."""
    obj = cls.from_dict(data)  # type: ignore[attr-defined]
    assert obj is not None
    return obj  # type: ignore[no-any-return]


def name_of(obj: k8s_client.V1Pod) -> str:
    assert obj.metadata is not None and obj.metadata.name
    return str(obj.metadata.name)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class KubeApis:
    """Typed API groups on one admin ApiClient."""

    api: k8s_client.ApiClient
    core: k8s_client.CoreV1Api
    batch: k8s_client.BatchV1Api
    apps: k8s_client.AppsV1Api
    custom: k8s_client.CustomObjectsApi
    rbac: k8s_client.RbacAuthorizationV1Api

    @classmethod
    def of(cls, api: k8s_client.ApiClient) -> KubeApis:
        return cls(api=api, core=k8s_client.CoreV1Api(api), batch=k8s_client.BatchV1Api(api),
                   apps=k8s_client.AppsV1Api(api), custom=k8s_client.CustomObjectsApi(api),
                   rbac=k8s_client.RbacAuthorizationV1Api(api))


@pytest.fixture(scope="session")
def control_plane(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    """One control plane for the whole session, with crds/*.yaml applied."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    # The first build takes minutes; let its progress reach the terminal.
    shown = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
    try:
        with shown:
            bin_dir = find_binaries(progress=sys.stderr)
    except BinariesUnavailable as exc:
        require_control_plane(exc)
        raise
    plane = ControlPlane(workdir=tmp_path_factory.mktemp("control-plane"), binaries=bin_dir)
    try:
        plane.start()
    except ControlPlaneError as exc:
        pytest.fail(f"the local control plane did not start: {exc}", pytrace=False)
    try:
        with _sigterm_as_interrupt():
            plane.apply_manifests(repo_manifests())
            yield plane
    finally:
        plane.stop()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (e.g. from `timeout`) into KeyboardInterrupt so teardown stops the control plane."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def kube_api(control_plane: ControlPlane) -> Iterator[k8s_client.ApiClient]:
    with contextlib.closing(control_plane.admin_client()) as api:
        yield api


@pytest.fixture
def k8s(kube_api: k8s_client.ApiClient) -> KubeApis:
    return KubeApis.of(kube_api)


def _namespace_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower().removeprefix("test_")).strip("-")[:40].strip("-")
    return f"{slug or 't'}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def kube_namespace(request: pytest.FixtureRequest, k8s: KubeApis) -> Iterator[str]:
    """A new namespace named after the test, ready for Pods; deleted (not awaited) afterwards."""
    name = _namespace_name(request.node.name)
    meta = k8s_client.V1ObjectMeta(name=name, labels={"clarion.io/test": "true"})
    k8s.core.create_namespace(k8s_client.V1Namespace(metadata=meta))

    def default_service_account() -> bool:
        k8s.core.read_namespaced_service_account("default", name)
        return True

    wait_for(
        default_service_account, timeout=30, what=f"ServiceAccount {name}/default", ignore=(ApiException,)
    )
    try:
        yield name
    finally:
        with contextlib.suppress(ApiException):
            k8s.core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def pod_runner(control_plane: ControlPlane, kube_namespace: str, tmp_path: Path) -> Iterator[PodRunner]:
    """Runs the namespace's Pods as local processes; logs under the test's tmp_path/pod-logs."""
    runner = PodRunner(control_plane.kubeconfig, [kube_namespace], logs_dir=tmp_path / "pod-logs")
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    runner = getattr(item, "funcargs", {}).get("pod_runner")
    if report.when == "call" and report.failed and isinstance(runner, PodRunner):
        for path in sorted(runner.logs_dir.glob("*.log")):
            report.sections.append((f"pod log {path.name}", tail(path, 40)))
    return report


class Kubectl:
    """kubectl in one namespace of a control plane, as a person would run it; a failed command fails
    the test with kubectl's own output."""

    def __init__(self, control_plane: ControlPlane, namespace: str) -> None:
        self.control_plane, self.namespace = control_plane, namespace

    def run(self, *args: str, input_text: str | None = None) -> str:
        result = self.control_plane.kubectl("-n", self.namespace, *args, check=False, input_text=input_text)
        assert result.returncode == 0, result.stdout + result.stderr
        return str(result.stdout)

    def apply(self, obj: dict[str, Any]) -> None:
        self.run("apply", "-f", "-", input_text=json.dumps(obj))

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        out = self.run("get", resource, name, "-o", "json", "--ignore-not-found")
        return json.loads(out) if out.strip() else None
