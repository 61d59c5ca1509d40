"""`clarion dev cluster up|down|status|env`: a long-lived local control plane in the background.

`up` builds the binaries if needed (progress on stderr), starts a supervisor process that owns etcd,
kube-apiserver and kube-controller-manager, waits until it is ready, applies crds/*.yaml and prints
the kubeconfig path. `up --node` adds a real node (clarion_dev.cluster.node: containerd, kubelet,
kube-scheduler, kube-proxy, CoreDNS) with the images of scripts/build-image.sh, and leaves crds/ to
the chart that `clarion dev up --node` installs. Running `up` again while it is up only re-applies
crds/. Each `up` starts from an empty etcd. State lives in --state-dir (default $CLARION_CLUSTER_DIR
or /var/tmp/clarion/cluster):

    pid             the supervisor's process id
    kubeconfig      admin kubeconfig (system:masters)
    state.json      server URL, component pids, seconds to ready
    supervisor.log  the supervisor's output; run/logs/ holds each component's log
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from clarion_dev.cluster.launcher import (
    BinariesUnavailable,
    ControlPlane,
    ControlPlaneError,
    apply_manifests,
    find_binaries,
    repo_manifests,
    run_kubectl,
    tail,
)
from clarion_dev.cluster.node import (
    NODE_CONTROLLERS,
    NODE_IP,
    NODE_NAME,
    POD_SUBNET,
    Node,
    NodeError,
    build_images,
)

_DEFAULT = "/var/tmp/clarion/cluster"  # noqa: S108 - a per-user dev cluster; override with CLARION_CLUSTER_DIR
DEFAULT_STATE_DIR = Path(os.environ.get("CLARION_CLUSTER_DIR", _DEFAULT))


class _State:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.pidfile = root / "pid"
        self.kubeconfig = root / "kubeconfig"
        self.state = root / "state.json"
        self.log = root / "supervisor.log"
        self.run = root / "run"

    def pid(self) -> int | None:
        """The supervisor's pid if it is alive."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def info(self) -> dict[str, object] | None:
        """state.json when the supervisor is alive and ready."""
        if self.pid() is None or not self.state.exists():
            return None
        data: dict[str, object] = json.loads(self.state.read_text())
        return data

    def clear(self) -> None:
        for path in (self.pidfile, self.state, self.kubeconfig):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clarion dev cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    # --state-dir is also accepted after the subcommand
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", parents=[common], help="start the control plane in the background (idempotent)")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    up.add_argument("--no-crds", action="store_true", help="do not apply crds/*.yaml")
    up.add_argument("--node", action="store_true",
                    help="with a real node (containerd, kubelet; root): pods run in containers of the images "
                         "scripts/build-image.sh builds; crds/ is left to the chart")
    sub.add_parser("down", parents=[common], help="stop it")
    sub.add_parser("status", parents=[common], help="say whether it is up; exit 0 when up, 1 when down")
    sub.add_parser("env", parents=[common], help="print `export KUBECONFIG=...`")
    serve = sub.add_parser("serve", parents=[common], help=argparse.SUPPRESS)
    serve.add_argument("--bin", type=Path, required=True)
    serve.add_argument("--node", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    state = _State(args.state_dir)
    if args.command == "up":
        return _up(state, args.timeout, apply_crds=not (args.no_crds or args.node), node=args.node)
    if args.command == "down":
        return _down(state)
    if args.command == "status":
        return _status(state)
    if args.command == "env":
        print(f"export KUBECONFIG={state.kubeconfig}")
        return 0 if state.info() else 1
    return _serve(state, args.bin, args.node)


def _up(state: _State, timeout: float, apply_crds: bool, node: bool = False) -> int:
    try:
        bin_dir = find_binaries(progress=sys.stderr)
        if node:
            build_images(progress=sys.stderr)  # before the supervisor starts: its first build takes minutes
    except (BinariesUnavailable, NodeError) as exc:
        print(f"clarion dev cluster: {exc}", file=sys.stderr)
        return 1
    info = state.info()
    if info is not None and bool(info.get("node")) != node:
        print(f"clarion dev cluster: it is up {'with' if info.get('node') else 'without'} a node; "
              "run `down` first", file=sys.stderr)
        return 1
    if info is None:
        if state.pid() is not None:
            print(f"clarion dev cluster: supervisor {state.pid()} is starting or stuck; run `down` first",
                  file=sys.stderr)
            return 1
        state.clear()
        state.root.mkdir(parents=True, exist_ok=True)
        with state.log.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "clarion_dev.cluster.cli", "--state-dir", str(state.root),
                 "serve", "--bin", str(bin_dir), *(["--node"] if node else [])],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while (info := state.info()) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.terminate()
                print(f"clarion dev cluster: the control plane did not start\n{tail(state.log, 60)}",
                      file=sys.stderr)
                return 1
            time.sleep(0.1)
        print(f"control plane ready in {info['ready_seconds']:.1f}s at {info['server']}")
        if node:
            print(f"node {NODE_NAME} ready in {info['node_ready_seconds']:.1f}s, pods on {POD_SUBNET}")
    else:
        print(f"control plane already up at {info['server']}")
    if apply_crds and (manifests := repo_manifests()):
        try:
            applied = apply_manifests(bin_dir, state.kubeconfig, manifests)
        except ControlPlaneError as exc:
            print(f"clarion dev cluster: {exc}", file=sys.stderr)
            return 1
        print(f"applied {len(applied)} objects from crds/")
    print(f"kubeconfig: {state.kubeconfig}")
    print(f"export KUBECONFIG={state.kubeconfig}")
    return 0


def _down(state: _State) -> int:
    pid = state.pid()
    if pid is None:
        print("control plane is not running")
        state.clear()
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 40
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        info = json.loads(state.state.read_text()) if state.state.exists() else {}
        for component_pid in [pid, *dict(info.get("pids", {})).values()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(component_pid), signal.SIGKILL)
    state.clear()
    print("control plane stopped")
    return 0


def _status(state: _State) -> int:
    info = state.info()
    if info is None:
        print("control plane: down")
        return 1
    bin_dir = Path(str(info["bin"]))
    ready = run_kubectl(bin_dir, state.kubeconfig, "get", "--raw=/readyz", check=False)
    print(f"control plane: up (supervisor pid {state.pid()})")
    print(f"server: {info['server']}  readyz: {ready.stdout.strip() or ready.stderr.strip()}")
    print(f"kubeconfig: {state.kubeconfig}")
    print(f"logs: {state.run / 'logs'}")
    return 0 if ready.returncode == 0 else 1


def _serve(state: _State, bin_dir: Path, with_node: bool = False) -> int:
    """The background supervisor: start, publish state, wait for SIGTERM/SIGINT, stop."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    state.pidfile.write_text(str(os.getpid()))
    node: Node | None = None
    plane = (ControlPlane(workdir=state.run, binaries=bin_dir, address=NODE_IP, controllers=NODE_CONTROLLERS)
             if with_node else ControlPlane(workdir=state.run, binaries=bin_dir))
    try:
        if with_node:
            images = build_images()
            Node.prepare_network()
        plane.start()
        if with_node:
            node = Node(plane, bin_dir, state.root / "node", pause=images.pop("pause"),
                        images=list(images.values()))
            node.start()
    except (ControlPlaneError, NodeError, OSError) as exc:
        print(f"control plane failed to start: {exc}", flush=True)
        plane.stop()
        state.pidfile.unlink(missing_ok=True)
        return 1
    try:
        shutil.copyfile(plane.kubeconfig, state.kubeconfig)
        state.kubeconfig.chmod(0o600)
        state.state.write_text(json.dumps({
            "server": plane.server,
            "bin": str(bin_dir),
            "pids": plane.pids(),
            "ready_seconds": plane.ready_seconds,
            "node": node is not None,
            **({"node_ready_seconds": node.ready_seconds,
                "images": {name: image.ref for name, image in images.items()}} if node else {}),
        }))
        print(f"ready in {plane.ready_seconds:.2f}s at {plane.server}", flush=True)
        while not stop.wait(1.0):
            if not plane.running:
                print(f"a component exited\n{plane.diagnostics()}", flush=True)
                break
    finally:
        if node is not None:
            node.stop()
        plane.stop()
        state.clear()
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
