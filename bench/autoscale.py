"""Issue 14's worker autoscaling in one run: how fast a backlog gets its first extra worker pod, and how
much faster the scaled workers drain it than one fixed pod.

Starts a local control plane, `clarion-operator` (a subprocess; its scaler polls every 2 s), the pod
runner (in this process: worker pods become `clarion-worker` processes, stopped with their grace
period), the SMTP sink (in this process, plain SMTP), a scratch database and the Redis db of
`CLARION_BENCH_REDIS_URL` (default 13; emptied). Two email channels in namespace `bench`, each worker
process paced at `--rate` emails/s (an email channel's `ratePerSecond` is per process, so pods add
throughput; a Telegram bot's 30/s is shared by all its pods):

- `auto`: the instant lane at minReplicas 1, maxReplicas 4, targetLagPerReplica `--backlog` / 4,
  cooldown 5 s (bulk lane at 0);
- `fixed`: the instant lane at minReplicas = maxReplicas = 1.

1. Reaction, `--reps` times on `auto`, each from rest (one pod Running, nothing waiting): `--backlog`
   notifications stored in the outbox (one INSERT, as the API's group commit does) and their ids
   XADDed in one pipeline; t0 is the moment before that pipeline. Then polled every 50 ms: the
   Deployment's `spec.replicas` raised (the scale decision), the first new pod object (created by the
   ReplicaSet controller), that pod's `status.phase` Running (written by the pod runner when it has
   started the process). Times are from t0, median and max over the reps; each includes up to one
   50 ms poll.
2. Drain, `--drain` notifications put on the lane the same way, once on `auto` (from one pod) and once
   on `fixed`: t0 to the last row's `sent_at`. Side by side with the ratio.

Goal (issue 14): the first extra replica created within 10 s of the backlog appearing.

    .venv/bin/python bench/autoscale.py [--reps 5] [--backlog 1000] [--drain 3000] [--rate 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import redis.asyncio as aioredis
from clarion.db import notifications as q
from clarion.streams import add_tasks
from clarion_dev.cluster import ControlPlane
from clarion_dev.cluster.launcher import repo_manifests
from clarion_dev.podrunner import PodRunner
from clarion_dev.smtp_sink import SmtpSink
from clarion_dev.testing.processes import stop_popen
from kubernetes import client as k8s_client
from kubernetes.client import ApiException

from bench.sender_common import REDIS_URL, scratch_database, table

GROUP, VERSION, NS = "clarion.io", "v1alpha1", "bench"
POLL = 0.05
T = TypeVar("T")


async def until(what: str, check: Callable[[], Awaitable[T | None]], timeout: float,
                interval: float = POLL) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found is not None and found is not False:
            return found
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout:.0f} s")
        await asyncio.sleep(interval)


class Bench:
    def __init__(self, plane: ControlPlane, pool: asyncpg.Pool, runner: PodRunner, backlog: int) -> None:
        api = plane.admin_client()
        self.apps: Any = k8s_client.AppsV1Api(api)
        self.core: Any = k8s_client.CoreV1Api(api)
        self.custom: Any = k8s_client.CustomObjectsApi(api)
        self.pool, self.runner, self.backlog_size = pool, runner, backlog
        self.redis = aioredis.Redis.from_url(REDIS_URL)

    def create_channel(self, name: str, port: int, rate: int, autoscaling: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, NS, "notificationchannels", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "NotificationChannel", "metadata": {"name": name},
            "spec": {"type": "email",
                     "email": {"host": "127.0.0.1", "port": port, "tls": "none",
                               "from": "Bench <bench@example.org>", "ratePerSecond": rate},
                     "workers": {"autoscaling": autoscaling | {"lanes": {"bulk": {"minReplicas": 0}}}}}})

    async def replicas(self, channel: str) -> int:
        """The instant Deployment's spec.replicas (0 before the operator created it)."""
        try:
            scale = await asyncio.to_thread(self.apps.read_namespaced_deployment_scale,
                                            f"{channel}-workers-instant", NS)
        except ApiException as exc:
            if exc.status == 404:
                return 0
            raise
        return int(scale.spec.replicas)

    async def pods(self, channel: str) -> dict[str, str]:
        """The instant lane's pods (name -> phase), Terminating ones left out."""
        found = await asyncio.to_thread(self.core.list_namespaced_pod, NS,
                                        label_selector="clarion.io/lane=instant")
        return {p.metadata.name: p.status.phase for p in found.items
                if p.metadata.name.startswith(f"{channel}-workers-instant-")
                and p.metadata.deletion_timestamp is None}

    async def at_rest(self, channel: str, timeout: float = 120) -> set[str]:
        """Waits for one pod Running (and one process: the stopped pods have exited) and nothing unsent;
        returns the pod names."""
        async def rest() -> set[str] | None:
            pods = await self.pods(channel)
            if await self.replicas(channel) != 1 or list(pods.values()) != ["Running"]:
                return None
            processes = [p for p in self.runner.running_pods() if f"/{channel}-workers-instant-" in p]
            unsent = await self.pool.fetchval(
                "SELECT count(*) FROM notifications n JOIN channels c ON c.id = n.channel_id "
                "WHERE c.name = $1 AND n.status <> 'sent'", channel)
            return set(pods) if unsent == 0 and len(processes) == 1 else None
        return await until(f"{channel} at rest", rest, timeout, interval=0.3)

    async def backlog(self, channel: str, count: int) -> tuple[float, float, list[uuid.UUID]]:
        """`count` rows stored in one INSERT, then their ids XADDed in one pipeline; (t0 monotonic,
        t0 on the wall clock, which the database's `sent_at` also reads, ids)."""
        channel_id = await self.pool.fetchval("SELECT id FROM channels WHERE name = $1", channel)
        news = [q.NewNotification(
            id=uuid.uuid4(), channel_id=channel_id, lane="instant", recipient=f"reader{i}@example.org",
            content={"subject": "Your order has shipped", "text": "It is on its way."}, reference=None,
            api_key_id=None, trace_id=os.urandom(16).hex(), scheduled_for=None, max_attempts=3)
            for i in range(count)]
        async with self.pool.acquire() as conn:
            rows = await q.accept_many(conn, news)
        t0, t0_wall = time.monotonic(), time.time()
        await add_tasks(self.redis, [row.entry() for row in rows])
        return t0, t0_wall, [n.id for n in news]

    async def reaction(self) -> tuple[float, float, float]:
        """(decision, pod created, pod Running), seconds after the backlog appeared."""
        before = await self.at_rest("auto")
        t0, _, _ = await self.backlog("auto", self.backlog_size)
        decision = await until("scale decision", lambda: self._above("auto", 1), 60)
        t_decision = decision - t0
        new: str = await until("new pod", lambda: self._new_pod(before), 60)
        t_created = time.monotonic() - t0
        await until("new pod Running", lambda: self._running(new), 60)
        return t_decision, t_created, time.monotonic() - t0

    async def _above(self, channel: str, count: int) -> float | None:
        return time.monotonic() if await self.replicas(channel) > count else None

    async def _new_pod(self, before: set[str]) -> str | None:
        return next(iter(set(await self.pods("auto")) - before), None)

    async def _running(self, pod: str) -> bool:
        return (await self.pods("auto")).get(pod) == "Running"

    async def drain(self, channel: str, count: int) -> tuple[float, int]:
        """Seconds from the backlog on the stream to its last row sent; the most replicas seen."""
        await self.at_rest(channel)
        _, t0_wall, ids = await self.backlog(channel, count)
        peak = 1

        async def all_sent() -> float | None:
            nonlocal peak
            peak = max(peak, await self.replicas(channel))
            row = await self.pool.fetchrow(
                "SELECT count(*) AS n, extract(epoch FROM max(sent_at)) AS last FROM notifications "
                "WHERE id = ANY($1::uuid[]) AND status = 'sent'", ids)
            return float(row["last"]) if row["n"] == count else None

        last = await until(f"{count} sent on {channel}", all_sent, 600, interval=0.2)
        return last - t0_wall, peak


async def run(args: argparse.Namespace) -> None:
    async with scratch_database("autoscale") as (dsn, pool):
        sink = SmtpSink()
        await sink.start()
        plane = ControlPlane(workdir=Path(tempfile.mkdtemp(prefix="clarion-bench-autoscale-")))
        await asyncio.to_thread(plane.start)
        operator: subprocess.Popen[bytes] | None = None
        runner: PodRunner | None = None
        log = plane.workdir / "operator.log"
        try:
            plane.apply_manifests(repo_manifests())
            bench_api: Any = k8s_client.CoreV1Api(plane.admin_client())
            bench_api.create_namespace({"metadata": {"name": NS}})
            env = dict(os.environ) | {"KUBECONFIG": str(plane.kubeconfig), "CLARION_DATABASE_URL": dsn,
                                      "CLARION_REDIS_URL": REDIS_URL, "CLARION_LOG_LEVEL": "WARNING"}
            with log.open("wb") as out:
                operator = subprocess.Popen(
                    [str(Path(sys.executable).with_name("clarion-operator")), "-n", NS],
                    env=env, stdout=out, stderr=subprocess.STDOUT)
            runner = PodRunner(plane.kubeconfig, [NS], logs_dir=plane.workdir / "pod-logs",
                               max_grace_seconds=60).start()
            bench = Bench(plane, pool, runner, args.backlog)
            bench.create_channel("auto", sink.port, args.rate, {
                "minReplicas": 1, "maxReplicas": 4, "targetLagPerReplica": max(1, args.backlog // 4),
                "scaleDownCooldownSeconds": 5})
            bench.create_channel("fixed", sink.port, args.rate, {"minReplicas": 1, "maxReplicas": 1})
            reactions = [await bench.reaction() for _ in range(args.reps)]
            auto, auto_peak = await bench.drain("auto", args.drain)
            fixed, _ = await bench.drain("fixed", args.drain)
        finally:
            if runner is not None:
                await asyncio.to_thread(runner.stop)
            if operator is not None:
                stop_popen(operator)
            await asyncio.to_thread(plane.stop)
            await sink.stop()

    rows: list[list[Any]] = []
    for i, what in enumerate(("scale decision (Deployment spec.replicas raised)",
                              "first new pod created", "that pod Running")):
        times = [r[i] for r in reactions]
        rows.append([f"backlog of {args.backlog} -> {what}, s", statistics.median(times), max(times),
                     "≤ 10" if i == 1 else "—"])
    print(table(f"worker autoscaling, {args.reps} reps, load average {os.getloadavg()[0]:.1f}",
                ["measure", "median", "max", "goal"], rows))
    print()
    print(table(f"drain of {args.drain} emails at {args.rate}/s per pod",
                ["instant lane", "seconds", "emails/s", "pods (peak)"],
                [["autoscaled, min 1 max 4", auto, args.drain / auto, auto_peak],
                 ["fixed, 1 replica", fixed, args.drain / fixed, 1]]))
    print(f"fixed / autoscaled: {fixed / auto:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="reaction measurements")
    parser.add_argument("--backlog", type=int, default=1000, help="notifications per reaction measurement")
    parser.add_argument("--drain", type=int, default=3000, help="notifications drained by each setup")
    parser.add_argument("--rate", type=int, default=50, help="the channels' ratePerSecond (per pod)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
