"""pytest plugin: the node tier, Clarion's own images in real containers on a real node.

Fixtures:
    node_cluster     session: a control plane listening on the node's bridge, and a Node
                     (clarion_dev.cluster.node) with the images of scripts/build-image.sh imported
                     (built once, cached by content hash)
    clarion_release  session: charts/clarion installed with helm on that node (bundled Postgres and
                     Redis from the built images, the operator, the webhook), ready (`helm --wait`)
    node_db          an asyncpg pool on that release's bundled Postgres, reached at its pod's address
    node_emulator    the Telegram emulator listening on the node's bridge address, where pods reach it
    node_namespace   a fresh namespace of the node's cluster, deleted after the test

The node needs root, Debian's containerd, runc, CNI plugins, buildah and mmdebstrap, and Go (which
scripts/bootstrap.sh installs or builds). When they are missing the tests fail in CI (CI=true) and are
skipped elsewhere, naming what is missing. A failing test gets the pods and their logs in its report.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass

import asyncpg
import pytest

from clarion_dev.cluster import BinariesUnavailable, ControlPlane, ControlPlaneError, find_binaries
from clarion_dev.cluster.launcher import tail
from clarion_dev.cluster.node import (
    NODE_CONTROLLERS,
    NODE_IP,
    Image,
    Node,
    NodeError,
    build_images,
    bundled_database_url,
    chart_values,
    missing_host_parts,
)
from clarion_dev.telegram import Emulator
from clarion_dev.testing.chart import CHART_DIR, Helm
from clarion_dev.testing.cluster import IN_CI, KubeApis
from clarion_dev.testing.telegram import DEFAULT_SCALE

RELEASE, RELEASE_NAMESPACE = "clarion", "clarion-system"
IMAGE_TOOLS = ("buildah", "mmdebstrap", "gcc", "go")


def require_node(reason: str) -> None:
    """Fail in CI, skip elsewhere."""
    message = f"the real node is unavailable: {reason}. Run `bash scripts/bootstrap.sh` as root."
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@dataclass
class NodeCluster:
    """The node's control plane, the node, the images it holds, and helm for it."""

    control_plane: ControlPlane
    node: Node
    images: dict[str, Image]
    helm: Helm

    def kubectl(self, *args: str, check: bool = True) -> str:
        return self.control_plane.kubectl(*args, check=check).stdout

    def container_log(self, namespace: str, pod_prefix: str, container: str, lines: int = 80) -> str:
        """The kubelet's log files of the containers of pods named `pod_prefix`*, oldest first."""
        logs_dir = self.node.workdir / "pod-logs"
        files = sorted(logs_dir.glob(f"{namespace}_{pod_prefix}*/{container}/*.log"),
                       key=lambda p: p.stat().st_mtime)
        return "\n".join(f"--- {f.relative_to(logs_dir)} ---\n{tail(f, lines)}" for f in files) or (
            f"(no log of {namespace}/{pod_prefix}*/{container})")

    def describe(self, namespace: str | None = None) -> str:
        """Pods and their recent warnings: what a failing test's report needs first."""
        scope = ["-n", namespace] if namespace else ["-A"]
        pods = self.kubectl("get", "pods", *scope, "-o", "wide", check=False)
        events = self.kubectl("get", "events", *scope, "--field-selector", "type=Warning", check=False)
        return f"--- pods ---\n{pods}\n--- warnings ---\n{events}"


@dataclass
class Release:
    """The chart installed on the node; its operator's log is the log a campaign wait shows."""

    cluster: NodeCluster
    namespace: str
    name: str

    def log(self, lines: int = 80) -> str:
        return self.cluster.container_log(self.namespace, f"{self.name}-operator", "operator", lines)

    def database_url(self) -> str:
        plane = self.cluster.control_plane
        return bundled_database_url(plane.bin_dir, plane.kubeconfig, self.name, self.namespace)


@pytest.fixture(scope="session")
def node_cluster(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    if os.geteuid() != 0:
        require_node("it runs containers, so it must run as root")
    missing = missing_host_parts() + [tool for tool in IMAGE_TOOLS if shutil.which(tool) is None]
    if missing:
        require_node(f"missing {', '.join(missing)}")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    shown = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
    try:
        with shown:
            bin_dir = find_binaries(progress=sys.stderr)
            images = build_images(progress=sys.stderr)
    except (BinariesUnavailable, NodeError) as exc:
        require_node(str(exc))
        raise
    Node.prepare_network()
    plane = ControlPlane(workdir=tmp_path_factory.mktemp("node-control-plane"), binaries=bin_dir,
                         address=NODE_IP, controllers=NODE_CONTROLLERS)
    try:
        plane.start()
    except ControlPlaneError as exc:
        pytest.fail(f"the node's control plane did not start: {exc}", pytrace=False)
    pause = images.pop("pause")
    node = Node(plane, bin_dir, tmp_path_factory.mktemp("node"), pause=pause, images=list(images.values()))
    try:
        node.start()
    except NodeError as exc:
        plane.stop()
        pytest.fail(f"the node did not start: {exc}", pytrace=False)
    helm = Helm(bin_dir / "helm", plane.kubeconfig, tmp_path_factory.mktemp("helm"))
    try:
        yield NodeCluster(plane, node, {**images, "pause": pause}, helm)
    finally:
        node.stop()
        plane.stop()


@pytest.fixture(scope="session")
def clarion_release(node_cluster: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    values = tmp_path_factory.mktemp("release") / "values.json"
    values.write_text(json.dumps(chart_values(node_cluster.images)))
    installed = node_cluster.helm("install", RELEASE, str(CHART_DIR), "-n", RELEASE_NAMESPACE,
                                  "--create-namespace", "-f", str(values), "--wait", "--timeout", "5m",
                                  check=False, timeout=330)
    release = Release(node_cluster, RELEASE_NAMESPACE, RELEASE)
    if installed.returncode != 0:
        pytest.fail(f"helm install on the node failed:\n{installed.stderr}\n{node_cluster.describe()}\n"
                    f"--- operator ---\n{release.log(40)}", pytrace=False)
    yield release
    node_cluster.helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", check=False, timeout=180)


@pytest.fixture
async def node_db(clarion_release: Release) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(clarion_release.database_url(), min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def node_emulator() -> AsyncIterator[Emulator]:
    emulator = Emulator(limits="scaled", scale=DEFAULT_SCALE)
    await emulator.start(host=NODE_IP)
    try:
        yield emulator
    finally:
        await emulator.stop()


@pytest.fixture
def node_namespace(node_cluster: NodeCluster) -> Iterator[str]:
    name = f"node-{uuid.uuid4().hex[:8]}"
    node_cluster.kubectl("create", "namespace", name)
    yield name
    node_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def node_apis(node_cluster: NodeCluster) -> Iterator[KubeApis]:
    with contextlib.closing(node_cluster.control_plane.admin_client()) as api:
        yield KubeApis.of(api)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed node test's report: the pods, their warnings, and the operator's log."""
    report = yield
    funcargs = getattr(item, "funcargs", {})
    cluster, release = funcargs.get("node_cluster"), funcargs.get("clarion_release")
    if report.when == "call" and report.failed and isinstance(cluster, NodeCluster):
        report.sections.append(("node", cluster.describe()))
        if isinstance(release, Release):
            report.sections.append(("operator log", release.log(30)))
    return report
