"""The operator with many campaigns: time until every campaign is reconciled, and the operator's RSS.

Starts a local control plane, a fresh Postgres database, the Telegram emulator (in this process) and
`clarion-operator` (a subprocess watching one namespace); creates one Ready channel and N campaigns
whose audience is empty, so each one goes the whole way through the operator (campaign row, audience
snapshot, status) to Completed without a sender Job. Reports the time from the first create until
every campaign has a phase (first pass) and until the last is Completed (second pass, on the status
timer), and the operator's peak resident memory sampled every 0.2 s.

    .venv/bin/python bench/operator_scale.py [--campaigns 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
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


def _phases(custom: Any) -> dict[str, int]:
    found = custom.list_namespaced_custom_object(GROUP, VERSION, NS, "broadcastcampaigns")
    counts: dict[str, int] = {}
    for item in found["items"]:
        phase = (item.get("status") or {}).get("phase") or "-"
        counts[phase] = counts.get(phase, 0) + 1
    return counts


async def run(campaigns: int) -> None:
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

        def create(i: int) -> None:
            custom.create_namespaced_custom_object(GROUP, VERSION, NS, "broadcastcampaigns", {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "BroadcastCampaign",
                "metadata": {"name": f"c{i:05d}"},
                "spec": {"channelRef": {"name": "news"}, "message": {"text": "hi"},
                         "audience": {"tags": ["nobody"]}}})

        peak = _rss_mb(operator.pid)
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            await asyncio.gather(*(asyncio.get_running_loop().run_in_executor(pool, create, i)
                                   for i in range(campaigns)))
        created = time.monotonic() - started
        last_poll = 0.0
        phases: dict[str, int] = {}
        first_pass: float | None = None
        while phases.get("Completed", 0) < campaigns:
            peak = max(peak, _rss_mb(operator.pid))
            if time.monotonic() - last_poll >= 1.0:
                phases = await asyncio.to_thread(_phases, custom)
                last_poll = time.monotonic()
                if first_pass is None and sum(phases.values()) - phases.get("-", 0) == campaigns:
                    first_pass = last_poll - started
            if operator.poll() is not None:
                raise RuntimeError(f"the operator exited; see {log}")
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started
        print(f"operator scale: {campaigns} campaigns created in {created:.1f}s; every one had a phase "
              f"after {first_pass if first_pass is not None else elapsed:.1f}s and was Completed after "
              f"{elapsed:.1f}s (target <= 60s); operator peak RSS {peak:.0f} MB (target <= 300 MB); "
              f"load average {os.getloadavg()[0]:.1f}")
    finally:
        if operator is not None and operator.poll() is None:
            operator.send_signal(signal.SIGTERM)
            try:
                operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                operator.kill()
        await asyncio.to_thread(plane.stop)
        await emulator.stop()
        admin = await asyncpg.connect(BASE_DSN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaigns", type=int, default=1000)
    asyncio.run(run(parser.parse_args().campaigns))


if __name__ == "__main__":
    main()
