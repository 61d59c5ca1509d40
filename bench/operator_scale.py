"""The operator with many campaigns: time until every campaign is reconciled, and the operator's RSS.

Starts a local control plane, a fresh Postgres database, the Telegram emulator (in this process) and
`clarion-operator` (a subprocess watching one namespace); creates one Ready channel and N campaigns.
No senders run in either mode: only the operator, the API server and Postgres take part.

- default, an empty audience: the operator takes each campaign through start (campaigns row, audience
  snapshot) to Completed in its first pass, without a Job. "Reconciled": from the first create until
  every campaign has a phase (equal to "all Completed" since an empty audience finishes at once);
- `--subscribers K`: K recipients per campaign, so each start also creates the runtime Secret (once)
  and a sender Job; the control plane has no kubelet, so the Jobs' pods never run and the campaigns
  stay Sending. "Reconciled": every campaign has a phase and its Job exists;
- `--steady S`: then S more seconds to measure the operator's CPU with N campaigns at rest (with
  `--subscribers`, N live campaigns on the 2.5 s status timer);
- the operator's RSS idle (channel Ready, no campaigns) and peak (sampled every 0.2 s); CPU seconds
  of the operator, API server and etcd until reconciled; the API requests of the run by verb and
  resource (all clients, the bench's own creates and polls included);
- side by side, in the same run after the operator is stopped: N creates and N status patches from
  one client with 8 threads: what this API server accepts from one client on this machine.

    .venv/bin/python bench/operator_scale.py [--campaigns 1000] [--subscribers 0] [--steady 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
from clarion.db import apply_migrations
from clarion_dev.cluster import ControlPlane
from clarion_dev.cluster.launcher import repo_manifests
from clarion_dev.telegram import Emulator
from clarion_dev.testing.processes import stop_popen
from kubernetes import client as k8s_client

BASE_DSN = os.environ.get("CLARION_DATABASE_URL", "postgresql://clarion@127.0.0.1:55432/postgres")
REDIS_URL = os.environ.get("CLARION_TEST_REDIS_URL", "redis://127.0.0.1:56379/14")
GROUP, VERSION, NS = "clarion.io", "v1alpha1", "bench"


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _requests(plane: ControlPlane) -> dict[str, float]:
    """The API server's request counters, by "VERB resource[/subresource]"."""
    found: dict[str, float] = {}
    for line in plane.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.partition("}")[0]))
        key = f"{labels.get('verb')} {labels.get('resource')}"
        if labels.get("subresource"):
            key += "/" + labels["subresource"]
        found[key] = found.get(key, 0.0) + float(line.rpartition(" ")[2])
    return found


def _phases(custom: Any) -> dict[str, int]:
    found = custom.list_namespaced_custom_object(GROUP, VERSION, NS, "broadcastcampaigns")
    counts: dict[str, int] = {}
    for item in found["items"]:
        phase = (item.get("status") or {}).get("phase") or "-"
        counts[phase] = counts.get(phase, 0) + 1
    return counts


async def run(campaigns: int, subscribers: int, steady: float, timeout: float) -> None:
    database = f"clarion_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(BASE_DSN)
    await admin.execute(f'CREATE DATABASE "{database}"')
    await admin.close()
    dsn = BASE_DSN.rpartition("/")[0] + f"/{database}"
    conn = await asyncpg.connect(dsn)
    await apply_migrations(conn)
    await conn.close()
    emulator = Emulator(limits="off")
    await emulator.start()
    bot = emulator.add_bot(username="bench_bot")
    plane = ControlPlane(workdir=Path(tempfile.mkdtemp(prefix="clarion-bench-cp-")))
    await asyncio.to_thread(plane.start)
    operator: subprocess.Popen[bytes] | None = None
    log = Path(plane.workdir) / "operator.log"
    try:
        plane.apply_manifests(repo_manifests())
        api = plane.admin_client()
        core: Any = k8s_client.CoreV1Api(api)
        custom: Any = k8s_client.CustomObjectsApi(api)
        batch: Any = k8s_client.BatchV1Api(api)
        core.create_namespace({"metadata": {"name": NS}})
        env = dict(os.environ) | {"KUBECONFIG": str(plane.kubeconfig), "CLARION_DATABASE_URL": dsn,
                                  "CLARION_REDIS_URL": REDIS_URL, "CLARION_LOG_LEVEL": "WARNING",
                                  "CLARION_DB_POOL_MAX": "20"}
        with log.open("wb") as out:
            operator = subprocess.Popen([str(Path(sys.executable).with_name("clarion-operator")), "-n", NS],
                                        env=env, stdout=out, stderr=subprocess.STDOUT)
        core.create_namespaced_secret(NS, {"metadata": {"name": "bot"}, "stringData": {"token": bot.token}})
        custom.create_namespaced_custom_object(GROUP, VERSION, NS, "notificationchannels", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "NotificationChannel", "metadata": {"name": "news"},
            "spec": {"type": "telegram", "telegram": {
                "botTokenSecretRef": {"name": "bot"}, "apiBaseUrl": emulator.base_url,
                "bot": {"replicas": 0}}}})
        while True:
            channel = custom.get_namespaced_custom_object(GROUP, VERSION, NS, "notificationchannels", "news")
            conditions = (channel.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                break
            await asyncio.sleep(0.2)

        audience: dict[str, Any] = {"tags": ["nobody"]}
        if subscribers:
            audience = {"tags": ["bench"]}
            conn = await asyncpg.connect(dsn)
            channel_id = await conn.fetchval(
                "SELECT id FROM channels WHERE namespace = $1 AND name = 'news'", NS)
            await conn.execute("INSERT INTO subscribers (channel_id, chat_id, tags) "
                               "SELECT $1, 1000 + n, '{bench}' FROM generate_series(1, $2) AS n",
                               channel_id, subscribers)
            await conn.close()

        def create(i: int) -> None:
            custom.create_namespaced_custom_object(GROUP, VERSION, NS, "broadcastcampaigns", {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "BroadcastCampaign",
                "metadata": {"name": f"c{i:05d}"},
                "spec": {"channelRef": {"name": "news"}, "message": {"text": "hi"}, "audience": audience}})

        def jobs() -> int:
            found = batch.list_namespaced_job(NS, _preload_content=False)
            return len(json.loads(found.data)["items"])

        await asyncio.sleep(2)
        idle = _rss_mb(operator.pid)
        peak = idle
        watched = {"operator": operator.pid} | {name: pid for name, pid in plane.pids().items()
                                                if name in ("kube-apiserver", "etcd")}
        cpu_before = {name: _cpu_seconds(pid) for name, pid in watched.items()}
        requests_before = await asyncio.to_thread(_requests, plane)
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            await asyncio.gather(*(asyncio.get_running_loop().run_in_executor(pool, create, i)
                                   for i in range(campaigns)))
        created = time.monotonic() - started
        last_poll = 0.0
        phases: dict[str, int] = {}
        first_pass: float | None = None
        done: float | None = None
        while done is None or time.monotonic() < done + steady:
            peak = max(peak, _rss_mb(operator.pid))
            if time.monotonic() - last_poll >= 1.0:
                phases = await asyncio.to_thread(_phases, custom)
                last_poll = time.monotonic()
                if first_pass is None and sum(phases.values()) - phases.get("-", 0) == campaigns and (
                        not subscribers or await asyncio.to_thread(jobs) == campaigns):
                    first_pass = last_poll - started
                if done is None and (phases.get("Completed", 0) == campaigns
                                     or (subscribers and first_pass is not None)):
                    done = last_poll
                    cpu = {name: _cpu_seconds(pid) - cpu_before[name] for name, pid in watched.items()}
                    steady_cpu = _cpu_seconds(operator.pid)
                if last_poll - started > timeout:
                    raise RuntimeError(f"not done after {timeout}s: phases {phases}; see {log}")
            if operator.poll() is not None:
                raise RuntimeError(f"the operator exited; see {log}")
            await asyncio.sleep(0.2)
        elapsed = done - started
        steady_load = (_cpu_seconds(operator.pid) - steady_cpu) / steady if steady else 0.0
        requests_after = await asyncio.to_thread(_requests, plane)
        operator.send_signal(signal.SIGTERM)
        operator.wait(timeout=60)

        def patch_status(i: int) -> None:
            custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, NS, "broadcastcampaigns", f"c{i:05d}", {"status": {"message": "bench"}})

        peer_started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            await asyncio.gather(*(asyncio.get_running_loop().run_in_executor(pool, patch_status, i)
                                   for i in range(campaigns)))
        patched = time.monotonic() - peer_started
        reconciled = first_pass if first_pass is not None else elapsed
        what = (f"{subscribers} recipients each: a sender Job each, no pods run" if subscribers
                else "empty audience: no sender Jobs")
        print(f"operator scale, {campaigns} campaigns ({what}), load average {os.getloadavg()[0]:.1f}:")
        goal = "has a phase and its Job" if subscribers else "has a phase"
        print(f"  reconciled (every campaign {goal}): {reconciled:.1f}s after the first create, "
              f"{reconciled - created:.1f}s after the last (target <= 60s)"
              + ("" if subscribers else f"; all Completed: {elapsed:.1f}s"))
        if steady:
            print(f"  then {steady:.0f}s with every campaign {'Sending' if subscribers else 'Completed'}: "
                  f"operator CPU {100 * steady_load:.0f}% of one core")
        print(f"  operator RSS: idle {idle:.0f} MB, peak {peak:.0f} MB (target <= 300 MB)")
        print("  CPU seconds to reconcile: " + ", ".join(f"{name} {used:.1f}" for name, used in cpu.items()))
        spent = {key: requests_after.get(key, 0.0) - requests_before.get(key, 0.0) for key in requests_after}
        spent = {key: n for key, n in sorted(spent.items()) if n >= campaigns / 10
                 and any(r in key for r in ("broadcastcampaigns", "events", "jobs", "secrets"))}
        print("  API requests (all clients): "
              + ", ".join(f"{key} {n:.0f}" for key, n in spent.items()))
        print(f"  peer, one client with 8 threads: {campaigns} creates in {created:.1f}s "
              f"({campaigns / created:.0f}/s), {campaigns} status patches in {patched:.1f}s "
              f"({campaigns / patched:.0f}/s)")
    finally:
        if operator is not None:
            stop_popen(operator)
        await asyncio.to_thread(plane.stop)
        await emulator.stop()
        admin = await asyncpg.connect(BASE_DSN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaigns", type=int, default=1000)
    parser.add_argument("--subscribers", type=int, default=0,
                        help="recipients per campaign; > 0: each gets a sender Job (whose pods never run "
                             "here) and stays Sending, so the status timer runs for all of them")
    parser.add_argument("--steady", type=float, default=0.0,
                        help="seconds to keep measuring the operator's CPU once everything is reconciled")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    args = parser.parse_args()
    asyncio.run(run(args.campaigns, args.subscribers, args.steady, args.timeout))


if __name__ == "__main__":
    main()
