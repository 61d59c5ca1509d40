"""A BroadcastCampaign end to end: snapshot, indexed sender Job run by the pod runner, exact counts."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from clarion_dev.podrunner import PodRunner
from clarion_dev.telegram import Emulator
from clarion_dev.testing.campaigns import (
    Campaigns,
    add_subscribers,
    delivery_counts,
    follow_up_leaves_out_the_unavailable,
    launch_to_mixed_audience,
    make_channel,
    mixed_audience,
)
from clarion_dev.testing.cluster import KubeApis
from clarion_dev.testing.operator import Operator
from clarion_dev.testing.waiting import async_wait_for

pytestmark = pytest.mark.e2e


async def test_every_reachable_subscriber_gets_one_message_and_blocked_ones_are_left_out_next_time(
    telegram_emulator: Emulator, operator: Operator, campaigns: Campaigns, pod_runner: PodRunner,
    k8s: KubeApis, kube_namespace: str, db: asyncpg.Pool,
) -> None:
    channel = await make_channel(k8s, kube_namespace, telegram_emulator, operator, db, paid_per_second=300)
    audience = await mixed_audience(db, telegram_emulator, channel)

    status = await launch_to_mixed_audience(campaigns, db, telegram_emulator, channel, audience)
    assert status["run"] == 1 and status["jobName"] == "launch-r1"
    jobs = campaigns.jobs("launch")
    assert [j["metadata"]["name"] for j in jobs] == ["launch-r1"]
    assert jobs[0]["spec"]["completions"] == 2 and jobs[0]["spec"]["completionMode"] == "Indexed"

    await follow_up_leaves_out_the_unavailable(campaigns, db, telegram_emulator, channel, audience)


async def test_campaign_to_nobody_completes_without_a_job(
    telegram_emulator: Emulator, operator: Operator, campaigns: Campaigns, k8s: KubeApis,
    kube_namespace: str, db: asyncpg.Pool,
) -> None:
    channel = await make_channel(k8s, kube_namespace, telegram_emulator, operator, db)

    campaigns.create("empty", channel, audience={"tags": ["nobody-has-this"]})

    status = await campaigns.wait_phase("empty", "Completed", "Failed")
    assert (status["phase"], status["total"], status["progress"]) == ("Completed", 0, 100)
    assert campaigns.jobs("empty") == []


async def test_deleting_a_campaign_removes_its_job_and_keeps_deliveries_unless_retention_says_otherwise(
    telegram_emulator: Emulator, operator: Operator, campaigns: Campaigns, pod_runner: PodRunner,
    k8s: KubeApis, kube_namespace: str, db: asyncpg.Pool,
) -> None:
    channel = await make_channel(k8s, kube_namespace, telegram_emulator, operator, db)
    for uid in range(100_000, 100_010):
        telegram_emulator.add_user(uid)
    await add_subscribers(db, channel, range(100_000, 100_010))
    campaigns.create("audited", channel)
    campaigns.create("forgotten", channel, retention={"keepDeliveries": False})
    for name in ("audited", "forgotten"):
        await campaigns.wait_phase(name, "Completed")
    events: Any = k8s.core.list_namespaced_event(kube_namespace, field_selector="involvedObject.name=audited")
    assert {"Started", "Completed"} <= {e.reason for e in events.items}

    for name in ("audited", "forgotten"):
        k8s.custom.delete_namespaced_custom_object("clarion.io", "v1alpha1", kube_namespace,
                                                   "broadcastcampaigns", name)

    def gone(name: str) -> bool:
        return campaigns.get(name) is None and not campaigns.jobs(name)

    await async_wait_for(lambda: gone("audited") and gone("forgotten"), timeout=60, interval=0.3,
                         what="both campaigns and their Jobs to go away")

    assert await delivery_counts(db, kube_namespace, "audited") == {"sent": 10}
    assert await delivery_counts(db, kube_namespace, "forgotten") == {}
    rows = await db.fetch("SELECT name, deleted_at FROM campaigns WHERE namespace = $1", kube_namespace)
    assert len(rows) == 2 and all(r["deleted_at"] is not None for r in rows)
