"""pytest plugin: `clarion-operator` as a child process watching the test's namespace.

The operator runs with the chart's RBAC (a Role in the watched namespace, through
`clarion_dev.testing.chart.operator_kubeconfig`), not as an admin, against the test's own Postgres
database and Redis. Fixture: `operator`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clarion_dev.cluster import ControlPlane
from clarion_dev.testing.chart import operator_kubeconfig


class Operator:
    """`clarion-operator` as a child process; its log is appended to one file across restarts."""

    def __init__(self, env: dict[str, str], log: Path, namespace: str) -> None:
        self.env, self.log_path, self.namespace = env, log, namespace
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("clarion-operator")), "--namespace", self.namespace],
                env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """SIGKILL: the operator dies without any cleanup, as on a node failure."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self, lines: int = 80) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


OperatorFactory = Callable[[dict[str, str]], Operator]


@pytest.fixture
def operator_factory(control_plane: ControlPlane, kube_namespace: str, database_url: str, redis_url: str,
                     tmp_path: Path) -> Iterator[OperatorFactory]:
    """Start `clarion-operator` with extra environment; every one started is stopped after the test."""
    # The operator runs with the chart's RBAC (a Role in the watched namespace), not as an admin.
    watch = f"operator.watchNamespaces={{{kube_namespace}}}"
    kubeconfig = operator_kubeconfig(control_plane, kube_namespace, (watch,))
    started: list[Operator] = []

    def start(extra_env: dict[str, str]) -> Operator:
        env = dict(os.environ) | {
            "KUBECONFIG": str(kubeconfig),
            "CLARION_DATABASE_URL": database_url,
            "CLARION_REDIS_URL": redis_url,
            "CLARION_LOG_FORMAT": "console",
            "CLARION_CHANNEL_RETRY_SECONDS": "5",
        } | extra_env
        op = Operator(env, tmp_path / f"operator-{len(started)}.log", kube_namespace)
        started.append(op)
        op.start()
        return op

    try:
        yield start
    finally:
        for op in started:
            op.stop()


@pytest.fixture
def operator(operator_factory: OperatorFactory) -> Operator:
    """`clarion-operator` watching the test's namespace, with the test's database and Redis."""
    return operator_factory({})
