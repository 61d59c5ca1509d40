"""A BroadcastCampaign end to end: snapshot, indexed sender Job run by the pod runner, exact counts."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from clarion_dev.podrunner import PodRunner
from clarion_dev.telegram import Emulator
from clarion_dev.testing.campaigns import Campaigns, add_subscribers, delivery_counts, make_channel
from clarion_dev.testing.cluster import KubeApis
from clarion_dev.testing.operator import Operator
from clarion_dev.testing.waiting import async_wait_for

pytestmark = pytest.mark.e2e


async def test_every_reachable_subscriber_gets_one_message_and_blocked_ones_are_left_out_next_time(
    telegram_emulator: Emulator, operator: Operator, campaigns: Campaigns, pod_runner: PodRunner,
    k8s: KubeApis, kube_namespace: str, db: asyncpg.Pool,
) -> None:
    channel = await make_channel(k8s, kube_namespace, telegram_emulator, operator, db, paid_per_second=300)
    users = telegram_emulator.add_users(2900, start_id=100_000, blocked_share=0.05, deactivated_share=0.02,
                                        token=channel.token, seed=7)
    unknown = list(range(900_000, 900_100))  # subscribers Telegram has never heard of: chat not found
    await add_subscribers(db, channel, [*range(100_000, 103_000 - 100), *unknown])
    unreachable = set(users["blocked"]) | set(users["deactivated"])
    reachable = set(range(100_000, 102_900)) - unreachable

    campaigns.create("launch", channel, delivery={"parallelism": 2, "paidBroadcast": True, "batchSize": 100})

    status = await campaigns.wait_phase("launch", "Completed", "PartiallyFailed", "Failed", timeout=240)
    assert status["phase"] == "PartiallyFailed"
    assert (status["total"], status["sent"], status["blocked"], status["failed"], status["pending"]) == (
        3000, len(reachable), len(unreachable), len(unknown), 0)
    assert status["progress"] == 100 and status["run"] == 1 and status["jobName"] == "launch-r1"
    sent = telegram_emulator.sent(channel.token)
    receivers = [m.chat_id for m in sent]
    assert len(receivers) == len(set(receivers)) == len(reachable)
    assert set(receivers) == reachable
    assert {m.text for m in sent} == {"Hello from Clarion"}
    unavailable = await db.fetch("SELECT chat_id FROM subscribers WHERE channel_id = $1 AND unavailable",
                                 channel.id)
    assert {r["chat_id"] for r in unavailable} == unreachable
    jobs = campaigns.jobs("launch")
    assert [j["metadata"]["name"] for j in jobs] == ["launch-r1"]
    assert jobs[0]["spec"]["completions"] == 2 and jobs[0]["spec"]["completionMode"] == "Indexed"

    campaigns.create("follow-up", channel, text="Second news",
                     delivery={"parallelism": 1, "paidBroadcast": True})

    second = await campaigns.wait_phase("follow-up", "Completed", "PartiallyFailed", "Failed", timeout=240)
    assert second["total"] == len(reachable) + len(unknown)
    assert second["blocked"] == 0 and second["sent"] == len(reachable)
    follow_up = [m.chat_id for m in telegram_emulator.sent(channel.token) if m.text == "Second news"]
    assert sorted(follow_up) == sorted(reachable)
    assert await delivery_counts(db, kube_namespace, "follow-up") == {
        "sent": len(reachable), "failed": len(unknown)}


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
