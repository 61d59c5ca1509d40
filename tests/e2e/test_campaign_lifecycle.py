"""Campaign lifecycle end to end: draft, time-zone schedule, pause/resume, cancel, retry-failed,
edits refused after the start, a killed sender, a restarted operator."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from clarion_dev import campaign_cli
from clarion_dev.cluster import ControlPlane
from clarion_dev.podrunner import PodRunner
from clarion_dev.telegram import Emulator
from clarion_dev.testing.campaigns import Campaigns, Channel, add_subscribers, delivery_counts, make_channel
from clarion_dev.testing.cluster import KubeApis
from clarion_dev.testing.operator import Operator
from clarion_dev.testing.waiting import async_wait_for
from kubernetes.client import ApiException

pytestmark = pytest.mark.e2e

USERS = 100_000


async def _audience(emulator: Emulator, db: asyncpg.Pool, channel: Channel, count: int) -> set[int]:
    for uid in range(USERS, USERS + count):
        emulator.add_user(uid)
    await add_subscribers(db, channel, range(USERS, USERS + count))
    return set(range(USERS, USERS + count))


def _receivers(emulator: Emulator, channel: Channel) -> list[int]:
    return [m.chat_id for m in emulator.sent(channel.token)]


async def _quiet(db: asyncpg.Pool, campaigns: Campaigns, namespace: str, name: str) -> dict[str, int]:
    """Wait until no sender pod of the campaign runs and no delivery is held; return the counts."""
    async def settled() -> Any:
        pods: Any = campaigns.k8s.core.list_namespaced_pod(
            namespace, label_selector=f"clarion.io/campaign={name}")
        if any(p.status.phase in ("Pending", "Running") for p in pods.items):
            return None
        counts = await delivery_counts(db, namespace, name)
        return counts if not counts.get("sending") else None

    found: dict[str, int] = await async_wait_for(
        settled, timeout=60, interval=0.3, what=f"{name} senders stopped")
    return found


async def test_suspended_campaign_is_a_draft_until_released(
    telegram_emulator: Emulator, operator: Operator, campaigns: Campaigns, pod_runner: PodRunner,
    k8s: KubeApis, kube_namespace: str, db: asyncpg.Pool,
) -> None:
    channel = await make_channel(k8s, kube_namespace, telegram_emulator, operator, db)
    audience = await _audience(telegram_emulator, db, channel, 20)

    campaigns.create("draft", channel, suspend=True)

    draft = await campaigns.wait_phase("draft", "Draft")
    assert campaigns.jobs("draft") == []
    assert await db.fetchval("SELECT count(*) FROM campaigns WHERE name = 'draft'") == 0
    assert _receivers(telegram_emulator, channel) == []

    campaigns.patch("draft", {"suspend": False})

    done = await campaigns.wait_phase("draft", "Completed")
    assert draft["phase"] == "Draft" and done["sent"] == 20
    assert sorted(_receivers(telegram_emulator, channel)) == sorted(audience)


async def test_campaign_scheduled_in_a_time_zone_waits_for_that_local_time(
    telegram_emulator: Emulator, operator: Operator, campaigns: Campaigns, pod_runner: PodRunner,
    k8s: KubeApis, kube_namespace: str, db: asyncpg.Pool,
) -> None:
    channel = await make_channel(k8s, kube_namespace, telegram_emulator, operator, db)
    audience = await _audience(telegram_emulator, db, channel, 10)
    start = (datetime.now(UTC) + timedelta(seconds=8)).replace(microsecond=0)
    tokyo_local = start.astimezone(ZoneInfo("Asia/Tokyo")).replace(tzinfo=None).isoformat()

    campaigns.create("tokyo", channel, schedule={"at": tokyo_local, "timeZone": "Asia/Tokyo"})

    scheduled = await campaigns.wait_phase("tokyo", "Scheduled")
    assert scheduled["scheduledAt"] == start.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert _receivers(telegram_emulator, channel) == []
    done = await campaigns.wait_phase("tokyo", "Completed", timeout=90)
    assert datetime.fromisoformat(done["startedAt"].replace("Z", "+00:00")) >= start
    assert sorted(_receivers(telegram_emulator, channel)) == sorted(audience)


async def test_pause_stops_sending_and_resume_finishes_without_duplicates(
    telegram_emulator: Emulator, operator: Operator, campaigns: Campaigns, pod_runner: PodRunner,
    k8s: KubeApis, kube_namespace: str, db: asyncpg.Pool,
) -> None:
    channel = await make_channel(k8s, kube_namespace, telegram_emulator, operator, db, global_per_second=10)
    audience = await _audience(telegram_emulator, db, channel, 200)
    campaigns.create("slow", channel, delivery={"parallelism": 2, "batchSize": 10})
    await campaigns.wait("slow", "some sent", lambda s: (s.get("sent") or 0) >= 20)

    campaigns.patch("slow", {"suspend": True})

    await campaigns.wait_phase("slow", "Paused")
    held = await _quiet(db, campaigns, kube_namespace, "slow")
    paused = await campaigns.wait("slow", "status caught up", lambda s: s.get("sent") == held.get("sent"))
    assert paused["phase"] == "Paused" and 0 < paused["sent"] < 200
    assert len(_receivers(telegram_emulator, channel)) == held["sent"]

    campaigns.patch("slow", {"suspend": False})

    done = await campaigns.wait_phase("slow", "Completed", timeout=120)
    receivers = _receivers(telegram_emulator, channel)
    assert done["sent"] == 200 and set(receivers) == audience
    assert len(receivers) == len(set(receivers))


async def test_edit_after_start_is_refused_and_cancel_marks_unsent_deliveries_cancelled(
    telegram_emulator: Emulator, operator: Operator, campaigns: Campaigns, pod_runner: PodRunner,
    k8s: KubeApis, kube_namespace: str, db: asyncpg.Pool,
) -> None:
    channel = await make_channel(k8s, kube_namespace, telegram_emulator, operator, db, global_per_second=10)
    await _audience(telegram_emulator, db, channel, 200)
    campaigns.create("oops", channel, delivery={"parallelism": 1, "batchSize": 10})
    await campaigns.wait("oops", "sending",
                         lambda s: s.get("phase") == "Sending" and (s.get("sent") or 0) > 0)

    with pytest.raises(ApiException) as refused:
        campaigns.patch("oops", {"message": {"text": "Corrected text"}})
    assert refused.value.status == 422
    assert "spec.message cannot change after the campaign started (phase Sending)" in str(refused.value.body)

    campaigns.patch("oops", {"cancel": True})

    await campaigns.wait_phase("oops", "Cancelled")
    held = await _quiet(db, campaigns, kube_namespace, "oops")
    final = await campaigns.wait("oops", "status caught up",
                                 lambda s: s.get("sent") == held.get("sent") and s.get("pending") == 0)
    rows = await delivery_counts(db, kube_namespace, "oops")
    assert rows.get("pending", 0) == rows.get("sending", 0) == 0
    assert final["cancelled"] == rows["cancelled"] > 0 and final["sent"] == rows["sent"]
    assert final["sent"] + final["cancelled"] == final["total"] == 200
    assert final["progress"] == 100
    progressing = {c["type"]: c for c in final["conditions"]}["Progressing"]
    assert progressing["status"] == "False"
    assert all(j["metadata"].get("deletionTimestamp") for j in campaigns.jobs("oops"))
    assert len(_receivers(telegram_emulator, channel)) == held["sent"]
    assert {m.text for m in telegram_emulator.sent(channel.token)} == {"Hello from Clarion"}


async def test_retry_failed_resends_only_the_failed_deliveries(
    telegram_emulator: Emulator, operator: Operator, campaigns: Campaigns, pod_runner: PodRunner,
    k8s: KubeApis, kube_namespace: str, db: asyncpg.Pool, control_plane: ControlPlane,
) -> None:
    channel = await make_channel(k8s, kube_namespace, telegram_emulator, operator, db)
    audience = await _audience(telegram_emulator, db, channel, 30)
    strangers = list(range(800_000, 800_005))  # Telegram does not know them yet: chat not found
    await add_subscribers(db, channel, strangers)
    campaigns.create("again", channel)
    first = await campaigns.wait_phase("again", "PartiallyFailed")
    assert (first["sent"], first["failed"], first["run"]) == (30, 5, 1)

    for uid in strangers:
        telegram_emulator.add_user(uid)
    code = campaign_cli.main(["retry-failed", "again", "-n", kube_namespace,
                              "--kubeconfig", str(control_plane.kubeconfig)])

    assert code == 0
    done = await campaigns.wait("again", "run 2 completed",
                                lambda s: s.get("run") == 2 and s.get("phase") == "Completed")
    assert (done["sent"], done["failed"], done["retryFailedObserved"]) == (35, 0, 1)
    receivers = _receivers(telegram_emulator, channel)
    assert sorted(receivers) == sorted(audience | set(strangers))
    assert sorted(j["metadata"]["name"] for j in campaigns.jobs("again")) == ["again-r1", "again-r2"]


async def test_killed_sender_is_restarted_by_the_job_and_nothing_is_lost(
    telegram_emulator: Emulator, operator: Operator, campaigns: Campaigns, pod_runner: PodRunner,
    k8s: KubeApis, kube_namespace: str, db: asyncpg.Pool,
) -> None:
    channel = await make_channel(k8s, kube_namespace, telegram_emulator, operator, db, global_per_second=20)
    audience = await _audience(telegram_emulator, db, channel, 300)
    campaigns.create("crash", channel, delivery={"parallelism": 2, "batchSize": 20})
    await campaigns.wait("crash", "some sent", lambda s: (s.get("sent") or 0) >= 40)

    pods: Any = k8s.core.list_namespaced_pod(kube_namespace, label_selector="clarion.io/campaign=crash")
    victim = next(p.metadata.name for p in pods.items if pod_runner.pid(p.metadata.name) is not None)
    pid = pod_runner.pid(victim)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    done = await campaigns.wait_phase("crash", "Completed", timeout=180)
    receivers = _receivers(telegram_emulator, channel)
    assert done["sent"] == 300 and set(receivers) == audience
    assert len(receivers) - len(set(receivers)) <= 20
    job: Any = k8s.batch.read_namespaced_job("crash-r1", kube_namespace)
    assert (job.status.failed or 0) >= 1


async def test_operator_restart_mid_campaign_creates_no_second_job_or_snapshot(
    telegram_emulator: Emulator, operator: Operator, campaigns: Campaigns, pod_runner: PodRunner,
    k8s: KubeApis, kube_namespace: str, db: asyncpg.Pool,
) -> None:
    channel = await make_channel(k8s, kube_namespace, telegram_emulator, operator, db, global_per_second=20)
    audience = await _audience(telegram_emulator, db, channel, 200)
    campaigns.create("steady", channel, delivery={"parallelism": 2})
    await campaigns.wait("steady", "some sent", lambda s: (s.get("sent") or 0) >= 20)

    operator.kill()
    operator.start()

    done = await campaigns.wait_phase("steady", "Completed", timeout=180)
    assert done["total"] == 200 and done["run"] == 1
    assert [j["metadata"]["name"] for j in campaigns.jobs("steady")] == ["steady-r1"]
    assert await db.fetchval("SELECT count(*) FROM campaigns WHERE name = 'steady'") == 1
    assert await db.fetchval(
        """SELECT count(*) FROM deliveries d JOIN campaigns c ON c.id = d.campaign_id
           WHERE c.name = 'steady'""") == 200
    receivers = _receivers(telegram_emulator, channel)
    assert sorted(receivers) == sorted(audience)
