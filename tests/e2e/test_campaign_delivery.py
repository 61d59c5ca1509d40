"""A BroadcastCampaign end to end: snapshot, indexed sender Job run by the pod runner, exact counts."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from clarion_dev.podrunner import PodRunner
from clarion_dev.telegram import Emulator
from clarion_dev.testing.cluster import KubeApis

from .conftest import Campaigns, Operator, add_subscribers, delivery_counts, make_channel

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
    kube_namespace: str, db: asyncpg.Pool, tmp_path: Path,
) -> None:
    channel = await make_channel(k8s, kube_namespace, telegram_emulator, operator, db)

    campaigns.create("empty", channel, audience={"tags": ["nobody-has-this"]})

    status = await campaigns.wait_phase("empty", "Completed", "Failed")
    assert (status["phase"], status["total"], status["progress"]) == ("Completed", 0, 100)
    assert campaigns.jobs("empty") == []
