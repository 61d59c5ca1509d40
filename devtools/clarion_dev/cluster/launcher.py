"""Start and stop a local Kubernetes control plane: etcd, kube-apiserver and kube-controller-manager.

The binaries come from scripts/build-k8s.sh (built from Go modules and cached outside the repository)
or from the directory named by CLARION_K8S_BIN. Everything listens on free ports of `address`
(loopback unless a real node needs the apiserver on its bridge); certificates are generated per start.
Alone, it has no kubelet and no scheduler and clarion_dev.podrunner runs Pods; clarion_dev.cluster.node
adds a real node (containerd, kubelet, kube-scheduler, kube-proxy, CoreDNS) beside it.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from kubernetes import client as k8s_client

from clarion_dev.cluster import certs
from clarion_dev.cluster.kubeconfig import write_kubeconfig
from clarion_dev.net import free_port
from clarion_dev.testing.processes import stop_popen

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-k8s.sh"
REQUIRED_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
CONTROLLERS = (
    "job-controller",
    "cronjob-controller",
    "ttl-after-finished-controller",
    "garbage-collector-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "disruption-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "validatingadmissionpolicy-status-controller",
)
_STOP_GRACE_SECONDS = 15.0


class BinariesUnavailable(RuntimeError):
    """The control-plane binaries are not built and cannot be built here (for example: no Go)."""


class ControlPlaneError(RuntimeError):
    """A component failed to start or to become ready; the message carries the tail of its logs."""


def _missing(bin_dir: Path) -> list[str]:
    return [name for name in REQUIRED_BINARIES if not os.access(bin_dir / name, os.X_OK)]


def find_binaries(progress: IO[str] | None = None) -> Path:
    """The directory holding the control-plane binaries, building them on first use.

    CLARION_K8S_BIN wins when set. Otherwise scripts/build-k8s.sh is run: it prints the cached
    directory at once when the binaries exist and builds them (with progress on `progress`, default
    stderr) when they do not.
    """
    override = os.environ.get("CLARION_K8S_BIN")
    if override:
        bin_dir = Path(override)
        if missing := _missing(bin_dir):
            raise BinariesUnavailable(f"CLARION_K8S_BIN={override} lacks {', '.join(missing)}")
        return bin_dir
    if not BUILD_SCRIPT.is_file():
        raise BinariesUnavailable(f"{BUILD_SCRIPT} not found; set CLARION_K8S_BIN to a directory of binaries")
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        stdout=subprocess.PIPE,
        stderr=progress if progress is not None else None,
        text=True,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        hint = "" if shutil.which("go") else " (Go is not installed)"
        raise BinariesUnavailable(f"scripts/build-k8s.sh failed with exit code {result.returncode}{hint}")
    bin_dir = Path(lines[-1])
    if missing := _missing(bin_dir):
        raise BinariesUnavailable(f"{bin_dir} lacks {', '.join(missing)} after scripts/build-k8s.sh")
    return bin_dir




def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file, or a note that it does not exist."""
    if not path.exists():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_kubectl(
    bin_dir: Path, kubeconfig: Path, *args: str, check: bool = True, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `bin_dir`/kubectl with `kubeconfig`; raise ControlPlaneError on failure when `check`."""
    result = subprocess.run(
        [str(bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True, text=True, input=input_text, check=False,
    )
    if check and result.returncode != 0:
        raise ControlPlaneError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def apply_manifests(
    bin_dir: Path, kubeconfig: Path, paths: Sequence[Path], timeout: float = 60.0
) -> list[str]:
    """Server-side apply YAML files; wait until every CRD among them is Established.

    Returns the object names kubectl reported (for example `customresourcedefinition.apiextensions.k8s.io/x`).
    """
    if not paths:
        return []
    args = ["apply", "--server-side", "--force-conflicts", "--field-manager=clarion-dev", "-o", "name"]
    for path in paths:
        args += ["-f", str(path)]
    applied = run_kubectl(bin_dir, kubeconfig, *args).stdout.split()
    crds = [name for name in applied if name.startswith("customresourcedefinition")]
    if crds:
        wait = ("wait", "--for=condition=Established", f"--timeout={int(timeout)}s")
        run_kubectl(bin_dir, kubeconfig, *wait, *crds)
    return applied


def repo_manifests(directory: Path = REPO_ROOT / "crds") -> list[Path]:
    """The YAML files in crds/ (CRDs and ValidatingAdmissionPolicies), sorted by name."""
    return sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])


class ControlPlane:
    """etcd + kube-apiserver (RBAC, TLS, service-account tokens) + kube-controller-manager on loopback.

    Use as a context manager or call start()/stop(). start() blocks until /readyz answers ok and the
    controller manager has created the `default` ServiceAccount; it raises ControlPlaneError with the
    tail of each component's log otherwise. From async code, run start()/stop() via asyncio.to_thread.
    """

    def __init__(
        self, workdir: Path | None = None, binaries: Path | None = None, address: str = "127.0.0.1",
        controllers: Sequence[str] = CONTROLLERS,
    ) -> None:
        self._own_workdir = workdir is None
        self.address = address
        self.controllers = tuple(controllers)
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="clarion-cp-"))
        self._binaries = binaries
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._failed = False
        self.server = ""
        self.ready_seconds: float | None = None
        self.logs_dir = self.workdir / "logs"
        self.pki_dir = self.workdir / "pki"
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.ca_cert = self.pki_dir / "ca.crt"
        self._admin: certs.KeyPair | None = None
        self._ca: certs.KeyPair | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        if self._binaries is None:
            self._binaries = find_binaries()
        return self._binaries

    @property
    def running(self) -> bool:
        return bool(self._procs) and all(p.poll() is None for p in self._procs.values())

    def pids(self) -> dict[str, int]:
        """Process ids of the running components, by name."""
        return {name: p.pid for name, p in self._procs.items() if p.poll() is None}

    def start(self, timeout: float = 90.0) -> ControlPlane:
        """Generate certificates, start the three components and wait until they serve."""
        if self._procs:
            raise ControlPlaneError("control plane already started")
        bin_dir = self.bin_dir
        started = time.monotonic()
        deadline = started + timeout
        for sub in ("pki", "etcd-data", "logs", "apiserver-cert-dir"):
            shutil.rmtree(self.workdir / sub, ignore_errors=True)
            (self.workdir / sub).mkdir(parents=True)
        (self.workdir / "etcd-data").chmod(0o700)
        try:
            etcd_client, etcd_peer, secure_port = free_port(), free_port(), free_port()
            self.server = f"https://{self.address}:{secure_port}"
            self._spawn("etcd", [
                str(bin_dir / "etcd"),
                "--name=clarion",
                f"--data-dir={self.workdir / 'etcd-data'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=clarion=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ])
            # etcd needs no certificates: make them while it starts.
            pki = self._make_pki()
            write_kubeconfig(
                self.kubeconfig, server=self.server, ca_cert=self.ca_cert, client=pki["admin"], user="admin"
            )
            write_kubeconfig(
                self.workdir / "controller-manager.kubeconfig", server=self.server, ca_cert=self.ca_cert,
                client=pki["manager"], user="system:kube-controller-manager",
            )
            self._wait("etcd /health", deadline, lambda: self._etcd_healthy(etcd_client))
            self._spawn("kube-apiserver", [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                f"--secure-port={secure_port}",
                f"--cert-dir={self.workdir / 'apiserver-cert-dir'}",
                f"--tls-cert-file={pki['serving'].cert}",
                f"--tls-private-key-file={pki['serving'].key}",
                f"--client-ca-file={self.ca_cert}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki['sa'].cert}",
                f"--service-account-signing-key-file={pki['sa'].key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                # Node: a kubelet (clarion_dev.cluster.node) may touch only its own node and pods.
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={pki['kubelet-client'].cert}",
                f"--kubelet-client-key={pki['kubelet-client'].key}",
                f"--kubelet-certificate-authority={self.ca_cert}",
                "--kubelet-preferred-address-types=InternalIP",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
            ])
            self._spawn("kube-controller-manager", [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.workdir / 'controller-manager.kubeconfig'}",
                "--secure-port=0",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--controllers={','.join(self.controllers)}",
                f"--service-account-private-key-file={pki['sa'].key}",
                f"--root-ca-file={self.ca_cert}",
                "--cluster-name=clarion-local",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--concurrent-job-syncs=10",
            ])
            self._wait("kube-apiserver /readyz", deadline, lambda: self._get("/readyz")[0] == 200)
            self._wait(
                "kube-controller-manager to create the default ServiceAccount",
                deadline,
                lambda: self._get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
            )
        except BaseException:
            self._failed = True
            self.stop()
            raise
        self.ready_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop the components in reverse start order (SIGTERM, wait, SIGKILL). Safe to call twice.

        One at a time: kube-apiserver shuts down in about a second while etcd is still there to
        answer, and waits much longer once etcd is gone.
        """
        for proc in reversed(self._procs.values()):
            stop_popen(proc, grace=_STOP_GRACE_SECONDS)
        self._procs.clear()
        if self._own_workdir and not self._failed:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- clients -------------------------------------------------------------------------------

    def admin_client(self) -> k8s_client.ApiClient:
        """A kubernetes ApiClient authenticated as a member of system:masters."""
        assert self._admin is not None, "start() first"
        configuration = k8s_client.Configuration()
        configuration.host = self.server
        configuration.ssl_ca_cert = str(self.ca_cert)
        configuration.cert_file = str(self._admin.cert)
        configuration.key_file = str(self._admin.key)
        return k8s_client.ApiClient(configuration)

    def kubectl(
        self, *args: str, check: bool = True, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the cached kubectl against this control plane with the admin kubeconfig."""
        return run_kubectl(self.bin_dir, self.kubeconfig, *args, check=check, input_text=input_text)

    def apply_manifests(self, paths: Sequence[Path], timeout: float = 60.0) -> list[str]:
        """Server-side apply YAML files and wait for their CRDs (see the module function)."""
        return apply_manifests(self.bin_dir, self.kubeconfig, paths, timeout)

    # -- internals -----------------------------------------------------------------------------

    def _make_pki(self) -> dict[str, certs.KeyPair]:
        ca = self._ca = certs.make_ca(self.pki_dir)
        serving = certs.issue(
            ca, self.pki_dir, "kube-apiserver",
            common_name="kube-apiserver",
            server_names=(
                "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            server_ips=tuple(dict.fromkeys(("127.0.0.1", "10.0.0.1", self.address))),
        )
        self._admin = certs.issue(
            ca, self.pki_dir, "admin", common_name="clarion-admin", organizations=("system:masters",)
        )
        manager = certs.issue(
            ca, self.pki_dir, "controller-manager", common_name="system:kube-controller-manager"
        )
        # kubectl logs/exec: the apiserver's client certificate at a kubelet (system:masters for its authz).
        kubelet_client = certs.issue(
            ca, self.pki_dir, "apiserver-kubelet-client", common_name="kube-apiserver-kubelet-client",
            organizations=("system:masters",),
        )
        sa = certs.make_signing_key(self.pki_dir)
        return {"serving": serving, "admin": self._admin, "manager": manager, "sa": sa,
                "kubelet-client": kubelet_client}

    def issue_client(self, name: str, common_name: str, organizations: tuple[str, ...] = ()) -> Path:
        """A kubeconfig for a new client certificate of this control plane's CA (a node component's)."""
        assert self._ca is not None, "start() first"
        key_pair = certs.issue(
            self._ca, self.pki_dir, name,
            common_name=common_name, organizations=organizations,
        )
        path = self.workdir / f"{name}.kubeconfig"
        write_kubeconfig(path, server=self.server, ca_cert=self.ca_cert, client=key_pair, user=common_name)
        return path

    def issue_serving(self, name: str, names: tuple[str, ...], ips: tuple[str, ...]) -> certs.KeyPair:
        """A serving certificate of this control plane's CA (the kubelet's, which the apiserver checks)."""
        assert self._ca is not None, "start() first"
        return certs.issue(
            self._ca, self.pki_dir, name,
            common_name=names[0], server_names=names, server_ips=ips,
        )

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.logs_dir / f"{name}.log").open("ab")
        try:
            self._procs[name] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()

    def _wait(self, what: str, deadline: float, check: Callable[[], bool]) -> None:
        while True:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise ControlPlaneError(
                        f"{name} exited with code {proc.returncode} while waiting for {what}\n"
                        + self.diagnostics()
                    )
            try:
                if check():
                    return
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"timed out waiting for {what}\n{self.diagnostics()}")
            time.sleep(0.05)

    def diagnostics(self, lines: int = 30) -> str:
        """The tail of every component's log, for error messages."""
        parts = [f"workdir: {self.workdir}"]
        for log in sorted(self.logs_dir.glob("*.log")):
            parts.append(f"--- {log.name} (last {lines} lines) ---\n{tail(log, lines)}")
        return "\n".join(parts)

    @staticmethod
    def _etcd_healthy(port: int) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            body = json.loads(response.read())
        return bool(body.get("health") == "true")

    def _ssl_context(self) -> ssl.SSLContext:
        assert self._admin is not None
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        context.load_cert_chain(str(self._admin.cert), str(self._admin.key))
        return context

    def _get(self, path: str) -> tuple[int, bytes]:
        host, _, port = self.server.removeprefix("https://").partition(":")
        conn = http.client.HTTPSConnection(host, int(port), context=self._ssl_context(), timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

