"""A real Kubernetes node on this machine, beside a ControlPlane: pods run in containers.

    containerd + runc + CNI plugins   Debian's packages (containerd, runc, containernetworking-plugins)
    kubelet, kube-proxy (iptables)    k8s.io/kubernetes, built by scripts/build-k8s.sh
    kube-scheduler                    idem (the ControlPlane alone has none: the pod runner needs none)
    CoreDNS                           github.com/coredns/coredns, idem; `<svc>.<ns>.svc` names

Pods get addresses on the bridge BRIDGE (POD_SUBNET) through the CNI bridge plugin; the host is
NODE_IP on that bridge, and the control plane must listen there (ControlPlane(address=NODE_IP)) so
that pods reach the apiserver through the `kubernetes` Service. kube-proxy programs the Services,
CoreDNS answers on NODE_IP:53 (the pods' nameserver), and the kubelet registers the node NODE_NAME
with a certificate of the control plane's CA (the Node authorizer limits it to its own objects).

Images are not pulled: the node imports OCI archives (scripts/build-image.sh builds them, cached by
content hash) into containerd's `k8s.io` namespace at start, and pods use `imagePullPolicy: Never`.

This machine's kernel runs cgroup v1 and the sandbox withholds CAP_SYS_RESOURCE, so the kubelet is
told `failCgroupV1: false` and containerd `restrict_oom_score_adj` (a pod's oom_score_adj can only
go up from containerd's own). Everything the node writes lives under its workdir, and stop() removes
it: pods first (so the CNI plugin releases their addresses), then the processes, then the mounts.
One node runs at a time on a machine (the bridge, port 53 and kube-proxy's rules are machine-wide).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from clarion_dev.cluster.launcher import (
    CONTROLLERS,
    REPO_ROOT,
    ControlPlane,
    ControlPlaneError,
    run_kubectl,
    tail,
)
from clarion_dev.net import free_port
from clarion_dev.testing.processes import stop_popen

NODE_NAME = "clarion-node"
BRIDGE = "clarion0"
NODE_IP = "10.85.0.1"
POD_SUBNET = "10.85.0.0/16"
CLUSTER_DOMAIN = "cluster.local"
NODE_BINARIES = ("kubelet", "kube-proxy", "kube-scheduler", "coredns")
DEBIAN_PACKAGES = {
    "containerd": "containerd", "runc": "runc", "/usr/lib/cni/bridge": "containernetworking-plugins",
    "iptables": "iptables", "conntrack": "conntrack",
}
# With a node, the controllers that a kubelet's world needs: Services' EndpointSlices, and the node's
# lifecycle (its not-ready taint lifted once the kubelet reports Ready; pods of a lost node evicted).
NODE_CONTROLLERS = (
    *CONTROLLERS,
    "endpointslice-controller",
    "node-lifecycle-controller",
    "taint-eviction-controller",
    "pod-garbage-collector-controller",
)
# CoreDNS's kubernetes plugin watches Services, EndpointSlices, Namespaces (and Pods, for `pods insecure`).
COREDNS_RBAC = {"apiVersion": "v1", "kind": "List", "items": [
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
     "metadata": {"name": "clarion:coredns"},
     "rules": [
         {"apiGroups": [""], "resources": ["services", "namespaces", "pods"], "verbs": ["list", "watch"]},
         {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
     ]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
     "metadata": {"name": "clarion:coredns"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "clarion:coredns"},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "clarion:coredns"}]},
]}
LOCK_PATH = Path("/run/clarion-node.lock")
BUILD_IMAGES = REPO_ROOT / "scripts" / "build-image.sh"
_STOP_GRACE_SECONDS = 15.0


class NodeError(RuntimeError):
    """The node could not start (the message names what is missing or carries the logs' tails)."""


@dataclass(frozen=True)
class Image:
    """An OCI archive to import into containerd, and the reference pods name it by."""

    ref: str
    archive: Path


def missing_host_parts() -> list[str]:
    """The Debian packages this node needs and the machine lacks (empty when it can run)."""
    absent = []
    for probe, package in DEBIAN_PACKAGES.items():
        found = Path(probe).exists() if probe.startswith("/") else shutil.which(probe) is not None
        if not found:
            absent.append(package)
    return absent


def build_images(progress: IO[str] | None = None) -> dict[str, Image]:
    """scripts/build-image.sh (each image cached by content hash): name -> the image and its archive.

    The names are clarion, postgresql, redis and pause; progress goes to `progress` (default stderr).
    """
    result = subprocess.run(["bash", str(BUILD_IMAGES)], stdout=subprocess.PIPE, stderr=progress,
                            text=True, check=False)
    if result.returncode != 0:
        raise NodeError(f"scripts/build-image.sh failed with exit code {result.returncode}")
    images = {}
    for line in result.stdout.splitlines():
        name, ref, archive = line.split()
        images[name] = Image(ref, Path(archive))
    return images


def chart_values(images: dict[str, Image]) -> dict[str, Any]:
    """Values of charts/clarion on this node: the built images (imported, never pulled), and the
    bundled Postgres and Redis on emptyDir (the node has no volume provisioner)."""
    def image(name: str) -> dict[str, str]:
        repository, _, tag = images[name].ref.rpartition(":")
        return {"repository": repository, "tag": tag, "pullPolicy": "Never"}

    return {
        "image": image("clarion"),
        "postgresql": {"bundled": True, "image": image("postgresql"), "persistence": {"enabled": False}},
        "redis": {"bundled": True, "image": image("redis"), "persistence": {"enabled": False}},
    }


def bundled_database_url(bin_dir: Path, kubeconfig: Path, release: str, namespace: str) -> str:
    """The DSN of a release's bundled Postgres for a client on this host: the chart's database user and
    generated password (its Secret), at the Postgres pod's address, which the host reaches on the bridge."""
    def get(*args: str) -> str:
        return run_kubectl(bin_dir, kubeconfig, "get", *args, "-n", namespace).stdout

    secret = json.loads(get("secret", f"{release}-postgresql", "-o", "json"))
    password = urllib.parse.quote(base64.b64decode(secret["data"]["password"]).decode(), safe="")
    address = get("pod", f"{release}-postgresql-0", "-o", "jsonpath={.status.podIP}")
    return f"postgresql://clarion:{password}@{address}:5432/clarion"


class Node:
    """containerd, kubelet, kube-scheduler, kube-proxy and CoreDNS for `control_plane`.

    The control plane must have been created with address=NODE_IP and controllers=NODE_CONTROLLERS,
    and call prepare_network() before it starts (it binds NODE_IP). start() returns once the node is
    Ready, untainted, and CoreDNS answers; it raises NodeError with the components' logs otherwise.
    """

    def __init__(self, control_plane: ControlPlane, bin_dir: Path, workdir: Path,
                 pause: Image, images: Sequence[Image] = ()) -> None:
        self.control_plane = control_plane
        self.bin_dir = bin_dir
        self.workdir = workdir
        self.pause = pause
        self.images = tuple(images)
        self.logs_dir = workdir / "logs"
        self.socket = workdir / "run" / "containerd.sock"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock: IO[str] | None = None
        self._dns_ready_port = free_port()
        self._netns_before: set[str] = set()
        self.ready_seconds: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @staticmethod
    def prepare_network() -> None:
        """The bridge with NODE_IP, forwarding, and bridged traffic through iptables (for Services)."""
        if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True, check=False).returncode != 0:
            _run("ip", "link", "add", BRIDGE, "type", "bridge")
        addresses = _run("ip", "-o", "-4", "addr", "show", "dev", BRIDGE)
        if f" {NODE_IP}/" not in addresses:
            _run("ip", "addr", "add", f"{NODE_IP}/{POD_SUBNET.split('/')[1]}", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        if not Path("/proc/sys/net/bridge").exists() and shutil.which("modprobe"):
            _run("modprobe", "br_netfilter")
        if not Path("/proc/sys/net/bridge").exists():
            raise NodeError("the kernel lacks br_netfilter: Services cannot reach pods on the bridge")
        for key in ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"):
            Path("/proc/sys", key).write_text("1\n")

    def start(self, timeout: float = 120.0) -> Node:
        if absent := missing_host_parts():
            raise NodeError(f"the node needs Debian packages that are not installed: {', '.join(absent)}")
        if os.geteuid() != 0:
            raise NodeError("the node runs containers: it must run as root")
        self._take_lock()
        _kill_stale_components()
        self._netns_before = _netns()
        started = time.monotonic()
        deadline = started + timeout
        shutil.rmtree(self.workdir, ignore_errors=True)
        for sub in ("logs", "run", "cni", "kubelet", "pki"):
            (self.workdir / sub).mkdir(parents=True)
        try:
            self._start_containerd(deadline)
            for image in (self.pause, *self.images):
                self._ctr("images", "import", str(image.archive))
            self._start_kubernetes_parts()
            self._wait("the node to be Ready", deadline, self._node_ready)
            self._wait("CoreDNS to answer", deadline, self._dns_answers)
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Pods away first (their sandboxes torn down by the kubelet), then the processes and mounts."""
        if self._procs.get("kubelet") is not None and self._procs["kubelet"].poll() is None:
            with contextlib.suppress(ControlPlaneError, subprocess.SubprocessError):
                self.control_plane.kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=0",
                                           "--force", "--wait=false", check=False)
                end = time.monotonic() + 30
                while time.monotonic() < end and (self._running_tasks() or _netns() - self._netns_before):
                    time.sleep(0.3)
        for name in ("kube-scheduler", "kube-proxy", "coredns", "kubelet"):
            self._stop_process(name)
        for task in self._running_tasks():
            self._ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
        self._stop_process("containerd")
        # The shims outlive containerd; each names our socket on its command line.
        subprocess.run(["pkill", "-KILL", "-f", f"containerd-shim.*-address {self.socket}"], check=False)
        subprocess.run([str(self.bin_dir / "kube-proxy"), "--cleanup"], capture_output=True, check=False)
        # Network namespaces of sandboxes the kubelet had no time to tear down (their veths go with them).
        for name in _netns() - self._netns_before:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        self._unmount_all()
        self._release_lock()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- helpers for callers -------------------------------------------------------------------

    def ctr(self, *args: str, check: bool = True) -> str:
        """`ctr -n k8s.io` against this node's containerd (for example `tasks kill` in a crash test)."""
        return self._ctr(*args, check=check)

    def task_pid(self, container_id: str) -> int | None:
        """The host pid of a running container, by its CRI container id; None when it is not running."""
        for line in self._ctr("tasks", "ls").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[0] == container_id and fields[2] == "RUNNING":
                return int(fields[1])
        return None

    def diagnostics(self, lines: int = 30) -> str:
        parts = [f"workdir: {self.workdir}"]
        for log in sorted(self.logs_dir.glob("*.log")):
            parts.append(f"--- {log.name} (last {lines} lines) ---\n{tail(log, lines)}")
        return "\n".join(parts)

    # -- internals -----------------------------------------------------------------------------

    def _take_lock(self) -> None:
        handle = LOCK_PATH.open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise NodeError(f"another Clarion node runs on this machine (it holds {LOCK_PATH})") from None
        self._lock = handle

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _start_containerd(self, deadline: float) -> None:
        cni_dir = self.workdir / "cni"
        (cni_dir / "10-clarion.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "clarion",
            "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True, "hairpinMode": True,
                 "ipam": {"type": "host-local",
                          "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                          "dataDir": str(self.workdir / "cni" / "ipam"),
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
                {"type": "loopback"},
            ],
        }, indent=2))
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = self.workdir / "containerd.toml"
        config.write_text(f"""version = 2
root = "{self.workdir / 'containerd-root'}"
state = "{self.workdir / 'run' / 'containerd-state'}"
[grpc]
  address = "{self.socket}"
[{cri}]
  sandbox_image = "{self.pause.ref}"
  enable_unprivileged_ports = true
  restrict_oom_score_adj = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_dir}"
""")
        self._spawn("containerd", ["containerd", f"--config={config}"])
        self._wait("containerd's socket", deadline,
                   lambda: self.socket.exists() and bool(self._ctr("version", check=False)))

    def _start_kubernetes_parts(self) -> None:
        plane = self.control_plane
        kubelet_config = plane.issue_client(
            "kubelet", f"system:node:{NODE_NAME}", organizations=("system:nodes",))
        serving = plane.issue_serving("kubelet-serving", (NODE_NAME, "localhost"), (NODE_IP, "127.0.0.1"))
        scheduler_config = plane.issue_client("kube-scheduler", "system:kube-scheduler")
        proxy_config = plane.issue_client("kube-proxy", "system:kube-proxy")
        dns_config = plane.issue_client("coredns", "clarion:coredns")
        plane.kubectl("apply", "-f", "-", input_text=json.dumps(COREDNS_RBAC))
        kubelet_yaml = self.workdir / "kubelet.json"
        kubelet_yaml.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False, "failSwapOn": False, "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(plane.ca_cert)}},
            "authorization": {"mode": "AlwaysAllow"},
            "address": NODE_IP, "port": free_port(), "readOnlyPort": 0, "healthzPort": 0,
            "tlsCertFile": str(serving.cert), "tlsPrivateKeyFile": str(serving.key),
            "clusterDNS": [NODE_IP], "clusterDomain": CLUSTER_DOMAIN, "resolvConf": "/etc/resolv.conf",
            # The disk is shared with everything else here: evict only when it is really full.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False, "registerNode": True,
            "podLogsDir": str(self.workdir / "pod-logs"),
        }))
        self._spawn("kubelet", [
            str(self.bin_dir / "kubelet"), f"--config={kubelet_yaml}", f"--kubeconfig={kubelet_config}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}",
            f"--root-dir={self.workdir / 'kubelet'}", f"--cert-dir={self.workdir / 'pki'}",
        ])
        self._spawn("kube-scheduler", [
            str(self.bin_dir / "kube-scheduler"), f"--kubeconfig={scheduler_config}",
            "--secure-port=0", "--leader-elect=false",
        ])
        proxy_yaml = self.workdir / "kube-proxy.json"
        proxy_yaml.write_text(json.dumps({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(proxy_config)}, "mode": "iptables",
            "hostnameOverride": NODE_NAME, "clusterCIDR": POD_SUBNET, "bindAddress": NODE_IP,
            "healthzBindAddress": "", "metricsBindAddress": f"127.0.0.1:{free_port()}",
            # NodePorts on loopback too: how the host's Telegram emulator reaches the webhook over plain
            # http, which it (like Telegram) accepts only for a loopback address.
            "nodePortAddresses": [f"{NODE_IP}/32", "127.0.0.1/32"], "conntrack": {"maxPerCore": 0},
        }))
        self._spawn("kube-proxy", [str(self.bin_dir / "kube-proxy"), f"--config={proxy_yaml}"])
        corefile = self.workdir / "Corefile"
        corefile.write_text(f""".:53 {{
    bind {NODE_IP}
    errors
    ready 127.0.0.1:{self._dns_ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {dns_config}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    forward . /etc/resolv.conf
    cache 5
}}
""")
        self._spawn("coredns", [str(self.bin_dir / "coredns"), "-conf", str(corefile)])

    def _node_ready(self) -> bool:
        out = self.control_plane.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if out.returncode != 0:
            return False
        node = json.loads(out.stdout)
        conditions = node["status"].get("conditions", [])
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        return ready and not node["spec"].get("taints")

    def _dns_answers(self) -> bool:
        """CoreDNS's `ready` plugin answers 200 once the kubernetes plugin has synced its caches."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self._dns_ready_port}/ready", timeout=2) as answer:
            return bool(answer.status == 200)

    def _running_tasks(self) -> list[str]:
        if not self.socket.exists():
            return []
        out = self._ctr("tasks", "ls", check=False)
        return [line.split()[0] for line in out.splitlines()[1:] if line.split()[2:3] == ["RUNNING"]]

    def _ctr(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(["ctr", f"--address={self.socket}", "--namespace=k8s.io", *args],
                                capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout if result.returncode == 0 else ""

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.logs_dir / f"{name}.log").open("ab")
        try:
            self._procs[name] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=self.workdir)
        finally:
            log.close()

    def _stop_process(self, name: str) -> None:
        proc = self._procs.pop(name, None)
        if proc is not None:
            stop_popen(proc, grace=_STOP_GRACE_SECONDS)

    def _unmount_all(self) -> None:
        """Whatever the kubelet and containerd mounted under the workdir (tmpfs tokens, overlays)."""
        prefix = str(self.workdir.resolve()) + "/"
        for _ in range(3):
            mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                      if line.split()[1].startswith(prefix)]
            if not mounts:
                return
            for mount in sorted(mounts, key=len, reverse=True):
                subprocess.run(["umount", "-l", mount], capture_output=True, check=False)

    def _wait(self, what: str, deadline: float, check: Callable[[], bool]) -> None:
        while True:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise NodeError(f"{name} exited with code {proc.returncode} while waiting for {what}\n"
                                    + self.diagnostics())
            with contextlib.suppress(OSError, NodeError, ControlPlaneError, ValueError, KeyError):
                if check():
                    return
            if time.monotonic() > deadline:
                raise NodeError(f"timed out waiting for {what}\n{self.diagnostics()}")
            time.sleep(0.2)


# How a node's processes look on the command line, to find those of a node whose owner was killed
# (SIGKILL leaves them running in their own sessions). Holding LOCK_PATH means no live node owns them.
STALE_PATTERNS = (
    f"kubelet .*--hostname-override={NODE_NAME}",
    "kube-proxy --config=.*/kube-proxy.json",
    "kube-scheduler --kubeconfig=.*/kube-scheduler.kubeconfig",
    "coredns -conf .*/Corefile",
    "containerd --config=.*/containerd.toml",
    "containerd-shim-runc-v2 .*-address .*/run/containerd.sock",
)


def _kill_stale_components() -> None:
    for pattern in STALE_PATTERNS:
        subprocess.run(["pkill", "-KILL", "-f", pattern], capture_output=True, check=False)


def _netns() -> set[str]:
    """The named network namespaces CNI made for pod sandboxes (cni-<uuid> in /run/netns)."""
    directory = Path("/run/netns")
    return {p.name for p in directory.glob("cni-*")} if directory.exists() else set()


def _run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout
