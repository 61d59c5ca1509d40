"""BroadcastCampaigns with every Clarion process in a container of the built image: the chart's operator
(and its bundled Postgres and Redis) on the real node creates the sender Jobs, whose pods the kubelet
runs in containerd. Only the Telegram emulator runs on the host, on the node's bridge address."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest
from clarion_dev.telegram import Emulator
from clarion_dev.testing.campaigns import (
    Campaigns,
    add_subscribers,
    follow_up_leaves_out_the_unavailable,
    held_by,
    launch_to_mixed_audience,
    make_channel,
    mixed_audience,
)
from clarion_dev.testing.cluster import KubeApis
from clarion_dev.testing.node import NodeCluster, Release
from clarion_dev.testing.waiting import async_wait_for

pytestmark = pytest.mark.node

DONE = ("Completed", "PartiallyFailed", "Failed")


def _sender_pods(apis: KubeApis, namespace: str, campaign: str) -> list[Any]:
    pods: Any = apis.core.list_namespaced_pod(namespace, label_selector=f"clarion.io/campaign={campaign}")
    return sorted(pods.items, key=lambda p: p.metadata.creation_timestamp)


async def _exited(apis: KubeApis, namespace: str, campaign: str, count: int) -> list[Any]:
    """The campaign's sender pods once `count` of them have exited (status is written before they do)."""
    def done() -> list[Any] | None:
        pods = _sender_pods(apis, namespace, campaign)
        exited = [p for p in pods if p.status.container_statuses
                  and p.status.container_statuses[0].state.terminated is not None]
        return pods if len(exited) >= count else None

    pods: list[Any] = await async_wait_for(done, timeout=60, interval=0.3,
                                           what=f"{count} {campaign} pods exited")
    return pods


async def test_3000_recipients_exact_counts_and_blocked_users_left_out_of_the_next_campaign(
    node_cluster: NodeCluster, clarion_release: Release, node_apis: KubeApis, node_namespace: str,
    node_db: asyncpg.Pool, node_emulator: Emulator, tmp_path: Path,
) -> None:
    channel = await make_channel(node_apis, node_namespace, node_emulator, clarion_release, node_db,
                                 paid_per_second=300)
    audience = await mixed_audience(node_db, node_emulator, channel)
    campaigns = Campaigns(node_apis, node_namespace, clarion_release, tmp_path)

    await launch_to_mixed_audience(campaigns, node_db, node_emulator, channel, audience)
    # Sent by containers of the built image that the kubelet ran and that exited cleanly.
    pods = await _exited(node_apis, node_namespace, "launch", 2)
    assert len(pods) == 2
    for pod in pods:
        (container,) = pod.status.container_statuses
        assert container.container_id.startswith("containerd://")
        assert container.image == node_cluster.images["clarion"].ref
        assert container.state.terminated.exit_code == 0

    await follow_up_leaves_out_the_unavailable(campaigns, node_db, node_emulator, channel, audience)


async def test_a_sender_container_killed_through_containerd_is_replaced_by_its_job_and_nothing_is_lost(
    node_cluster: NodeCluster, clarion_release: Release, node_apis: KubeApis, node_namespace: str,
    node_db: asyncpg.Pool, node_emulator: Emulator, tmp_path: Path,
) -> None:
    # 100 messages a second: the campaign lasts about 30 s, long enough to kill its sender mid-way.
    channel = await make_channel(node_apis, node_namespace, node_emulator, clarion_release, node_db,
                                 paid_per_second=100)
    node_emulator.add_users(3000, start_id=200_000, token=channel.token, seed=11)
    audience = set(range(200_000, 203_000))
    await add_subscribers(node_db, channel, sorted(audience))
    campaigns = Campaigns(node_apis, node_namespace, clarion_release, tmp_path)

    campaigns.create("crash", channel, delivery={"parallelism": 1, "paidBroadcast": True, "batchSize": 100})

    async def victim() -> tuple[str, str] | None:
        """The running sender container, once it holds deliveries and has sent some (a kill then loses
        work in flight, which is what must not be lost)."""
        if len(node_emulator.sent(channel.token)) < 500:
            return None
        for pod in _sender_pods(node_apis, node_namespace, "crash"):
            statuses = pod.status.container_statuses or []
            if statuses and statuses[0].state.running and await held_by(node_db, pod.metadata.name) > 0:
                return pod.metadata.name, statuses[0].container_id.removeprefix("containerd://")
        return None

    found: tuple[str, str] = await async_wait_for(victim, timeout=180, interval=0.05,
                                                  what="a sender container holding deliveries")
    pod_name, container_id = found
    node_cluster.node.ctr("tasks", "kill", "--signal", "SIGKILL", container_id)
    in_flight = await held_by(node_db, pod_name)

    status = await campaigns.wait_phase("crash", *DONE, timeout=300)
    receivers = [m.chat_id for m in node_emulator.sent(channel.token)]
    assert set(receivers) == audience, f"{len(audience - set(receivers))} recipients got nothing"
    duplicates = len(receivers) - len(audience)
    assert duplicates <= in_flight, f"{duplicates} duplicates, but only {in_flight} were in flight"
    assert status["phase"] == "Completed", status
    assert (status["total"], status["sent"], status["failed"], status["pending"]) == (3000, 3000, 0, 0)
    # The Job replaced the killed pod: one pod failed with SIGKILL's 137, its successor succeeded.
    pods = await _exited(node_apis, node_namespace, "crash", 2)
    exits = [p.status.container_statuses[0].state.terminated.exit_code for p in pods]
    assert pods[0].metadata.name == pod_name
    assert exits == [137, 0], exits
    def job_counts() -> tuple[int, int] | None:
        job: Any = node_apis.batch.read_namespaced_job(f"crash-r{status['run']}", node_namespace)
        counts = (job.status.failed or 0, job.status.succeeded or 0)
        return counts if sum(counts) == 2 else None

    assert await async_wait_for(job_counts, timeout=60, what="the Job's counts") == (1, 1)
