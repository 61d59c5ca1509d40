"""Run the Pods of a kubelet-less control plane as local processes (dev and test tooling only).

The local control plane has no kubelet and no scheduler. PodRunner watches Pods (optionally by
namespace and label selector), takes each new Pending pod, runs every container's `command + args`
as a local process (the image is ignored), and reports back through the status subresource the way
a kubelet would, so the Job, ReplicaSet and garbage-collector controllers see real pods:

- Pending -> Running (podIP/hostIP 127.0.0.1, containerStatuses running, Ready) -> Succeeded/Failed
  with terminated exit codes (reason Completed or Error). A process killed by signal N exits 128+N,
  so SIGKILL from outside looks like a crashed container (137).
- restartPolicy Never runs each container once; OnFailure restarts failed containers in place and
  Always restarts every exit, bumping restartCount (back-off 0.2 s doubling up to 10 s).
- The environment is resolved like the kubelet does: literal values with $(VAR) expansion,
  secretKeyRef, configMapKeyRef, fieldRef (name, namespace, uid, labels, annotations - the Job
  completion index comes this way - node name, service account, pod and host IP), envFrom secrets
  and config maps. A missing reference keeps the pod Pending with CreateContainerConfigError and is
  retried every second. `extra_env` is applied last and wins. PATH starts with `path_prefix`
  (default: the directory of this Python, so the venv's console scripts are found); PYTHONPATH is
  the runner's, so pods run the same code as the tests.
- A pod that is deleted (or gets a deletionTimestamp) has its processes stopped: SIGTERM to the
  process group, the pod's terminationGracePeriodSeconds capped at `max_grace_seconds`, SIGKILL;
  then, if the object still exists, a terminal status is written and it is deleted with grace 0.

- Pods share the host's loopback, so a fixed container port would be bound by the first pod only: every
  container gets `LOOPBACK_ENV` (CLARION_METRICS_PORT=0, no /metrics server on the operator's fixed
  metrics port) before `extra_env`, which may override it.

Not supported: images, volumes (each pod gets a fresh working directory instead), network
namespaces or ports (everything shares the host's loopback), probes (a running container is ready),
resource limits, resourceFieldRef, sidecar init containers, pod-level activeDeadlineSeconds.
Pods claimed by another runner (hostIP already set) are left alone.

    clarion dev podrunner --kubeconfig K [--namespace N ...] [--selector S] [--logs-dir D] [--echo]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client import ApiException

log = logging.getLogger("clarion_dev.podrunner")

LOCAL_IP = "127.0.0.1"
_BACKOFF_START = 0.2
_BACKOFF_MAX = 10.0
_BACKOFF_RESET_AFTER = 10.0
_POLL = 0.05
#: Taken from the runner's own environment. PYTHONPATH too: the "image" a pod runs here is the code the
#: runner runs (a checkout whose sources come before the virtualenv's install, e.g. a git worktree).
_INHERITED_ENV = ("HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "PYTHONPATH")
#: Environment of every container, before `extra_env`: the pods the operator creates serve /metrics on
#: one fixed port, which all pods here would share.
LOOPBACK_ENV = {"CLARION_METRICS_PORT": "0"}
_LABEL_OR_ANNOTATION = re.compile(r"metadata\.(labels|annotations)\['([^']+)'\]")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")

Json = dict[str, Any]


class ConfigError(Exception):
    """A container's configuration cannot be resolved (the kubelet's CreateContainerConfigError)."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes $(VAR) expansion: defined names are replaced, undefined ones kept, `$$` escapes `$`."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if text.startswith("$(", i) and (end := text.find(")", i + 2)) != -1:
            name = text[i + 2 : end]
            out.append(env.get(name, text[i : end + 1]))
            i = end + 1
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def field_value(pod: Json, path: str) -> str:
    """The value of a downward-API fieldRef for this pod."""
    meta, spec = pod["metadata"], pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": LOCAL_IP,
        "status.podIPs": LOCAL_IP,
        "status.hostIP": LOCAL_IP,
        "status.hostIPs": LOCAL_IP,
    }
    if path in simple:
        return str(simple[path])
    if match := _LABEL_OR_ANNOTATION.fullmatch(path):
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = sorted((meta.get(path.split(".")[1]) or {}).items())
        return "\n".join(f'{k}="{v}"' for k, v in items)
    raise ConfigError(f"fieldRef {path!r} is not supported by the local pod runner")


@dataclass
class _Container:
    spec: Json
    init: bool
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restart_count: int = 0
    state: Json = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Json = field(default_factory=dict)
    started_mono: float = 0.0
    backoff: float = _BACKOFF_START
    restart_at: float | None = None
    done: bool = False

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def exit_code(self) -> int | None:
        terminated = self.state.get("terminated")
        return None if terminated is None else int(terminated["exitCode"])

    def status(self) -> Json:
        running = "running" in self.state
        return {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "containerID": f"local://{self.proc.pid}" if self.proc is not None else "",
            "ready": running,
            "started": running,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }


class _PodWorker:
    """Runs one pod's containers in a thread and keeps its status up to date."""

    def __init__(self, runner: PodRunner, pod: Json) -> None:
        self.runner = runner
        self.pod = pod
        meta = pod["metadata"]
        self.name: str = meta["name"]
        self.namespace: str = meta["namespace"]
        self.uid: str = meta["uid"]
        spec = pod["spec"]
        self.policy: str = spec.get("restartPolicy", "Always")
        self.grace = min(float(spec.get("terminationGracePeriodSeconds", 30)), runner.max_grace_seconds)
        self.workdir = runner.state_dir / "pods" / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        self.init = [self._container(c, True) for c in spec.get("initContainers", [])]
        self.main = [self._container(c, False) for c in spec["containers"]]
        self.deleted = threading.Event()
        self.gone = False
        self.shutdown = threading.Event()
        self.phase = "Pending"
        self.message = ""
        self.reason = ""
        self.started_at = _now()
        self.initialized = not self.init
        self.transitions: dict[str, tuple[str, str]] = {}
        self.lock = threading.Lock()
        self.thread = threading.Thread(
            target=self._run, name=f"pod-{self.namespace}/{self.name}", daemon=True
        )

    def _container(self, spec: Json, init: bool) -> _Container:
        path = self.runner.logs_dir / f"{self.namespace}_{self.name}_{spec['name']}.log"
        self.runner._register_log(self.namespace, self.name, spec["name"], path)
        return _Container(spec=spec, init=init, log_path=path)

    @property
    def stopping(self) -> bool:
        return self.deleted.is_set() or self.shutdown.is_set()

    def pid(self, container: str | None) -> int | None:
        with self.lock:
            for c in self.main + self.init:
                if container not in (None, c.name) or c.proc is None:
                    continue
                if c.proc.poll() is None:
                    return c.proc.pid
        return None

    # -- status ------------------------------------------------------------------------------

    def _condition(self, kind: str, ok: bool) -> Json:
        status = "True" if ok else "False"
        previous = self.transitions.get(kind)
        if previous is None or previous[0] != status:
            self.transitions[kind] = (status, _now())
        return {"type": kind, "status": status, "lastTransitionTime": self.transitions[kind][1]}

    def _status(self) -> Json:
        ready = self.phase == "Running" and all("running" in c.state for c in self.main)
        status: Json = {
            "phase": self.phase,
            "hostIP": LOCAL_IP,
            "hostIPs": [{"ip": LOCAL_IP}],
            "podIP": LOCAL_IP,
            "podIPs": [{"ip": LOCAL_IP}],
            "startTime": self.started_at,
            "conditions": [
                self._condition("PodScheduled", True),
                self._condition("Initialized", self.initialized),
                self._condition("ContainersReady", ready),
                self._condition("Ready", ready),
            ],
            "containerStatuses": [c.status() for c in self.main],
            "message": self.message or None,
            "reason": self.reason or None,
        }
        if self.init:
            status["initContainerStatuses"] = [c.status() for c in self.init]
        return status

    def write_status(self, precondition: str | None = None) -> bool:
        """Patch the pod's status; False when the pod is gone (or, with a precondition, changed)."""
        body: Json = {"status": self._status()}
        if precondition is not None:
            body["metadata"] = {"resourceVersion": precondition}
        try:
            self.runner._core.patch_namespaced_pod_status(
                self.name, self.namespace, body,
                _content_type="application/merge-patch+json", _preload_content=False,
            )
        except ApiException as exc:
            if exc.status == 404 or (exc.status == 409 and precondition is not None):
                return False
            raise
        return True

    def _claim(self) -> bool:
        """Mark the pod as ours (hostIP set) unless another runner got there first."""
        pod = self.pod
        for _ in range(10):
            if pod.get("status", {}).get("hostIP") or pod["metadata"].get("deletionTimestamp"):
                return False
            if self.write_status(precondition=pod["metadata"]["resourceVersion"]):
                return True
            try:
                pod = self.runner._read_pod(self.namespace, self.name)
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            if pod["metadata"]["uid"] != self.uid:
                return False
        return False

    # -- lifecycle ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if not self._claim():
                return
            self.workdir.mkdir(parents=True, exist_ok=True)
            envs = self._resolve_until_ready()
            if envs is not None and self._run_init(envs):
                self._run_main(envs)
            self._finish()
        except Exception:
            log.exception("pod %s/%s: the runner failed", self.namespace, self.name)
            self._kill_all()
        finally:
            self.runner._forget(self)

    def _resolve_until_ready(self) -> dict[str, dict[str, str]] | None:
        while not self.stopping:
            try:
                return {c.name: self.runner._container_env(self.pod, c.spec) for c in self.init + self.main}
            except ConfigError as exc:
                with self.lock:
                    for c in self.init + self.main:
                        c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
                self.write_status()
                self._wait(1.0)
        return None

    def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            self.deleted.wait(min(_POLL, max(0.0, deadline - time.monotonic())))

    def _start(self, c: _Container, env: dict[str, str]) -> None:
        argv = [expand(part, env) for part in [*c.spec.get("command", []), *c.spec.get("args", [])]]
        workdir = c.spec.get("workingDir")
        cwd = workdir if workdir and Path(workdir).is_dir() else self.workdir
        with self.lock:
            c.restart_at = None
            c.started_mono = time.monotonic()
            try:
                if not argv:
                    raise FileNotFoundError("no command given (the local pod runner ignores images)")
                c.proc = self.runner._spawn(argv, env, cwd, c.log_path, f"{self.name}/{c.name}")
            except OSError as exc:
                c.proc = None
                c.state = {"terminated": {
                    "exitCode": 128, "reason": "StartError", "message": str(exc),
                    "startedAt": _now(), "finishedAt": _now(),
                }}
                return
            c.state = {"running": {"startedAt": _now()}}

    def _reap(self, c: _Container) -> bool:
        """Record the exit of `c`'s process; True when it just exited."""
        if c.proc is None or "running" not in c.state:
            return False
        code = c.proc.poll()
        if code is None:
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(c.proc.pid, signal.SIGKILL)
        exit_code = 128 - code if code < 0 else code
        with self.lock:
            c.state = {"terminated": {
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": c.state["running"]["startedAt"],
                "finishedAt": _now(),
                "containerID": f"local://{c.proc.pid}",
            }}
        return True

    def _should_restart(self, c: _Container) -> bool:
        return self.policy == "Always" or (self.policy == "OnFailure" and c.exit_code() != 0)

    def _schedule_restart(self, c: _Container) -> None:
        if time.monotonic() - c.started_mono > _BACKOFF_RESET_AFTER:
            c.backoff = _BACKOFF_START
        with self.lock:
            c.last_state = c.state
            c.restart_count += 1
            c.state = {"waiting": {"reason": "CrashLoopBackOff",
                                   "message": f"back-off {c.backoff:g}s restarting failed container"}}
            c.restart_at = time.monotonic() + c.backoff
        c.backoff = min(c.backoff * 2, _BACKOFF_MAX)

    def _run_init(self, envs: dict[str, dict[str, str]]) -> bool:
        for c in self.init:
            while not self.stopping:
                self._start(c, envs[c.name])
                self.write_status()
                while not self.stopping and not self._reap(c) and "terminated" not in c.state:
                    self.deleted.wait(_POLL)
                if self.stopping:
                    return False
                if c.exit_code() == 0:
                    break
                if self.policy == "Never":
                    self.phase = "Failed"
                    self.write_status()
                    return False
                self._schedule_restart(c)
                self.write_status()
                self._wait(c.backoff)
        self.initialized = not self.stopping
        return self.initialized

    def _run_main(self, envs: dict[str, dict[str, str]]) -> None:
        for c in self.main:
            self._start(c, envs[c.name])
        self.phase = "Running"
        self.write_status()
        while not self.stopping:
            changed = False
            for c in self.main:
                if c.done:
                    continue
                if c.restart_at is not None:
                    if time.monotonic() >= c.restart_at:
                        self._start(c, envs[c.name])
                        changed = True
                    continue
                if self._reap(c) or ("terminated" in c.state and not c.done):
                    changed = True
                    if self._should_restart(c):
                        self._schedule_restart(c)
                    else:
                        c.done = True
            if all(c.done for c in self.main):
                self.phase = "Succeeded" if all(c.exit_code() == 0 for c in self.main) else "Failed"
                self.write_status()
                return
            if changed:
                self.write_status()
            self.deleted.wait(_POLL)

    def _kill_all(self) -> None:
        """SIGTERM every process group, wait up to the grace period, SIGKILL what is left."""
        running = [c for c in self.init + self.main if c.proc is not None and c.proc.poll() is None]
        for c in running:
            assert c.proc is not None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for c in running:
            assert c.proc is not None
            try:
                c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(c.proc.pid, signal.SIGKILL)
                c.proc.wait()
        for c in running:
            self._reap(c)

    def _finish(self) -> None:
        if not self.stopping:
            return
        self._kill_all()
        if self.gone:
            return
        for c in self.init + self.main:
            if "terminated" not in c.state:
                with self.lock:
                    c.state = {"terminated": {"exitCode": 137, "reason": "Error", "finishedAt": _now()}}
        if self.phase not in ("Succeeded", "Failed"):
            codes = [c.exit_code() for c in self.main]
            self.phase = "Succeeded" if self.initialized and all(code == 0 for code in codes) else "Failed"
        if self.shutdown.is_set() and not self.deleted.is_set():
            self.reason, self.message = "RunnerStopped", "the local pod runner stopped while the pod ran"
        with contextlib.suppress(ApiException):
            self.write_status()
        if self.deleted.is_set():
            self.runner._delete_now(self.namespace, self.name, self.uid)


class PodRunner:
    """Watch Pods and run them as local processes; see the module docstring for the contract."""

    def __init__(
        self,
        kubeconfig: str | Path,
        namespaces: list[str] | None = None,
        label_selector: str | None = None,
        extra_env: dict[str, str] | None = None,
        path_prefix: list[str] | None = None,
        *,
        logs_dir: Path | None = None,
        echo: bool = False,
        max_grace_seconds: float = 5.0,
    ) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.namespaces = namespaces
        self.label_selector = label_selector
        self.extra_env = {**LOOPBACK_ENV, **(extra_env or {})}
        self.path_prefix = path_prefix if path_prefix is not None else [str(Path(sys.executable).parent)]
        self.state_dir = Path(tempfile.mkdtemp(prefix="clarion-pods-"))
        self.logs_dir = logs_dir if logs_dir is not None else self.state_dir / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        self.max_grace_seconds = max_grace_seconds
        configuration = k8s_client.Configuration()
        load_kube_config: Any = k8s_config.load_kube_config
        load_kube_config(config_file=str(self.kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = 64
        self._api: Any = k8s_client.ApiClient(configuration)
        self._core = k8s_client.CoreV1Api(self._api)
        self._workers: dict[str, _PodWorker] = {}
        self._seen: set[str] = set()
        self._log_paths: dict[tuple[str, str], list[tuple[str, Path]]] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._responses: set[Any] = set()
        self._threads: list[threading.Thread] = []

    # -- public API ----------------------------------------------------------------------------

    def start(self) -> PodRunner:
        """Start watching (one thread per namespace, or one for all namespaces)."""
        targets: list[str | None] = list(self.namespaces) if self.namespaces else [None]
        for namespace in targets:
            thread = threading.Thread(
                target=self._watch_loop, args=(namespace,), name=f"podrunner-watch-{namespace}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop watching; stop every running process and mark its pod Failed (reason RunnerStopped)."""
        self._stopping.set()
        with self._lock:
            responses = list(self._responses)
            workers = list(self._workers.values())
        for response in responses:
            _shutdown_response(response)
        for worker in workers:
            worker.shutdown.set()
        for worker in workers:
            worker.thread.join(timeout=self.max_grace_seconds + 10)
        for thread in self._threads:
            thread.join(timeout=5)
        self._api.close()
        # Working directories go; logs stay (the default logs dir lives in state_dir).
        keep_logs = self.logs_dir.is_relative_to(self.state_dir)
        shutil.rmtree(self.state_dir / "pods" if keep_logs else self.state_dir, ignore_errors=True)

    def __enter__(self) -> PodRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_path(self, pod_name: str, container: str | None = None, namespace: str | None = None) -> Path:
        """The log file of a container (default: the pod's first container)."""
        ns = namespace or self._only_namespace()
        with self._lock:
            paths = self._log_paths.get((ns, pod_name), [])
        for name, path in paths:
            if container is None or name == container:
                return path
        return self.logs_dir / f"{ns}_{pod_name}_{container or 'unknown'}.log"

    def logs(self, pod_name: str, container: str | None = None, namespace: str | None = None) -> str:
        """What the container wrote to stdout and stderr so far ("" if it never ran)."""
        path = self.log_path(pod_name, container, namespace)
        return path.read_text(errors="replace") if path.exists() else ""

    def pid(self, pod_name: str, container: str | None = None, namespace: str | None = None) -> int | None:
        """The pid of a running container process of the pod, or None."""
        ns = namespace or self._only_namespace()
        with self._lock:
            workers = [w for w in self._workers.values() if (w.namespace, w.name) == (ns, pod_name)]
        for worker in workers:
            if (pid := worker.pid(container)) is not None:
                return pid
        return None

    def running_pods(self) -> list[str]:
        """`namespace/name` of every pod this runner currently runs."""
        with self._lock:
            return sorted(f"{w.namespace}/{w.name}" for w in self._workers.values())

    # -- watching ------------------------------------------------------------------------------

    def _only_namespace(self) -> str:
        if self.namespaces and len(self.namespaces) == 1:
            return self.namespaces[0]
        raise ValueError("name the namespace: this runner watches more than one")

    def _list_call(self, namespace: str | None, **kwargs: Any) -> Any:
        if self.label_selector:
            kwargs["label_selector"] = self.label_selector
        if namespace is None:
            return self._core.list_pod_for_all_namespaces(_preload_content=False, **kwargs)
        return self._core.list_namespaced_pod(namespace, _preload_content=False, **kwargs)

    def _watch_loop(self, namespace: str | None) -> None:
        while not self._stopping.is_set():
            try:
                listing = _json(self._list_call(namespace))
                uids = set()
                for pod in listing["items"]:
                    uids.add(pod["metadata"]["uid"])
                    self._on_event("ADDED", pod)
                with self._lock:
                    vanished = [w for w in self._workers.values()
                                if w.uid not in uids and namespace in (None, w.namespace)]
                for worker in vanished:
                    worker.gone = True
                    worker.deleted.set()
                self._watch(namespace, listing["metadata"]["resourceVersion"])
            except _Expired:
                continue
            except Exception as exc:
                if self._stopping.is_set():
                    return
                log.warning("pod watch on %s failed (%s); listing again", namespace or "all namespaces", exc)
                self._stopping.wait(0.5)

    def _watch(self, namespace: str | None, resource_version: str) -> None:
        while not self._stopping.is_set():
            response = self._list_call(
                namespace, watch=True, resource_version=resource_version,
                allow_watch_bookmarks=True, timeout_seconds=240,
            )
            with self._lock:
                self._responses.add(response)
            try:
                for line in _lines(response.stream(amt=None, decode_content=False)):
                    if self._stopping.is_set():
                        return
                    if not line:
                        continue
                    event = json.loads(line)
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        if obj.get("code") == 410:
                            raise _Expired
                        raise RuntimeError(f"watch error: {obj.get('message')}")
                    resource_version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self._on_event(event["type"], obj)
            finally:
                with self._lock:
                    self._responses.discard(response)
                response.release_conn()

    def _on_event(self, kind: str, pod: Json) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            worker = self._workers.get(uid)
            if worker is None:
                if kind == "DELETED" or uid in self._seen or self._stopping.is_set():
                    return
                if pod["metadata"].get("deletionTimestamp"):
                    return
                if pod.get("status", {}).get("phase", "Pending") != "Pending":
                    return
                self._seen.add(uid)
                worker = _PodWorker(self, pod)
                self._workers[uid] = worker
                worker.thread.start()
                return
        if kind == "DELETED":
            worker.gone = True
            worker.deleted.set()
        elif pod["metadata"].get("deletionTimestamp"):
            worker.deleted.set()

    def _forget(self, worker: _PodWorker) -> None:
        with self._lock:
            self._workers.pop(worker.uid, None)

    # -- helpers used by workers -----------------------------------------------------------------

    def _register_log(self, namespace: str, pod: str, container: str, path: Path) -> None:
        with self._lock:
            entries = self._log_paths.setdefault((namespace, pod), [])
            if all(name != container for name, _ in entries):
                entries.append((container, path))

    def _read_pod(self, namespace: str, name: str) -> Json:
        return _json(self._core.read_namespaced_pod(name, namespace, _preload_content=False))

    def _delete_now(self, namespace: str, name: str, uid: str) -> None:
        options = k8s_client.V1DeleteOptions(
            grace_period_seconds=0, preconditions=k8s_client.V1Preconditions(uid=uid)
        )
        try:
            self._core.delete_namespaced_pod(name, namespace, body=options, _preload_content=False)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def _read_data(self, kind: str, namespace: str, name: str, optional: bool) -> dict[str, str] | None:
        reader = (self._core.read_namespaced_secret if kind == "secret"
                  else self._core.read_namespaced_config_map)
        try:
            obj = _json(reader(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                if optional:
                    return None
                raise ConfigError(f'{kind} "{name}" not found') from exc
            raise
        if kind == "secret":
            return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return dict(obj.get("data") or {})

    def _container_env(self, pod: Json, spec: Json) -> dict[str, str]:
        namespace = pod["metadata"]["namespace"]
        path = os.pathsep.join([*self.path_prefix, os.environ.get("PATH", os.defpath)])
        env: dict[str, str] = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
        env["PATH"] = path
        env["HOSTNAME"] = pod["metadata"]["name"]
        for source in spec.get("envFrom", []):
            kind, ref = ("secret", source["secretRef"]) if "secretRef" in source else (
                "configmap", source["configMapRef"])
            data = self._read_data(kind, namespace, ref["name"], bool(ref.get("optional")))
            for key, value in (data or {}).items():
                name = source.get("prefix", "") + key
                if _ENV_NAME.fullmatch(name):
                    env[name] = value
        for var in spec.get("env", []):
            resolved = self._env_value(pod, namespace, var, env)
            if resolved is not None:
                env[var["name"]] = resolved
        env.update(self.extra_env)
        return env

    def _env_value(self, pod: Json, namespace: str, var: Json, env: Mapping[str, str]) -> str | None:
        source = var.get("valueFrom")
        if source is None:
            return expand(var.get("value", ""), env)
        for kind, key in (("secret", "secretKeyRef"), ("configmap", "configMapKeyRef")):
            if key in source:
                ref = source[key]
                optional = bool(ref.get("optional"))
                data = self._read_data(kind, namespace, ref["name"], optional)
                if data is None or ref["key"] not in data:
                    if optional:
                        return None
                    raise ConfigError(f'couldn\'t find key {ref["key"]} in {kind} {namespace}/{ref["name"]}')
                return data[ref["key"]]
        if "fieldRef" in source:
            return field_value(pod, source["fieldRef"]["fieldPath"])
        raise ConfigError(f"env {var['name']}: {sorted(source)} is not supported by the local pod runner")

    def _spawn(self, argv: list[str], env: dict[str, str], cwd: Path | str, log_path: Path,
               label: str) -> subprocess.Popen[bytes]:
        log_file = log_path.open("ab")
        try:
            proc = subprocess.Popen(
                argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.echo else log_file, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            log_file.close()
            raise
        if self.echo and proc.stdout is not None:
            threading.Thread(target=_pump, args=(proc.stdout, log_file, label), daemon=True).start()
        else:
            log_file.close()
        return proc


class _Expired(Exception):
    """The watch's resource version is too old (410 Gone): list again."""


def _shutdown_response(response: Any) -> None:
    """Unblock a thread reading a watch response (closing alone can wait on the SSL lock)."""
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _json(response: Any) -> Json:
    """The decoded body of a call made with _preload_content=False."""
    body: Json = json.loads(response.data)
    return body


def _lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Split a streamed HTTP body into lines (a watch sends one JSON event per line)."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line.decode()


def _pump(stream: IO[bytes], log_file: IO[bytes], label: str) -> None:
    with log_file:
        for line in iter(stream.readline, b""):
            log_file.write(line)
            log_file.flush()
            sys.stderr.write(f"[{label}] {line.decode(errors='replace')}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clarion dev podrunner", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument("--namespace", action="append", dest="namespaces", help="repeatable; default: all")
    parser.add_argument("--selector", help="label selector, e.g. app.kubernetes.io/part-of=clarion")
    parser.add_argument("--logs-dir", type=Path, help="where container logs go (default: a temp dir)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for every container (repeatable; wins over the pod's)")
    parser.add_argument("--echo", action="store_true", help="also copy container output to stderr")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if bad := [item for item in args.env if "=" not in item]:
        parser.error(f"--env wants NAME=VALUE, got {bad[0]!r}")
    extra = dict(item.split("=", 1) for item in args.env)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    runner = PodRunner(args.kubeconfig, args.namespaces, args.selector, extra,
                       logs_dir=args.logs_dir, echo=args.echo)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    runner.start()
    watched = ", ".join(args.namespaces or ["all namespaces"])
    print(f"pod runner watching {watched}; logs in {runner.logs_dir}", file=sys.stderr, flush=True)
    stop.wait()
    runner.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
