"""The chaos suite (issue 12, item 6): campaigns run to their end through real faults.

Everything is real and on loopback: the control plane, the operator, the sender Job's pods (run by the
pod runner as `clarion-sender` processes), a Postgres and a Redis of the test's own (so that they can
be stopped, killed and restarted without disturbing other tests), and the Telegram emulator. Faults
are bounded in count and time. Each case asserts correctness, never timing:

- nothing lost: every recipient got the message;
- duplicates no more than what was in flight when a process died (the deliveries the dead sender
  held, counted in Postgres right after the kill);
- the campaign's status counts equal what the emulator received.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import asyncpg
import pytest
from clarion.streams import CAMPAIGN_DELIVERIES_STREAM, dead_letter_stream
from clarion_dev.podrunner import PodRunner
from clarion_dev.telegram import Emulator
from clarion_dev.testing.campaigns import Campaigns, Channel, add_subscribers, held_by, make_channel
from clarion_dev.testing.cluster import KubeApis
from clarion_dev.testing.operator import Operator
from clarion_dev.testing.servers import PrivatePostgres, PrivateRedis
from clarion_dev.testing.waiting import async_wait_for

from . import private_servers

# this module's tests run on a Postgres and a Redis of their own
database_url = private_servers.database_url
redis_url = private_servers.redis_url

pytestmark = pytest.mark.e2e

FIRST_USER = 100_000
DONE = ("Completed", "PartiallyFailed", "Failed")


async def _audience(emulator: Emulator, db: asyncpg.Pool, channel: Channel, count: int) -> set[int]:
    emulator.add_users(count, start_id=FIRST_USER)
    await add_subscribers(db, channel, range(FIRST_USER, FIRST_USER + count))
    return set(range(FIRST_USER, FIRST_USER + count))


async def _sent_count(db: asyncpg.Pool, campaign: str) -> int:
    count: int = await db.fetchval(
        """SELECT count(*) FROM deliveries d JOIN campaigns c ON c.id = d.campaign_id
           WHERE c.name = $1 AND d.status = 'sent'""", campaign)
    return count


async def _until_sent(db: asyncpg.Pool, campaigns: Campaigns, campaign: str, at_least: int) -> int:
    async def enough() -> int | None:
        count = await _sent_count(db, campaign)
        return count if count >= at_least else None

    try:
        sent: int = await async_wait_for(enough, timeout=240, interval=0.1,
                                         what=f"{campaign}: {at_least} sent")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- operator log ---\n{campaigns.operator.log()}") from None
    return sent


async def _assert_outcome(campaigns: Campaigns, emulator: Emulator, channel: Channel, name: str,
                          audience: set[int], in_flight: int) -> dict[str, Any]:
    """Completed; nobody missed; duplicates within what was in flight; status equals what Telegram got."""
    status = await campaigns.wait_phase(name, *DONE, timeout=420)
    receivers = [m.chat_id for m in emulator.sent(channel.token)]
    unique = set(receivers)
    assert not audience - unique, f"{len(audience - unique)} recipients got nothing"
    assert unique == audience
    duplicates = len(receivers) - len(unique)
    assert duplicates <= in_flight, f"{duplicates} duplicates, but only {in_flight} were in flight"
    assert status["phase"] == "Completed", status
    counts = tuple(status.get(k) for k in ("total", "sent", "failed", "blocked", "pending"))
    assert counts == (len(audience), len(unique), 0, 0, 0)
    return status


async def _dead_letters(redis_url: str) -> int:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        length: int = await client.xlen(dead_letter_stream(CAMPAIGN_DELIVERIES_STREAM))
    finally:
        await client.aclose()
    return length


async def _running_sender(k8s: KubeApis, namespace: str, campaign: str, runner: PodRunner,
                          db: asyncpg.Pool, skip: str | None) -> tuple[str, int]:
    """A sender pod that runs and holds deliveries (killing one that holds none proves nothing)."""
    async def find() -> tuple[str, int] | None:
        pods: Any = k8s.core.list_namespaced_pod(namespace, label_selector=f"clarion.io/campaign={campaign}")
        for pod in sorted(pods.items, key=lambda p: p.metadata.name == skip):
            name = pod.metadata.name
            pid = runner.pid(name)
            if pid is not None and await held_by(db, name) > 0:
                return name, pid
        return None

    found: tuple[str, int] = await async_wait_for(find, timeout=120, interval=0.05,
                                                  what=f"a {campaign} sender holding deliveries")
    return found


async def test_senders_sigkilled_five_times_during_a_10000_recipient_campaign(
    telegram_emulator: Emulator, operator: Operator, campaigns: Campaigns, pod_runner: PodRunner,
    k8s: KubeApis, kube_namespace: str, db: asyncpg.Pool,
) -> None:
    channel = await make_channel(k8s, kube_namespace, telegram_emulator, operator, db, paid_per_second=300)
    audience = await _audience(telegram_emulator, db, channel, 10_000)
    campaigns.create("kills", channel, delivery={"parallelism": 2, "paidBroadcast": True, "batchSize": 100})

    in_flight = 0
    victim: str | None = None
    for n in range(1, 6):
        await _until_sent(db, campaigns, "kills", n * 1_500)
        # Alternate between the shards: the other shard's sender first.
        victim, pid = await _running_sender(k8s, kube_namespace, "kills", pod_runner, db, skip=victim)
        os.kill(pid, signal.SIGKILL)
        # What the dead sender held is the most it can have sent without recording it.
        in_flight += await held_by(db, victim)

    await _assert_outcome(campaigns, telegram_emulator, channel, "kills", audience, in_flight)
    def failed_pods() -> int | None:  # the Job controller counts them a moment after the fact
        job: Any = k8s.batch.read_namespaced_job("kills-r1", kube_namespace)
        return job.status.failed if job.status.failed == 5 and not job.status.active else None

    await async_wait_for(failed_pods, timeout=60, interval=0.3, what="the Job to count 5 failed pods")
    assert [j["metadata"]["name"] for j in campaigns.jobs("kills")] == ["kills-r1"]


async def test_redis_restarted_with_its_data_lost_mid_campaign(
    telegram_emulator: Emulator, operator: Operator, campaigns: Campaigns, pod_runner: PodRunner,
    k8s: KubeApis, kube_namespace: str, db: asyncpg.Pool, private_redis: PrivateRedis, redis_url: str,
) -> None:
    channel = await make_channel(k8s, kube_namespace, telegram_emulator, operator, db)
    audience = await _audience(telegram_emulator, db, channel, 3_000)
    campaigns.create("amnesia", channel, delivery={"parallelism": 2, "paidBroadcast": True, "batchSize": 100})
    await _until_sent(db, campaigns, "amnesia", 600)

    await asyncio.to_thread(private_redis.kill)  # no persistence: the limiter, the ACL users, all gone
    await asyncio.sleep(3)
    await asyncio.to_thread(private_redis.start)

    await _assert_outcome(campaigns, telegram_emulator, channel, "amnesia", audience, in_flight=0)
    assert campaigns.jobs("amnesia")[0]["status"].get("failed") is None  # no sender gave up
    assert await _dead_letters(redis_url) == 0


async def test_postgres_restarted_mid_campaign(
    telegram_emulator: Emulator, operator: Operator, campaigns: Campaigns, pod_runner: PodRunner,
    k8s: KubeApis, kube_namespace: str, db: asyncpg.Pool, private_postgres: PrivatePostgres,
) -> None:
    channel = await make_channel(k8s, kube_namespace, telegram_emulator, operator, db)
    audience = await _audience(telegram_emulator, db, channel, 3_000)
    campaigns.create("reboot", channel, delivery={"parallelism": 2, "paidBroadcast": True, "batchSize": 100})
    await _until_sent(db, campaigns, "reboot", 600)

    await asyncio.to_thread(private_postgres.stop)
    await asyncio.sleep(10)
    await asyncio.to_thread(private_postgres.start)

    # A clean shutdown lets every sender record what it sent before the outage: nothing is resent.
    await _assert_outcome(campaigns, telegram_emulator, channel, "reboot", audience, in_flight=0)
    assert campaigns.jobs("reboot")[0]["status"].get("failed") is None  # no sender gave up


async def test_operator_sigkilled_twice_mid_campaign(
    telegram_emulator: Emulator, operator: Operator, campaigns: Campaigns, pod_runner: PodRunner,
    k8s: KubeApis, kube_namespace: str, db: asyncpg.Pool,
) -> None:
    channel = await make_channel(k8s, kube_namespace, telegram_emulator, operator, db)
    audience = await _audience(telegram_emulator, db, channel, 3_000)
    campaigns.create("headless", channel, delivery={"parallelism": 2, "paidBroadcast": True,
                                                    "batchSize": 100, "ratePerSecond": 150})
    for at_least in (500, 1_800):
        await _until_sent(db, campaigns, "headless", at_least)
        await asyncio.to_thread(operator.kill)
        await asyncio.sleep(2)
        operator.start()

    status = await _assert_outcome(campaigns, telegram_emulator, channel, "headless", audience, in_flight=0)
    assert status["run"] == 1
    assert [j["metadata"]["name"] for j in campaigns.jobs("headless")] == ["headless-r1"]
    assert await db.fetchval("SELECT count(*) FROM campaigns WHERE name = 'headless'") == 1


async def test_telegram_5xx_and_429_storms(
    telegram_emulator: Emulator, operator: Operator, campaigns: Campaigns, pod_runner: PodRunner,
    k8s: KubeApis, kube_namespace: str, db: asyncpg.Pool, redis_url: str,
) -> None:
    channel = await make_channel(k8s, kube_namespace, telegram_emulator, operator, db, paid_per_second=250)
    audience = await _audience(telegram_emulator, db, channel, 3_000)
    campaigns.create("weather", channel, delivery={"parallelism": 2, "paidBroadcast": True, "batchSize": 100,
                                                   "retryBackoffSeconds": 1, "maxAttempts": 5})

    await _until_sent(db, campaigns, "weather", 500)
    telegram_emulator.faults.set("sendMessage", error_rate_5xx=1.0, error_status=502)
    await asyncio.sleep(3)  # shorter than the 5 attempts' backoff (at least 0.5 + 1 + 2 + 4 s)
    telegram_emulator.faults.clear()

    await _until_sent(db, campaigns, "weather", 1_500)
    # Telegram cuts the bot's paid budget to 100 msg/s while the channel still sends at 250.
    telegram_emulator.set_limits("scaled", 0.1)
    await asyncio.sleep(5)
    telegram_emulator.set_limits("scaled", 10.0)

    await _assert_outcome(campaigns, telegram_emulator, channel, "weather", audience, in_flight=0)
    stats = telegram_emulator.stats(channel.token)
    assert stats["server_errors"] > 0 and stats["too_many_requests"] > 0  # both storms were met
    assert await _dead_letters(redis_url) == 0
