"""Campaign helpers shared by the e2e tier (pod runner) and the node tier (real containers).

A Telegram channel made Ready through the API, BroadcastCampaigns created and awaited through the API
(a wait that times out shows the operator's log), and subscribers and delivery counts in Postgres.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from kubernetes.client import ApiException

from clarion_dev.telegram import Emulator
from clarion_dev.testing.cluster import KubeApis
from clarion_dev.testing.waiting import async_wait_for

GROUP, VERSION = "clarion.io", "v1alpha1"


class OperatorLog(Protocol):
    """Where the operator's log comes from: a local process or a container on the node."""

    def log(self, lines: int = 80) -> str: ...


@dataclass
class Channel:
    name: str
    token: str
    id: int


class Campaigns:
    """BroadcastCampaigns of one namespace through the API, with waits that show the operator's log."""

    def __init__(self, k8s: KubeApis, namespace: str, operator: OperatorLog, pods_dir: Path) -> None:
        self.k8s, self.namespace, self.operator, self.pods_dir = k8s, namespace, operator, pods_dir

    def create(self, name: str, channel: Channel, *, audience: dict[str, Any] | None = None,
               text: str = "Hello from Clarion", **spec: Any) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "BroadcastCampaign", "metadata": {"name": name},
            "spec": {"channelRef": {"name": channel.name}, "message": {"text": text},
                     "audience": audience or {"allSubscribers": True}} | spec,
        }
        self.k8s.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "broadcastcampaigns", body)

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            custom: Any = self.k8s.custom
            obj: dict[str, Any] = custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "broadcastcampaigns", name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    def status(self, name: str) -> dict[str, Any]:
        return dict((self.get(name) or {}).get("status") or {})

    def patch(self, name: str, spec: dict[str, Any]) -> None:
        self.k8s.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "broadcastcampaigns", name, {"spec": spec})

    async def wait(self, name: str, what: str, check: Any,
                   timeout: float = 120) -> dict[str, Any]:  # noqa: ASYNC109 - the wait's deadline
        def probe() -> Any:
            status = self.status(name)
            return status if check(status) else None

        try:
            found: dict[str, Any] = await async_wait_for(
                probe, timeout=timeout, interval=0.3, what=f"{name}: {what}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- operator log ---\n{self.operator.log()}") from None
        return found

    async def wait_phase(self, name: str, *phases: str,
                         timeout: float = 120) -> dict[str, Any]:  # noqa: ASYNC109 - the wait's deadline
        return await self.wait(name, f"phase in {phases}", lambda s: s.get("phase") in phases, timeout)

    def jobs(self, name: str) -> list[dict[str, Any]]:
        found = self.k8s.batch.list_namespaced_job(
            self.namespace, label_selector=f"clarion.io/campaign={name}")
        api: Any = self.k8s.api
        return [api.sanitize_for_serialization(j) for j in found.items]


async def make_channel(k8s: KubeApis, namespace: str, emulator: Emulator, operator: OperatorLog,
                       db: asyncpg.Pool, *, name: str = "news", global_per_second: int = 30,
                       paid_per_second: int = 1000, workers: int = 0,
                       autoscaling: dict[str, Any] | None = None) -> Channel:
    """A Secret with a fresh emulator bot's token and a Telegram channel (no bot pods, and `workers`
    notification worker pods per lane, fixed: minReplicas = maxReplicas, and the group lanes off, unless
    `autoscaling` is given); waits for Ready."""
    bot = emulator.add_bot(username=f"{name}_bot")
    core: Any = k8s.core
    core.create_namespaced_secret(namespace, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-token"},
        "stringData": {"token": bot.token}})
    k8s.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "notificationchannels", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "NotificationChannel", "metadata": {"name": name},
        "spec": {"type": "telegram", "telegram": {
            "botTokenSecretRef": {"name": f"{name}-token", "key": "token"},
            "apiBaseUrl": emulator.base_url,
            "rateLimits": {"globalPerSecond": global_per_second, "paidBroadcastPerSecond": paid_per_second},
            "bot": {"replicas": 0},
        }, "workers": {"autoscaling": autoscaling or {
            "minReplicas": workers, "maxReplicas": workers,
            "lanes": {lane: {"minReplicas": 0, "maxReplicas": 0}
                      for lane in ("groupPosts", "groupMaintenance")}}}},
    })

    async def ready() -> Any:
        value: int | None = await db.fetchval(
            "SELECT id FROM channels WHERE namespace = $1 AND name = $2 AND ready", namespace, name)
        return value

    try:
        channel_id: int = await async_wait_for(ready, timeout=60, interval=0.3, what=f"channel {name} Ready")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- operator log ---\n{operator.log()}") from None
    return Channel(name, bot.token, channel_id)


async def add_subscribers(db: asyncpg.Pool, channel: Channel, chat_ids: Iterable[int], *,
                          language: str = "en") -> None:
    await db.copy_records_to_table(
        "subscribers", records=[(channel.id, chat_id, language) for chat_id in chat_ids],
        columns=["channel_id", "chat_id", "language"])


async def delivery_counts(db: asyncpg.Pool, namespace: str, name: str) -> dict[str, int]:
    rows = await db.fetch(
        """SELECT d.status, count(*) AS n FROM deliveries d JOIN campaigns c ON c.id = d.campaign_id
           WHERE c.namespace = $1 AND c.name = $2 GROUP BY d.status""", namespace, name)
    return {r["status"]: int(r["n"]) for r in rows}


async def held_by(db: asyncpg.Pool, pod: str) -> int:
    """Deliveries a sender pod has claimed and not yet recorded: what is in flight if it dies now."""
    count: int = await db.fetchval(
        "SELECT count(*) FROM deliveries WHERE status = 'sending' AND claimed_by = $1", pod)
    return count


@dataclass
class MixedAudience:
    """3,000 subscribers: 2,900 Telegram users (5% blocked the bot, 2% deactivated) and 100 chats
    Telegram has never heard of (chat not found)."""

    reachable: set[int]
    unreachable: set[int]
    unknown: list[int]


async def mixed_audience(db: asyncpg.Pool, emulator: Emulator, channel: Channel) -> MixedAudience:
    users = emulator.add_users(2900, start_id=100_000, blocked_share=0.05, deactivated_share=0.02,
                               token=channel.token, seed=7)
    unknown = list(range(900_000, 900_100))
    await add_subscribers(db, channel, [*range(100_000, 103_000 - 100), *unknown])
    unreachable = set(users["blocked"]) | set(users["deactivated"])
    return MixedAudience(set(range(100_000, 102_900)) - unreachable, unreachable, unknown)


async def launch_to_mixed_audience(campaigns: Campaigns, db: asyncpg.Pool, emulator: Emulator,
                                   channel: Channel, audience: MixedAudience) -> dict[str, Any]:
    """Campaign `launch` (two senders): exact counts, each reachable subscriber once, the blocked and
    deactivated marked unavailable. Returns its status."""
    campaigns.create("launch", channel, delivery={"parallelism": 2, "paidBroadcast": True, "batchSize": 100})
    status = await campaigns.wait_phase("launch", "Completed", "PartiallyFailed", "Failed", timeout=300)
    assert (status["phase"], status["total"], status["sent"], status["blocked"], status["failed"],
            status["pending"], status["progress"]) == (
        "PartiallyFailed", 3000, len(audience.reachable), len(audience.unreachable), len(audience.unknown),
        0, 100)
    sent = emulator.sent(channel.token)
    receivers = [m.chat_id for m in sent]
    assert len(receivers) == len(set(receivers)) == len(audience.reachable)
    assert set(receivers) == audience.reachable
    assert {m.text for m in sent} == {"Hello from Clarion"}
    unavailable = await db.fetch("SELECT chat_id FROM subscribers WHERE channel_id = $1 AND unavailable",
                                 channel.id)
    assert {r["chat_id"] for r in unavailable} == audience.unreachable
    return status


async def follow_up_leaves_out_the_unavailable(campaigns: Campaigns, db: asyncpg.Pool, emulator: Emulator,
                                               channel: Channel, audience: MixedAudience) -> None:
    """Campaign `follow-up` after `launch`: the blocked and deactivated are not in its audience."""
    campaigns.create("follow-up", channel, text="Second news",
                     delivery={"parallelism": 1, "paidBroadcast": True})
    second = await campaigns.wait_phase("follow-up", "Completed", "PartiallyFailed", "Failed", timeout=300)
    assert second["total"] == len(audience.reachable) + len(audience.unknown)
    assert second["blocked"] == 0 and second["sent"] == len(audience.reachable)
    follow_up = [m.chat_id for m in emulator.sent(channel.token) if m.text == "Second news"]
    assert sorted(follow_up) == sorted(audience.reachable)
    assert await delivery_counts(db, campaigns.namespace, "follow-up") == {
        "sent": len(audience.reachable), "failed": len(audience.unknown)}
