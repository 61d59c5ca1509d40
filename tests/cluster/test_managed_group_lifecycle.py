"""A ManagedGroup applied to a real kube-apiserver, reconciled by the `clarion-operator` process, with
the emulator as Telegram (ADR 0010): the bot's own admin rights decide BotHasRights, the group gets its
row, its status and its maintenance entries, and its deletion cleans up. No worker runs: the tests see
the stream entries the operator leaves for one."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from clarion.keys import channel_key
from clarion.streams import GroupTask, GroupTaskKind, group_maintenance_stream
from clarion_dev.cluster import ControlPlane
from clarion_dev.telegram import Emulator
from clarion_dev.testing.cluster import Kubectl
from clarion_dev.testing.operator import Operator, OperatorFactory
from clarion_dev.testing.telegram import aiogram_bot
from clarion_dev.testing.waiting import async_wait_for

pytestmark = pytest.mark.cluster

API = "clarion.io/v1alpha1"
GROUPS = "managedgroups.clarion.io"
CHAT = -1001500
OWNER, BOB, DAVE, ERIN = 701, 702, 703, 704
FAST = {"CLARION_GROUP_CHECK_SECONDS": "1", "CLARION_GROUP_MEMBER_COUNT_SECONDS": "1"}


class Cluster(Kubectl):
    """kubectl in the test's namespace, and waits that show the operator's log when they fail."""

    def __init__(self, control_plane: ControlPlane, namespace: str, operator: Operator) -> None:
        super().__init__(control_plane, namespace)
        self.operator = operator

    def events(self, name: str) -> list[dict[str, Any]]:
        out = self.run("get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json")
        return list(json.loads(out)["items"])

    async def until(self, what: str, check: Any, timeout: float = 60) -> Any:
        try:
            return await async_wait_for(check, timeout=timeout, interval=0.3, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- operator log ---\n{self.operator.log()}") from None

    async def condition(self, name: str, kind: str, status: str, reason: str | None = None) -> dict[str, Any]:
        def matches() -> Any:
            obj = self.get(GROUPS, name)
            cond = _condition(obj, kind)
            if cond.get("status") == status and (reason is None or cond.get("reason") == reason):
                return obj
            return None

        found: dict[str, Any] = await self.until(f"{name} {kind}={status} {reason or ''}", matches)
        return found


def _condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or ():
        if cond["type"] == kind:
            return dict(cond)
    return {}


def _channel(emulator: Emulator) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "NotificationChannel", "metadata": {"name": "community"},
            "spec": {"type": "telegram", "telegram": {"botTokenSecretRef": {"name": "bot-token"},
                                                      "apiBaseUrl": emulator.base_url}}}


def _group(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ManagedGroup", "metadata": {"name": name},
            "spec": {"channelRef": {"name": "community"}, "chatId": CHAT, **spec}}


def _world(emulator: Emulator) -> str:
    """A bot, three users and the group (the bot an administrator with its default rights)."""
    bot = emulator.add_bot(username="runners_bot")
    emulator.add_user(OWNER, "Olga")
    emulator.add_user(BOB, "Bob")
    emulator.add_user(DAVE, "Dave")
    emulator.add_group(CHAT, "Runners", members=[BOB, DAVE], admins=[OWNER])
    return bot.token


async def _tasks(redis: aioredis.Redis, namespace: str) -> list[GroupTask]:
    entries: Any = await redis.xrange(group_maintenance_stream(channel_key(namespace, "community")))
    return [GroupTask.from_fields(fields) for _, fields in entries]


def _status(cluster: Cluster, name: str) -> dict[str, Any]:
    status: dict[str, Any] = (cluster.get(GROUPS, name) or {}).get("status") or {}
    return status


def _passes(operator: Operator, namespace: str, name: str) -> int:
    return operator.log(100_000).count(f"group {namespace}/{name} checked")


async def test_group_becomes_ready_with_its_member_count_row_and_maintenance_then_deletion_cleans_up(
    telegram_emulator: Emulator, operator_factory: OperatorFactory, control_plane: ControlPlane,
    kube_namespace: str, db: asyncpg.Pool, redis: aioredis.Redis,
) -> None:
    token = _world(telegram_emulator)
    operator = operator_factory(FAST)
    cluster = Cluster(control_plane, kube_namespace, operator)
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bot-token"},
                   "stringData": {"token": token}})
    cluster.apply(_channel(telegram_emulator))
    cluster.apply(_group("runners", inviteLinks={"rotateEveryHours": 24}))

    obj = await cluster.condition("runners", "Ready", "True", "GroupReady")

    status = obj["status"]
    assert (status["phase"], status["title"], status["memberCount"]) == ("Growth", "Runners", 4)
    assert "phaseSince" in status and "targetMembers" not in status
    assert _condition(obj, "ChannelReady")["status"] == "True"
    assert "can_invite_users" in _condition(obj, "BotHasRights")["message"]
    row = await db.fetchrow("SELECT * FROM managed_groups WHERE namespace = $1 AND name = 'runners'",
                            kube_namespace)
    channel_id = await db.fetchval("SELECT id FROM channels WHERE namespace = $1 AND name = 'community'",
                                   kube_namespace)
    assert (row["chat_id"], row["channel_id"], row["phase"]) == (CHAT, channel_id, "Growth")
    assert (row["title"], row["uid"], row["deleted_at"]) == ("Runners", obj["metadata"]["uid"], None)
    assert row["spec"]["joinRequests"] == {"policy": "manual"}  # stored with the model's defaults

    # A member joins in Telegram (an approved join request): the next member count read shows it.
    telegram_emulator.add_user(ERIN, "Erin")
    await telegram_emulator.request_join(token, CHAT, ERIN)
    admin = aiogram_bot(telegram_emulator, token)
    try:
        assert await admin.approve_chat_join_request(CHAT, ERIN)
    finally:
        await admin.session.close()
    await cluster.until("memberCount 5", lambda: _status(cluster, "runners").get("memberCount") == 5)

    # inviteLinks: one rotate-invite entry per period, however many passes ran in it.
    start = _passes(operator, kube_namespace, "runners")
    await cluster.until("three more passes",
                        lambda: _passes(operator, kube_namespace, "runners") >= start + 3)
    tasks = await _tasks(redis, kube_namespace)
    assert [(t.kind, t.group_id, t.chat_id, t.name) for t in tasks] == [
        (GroupTaskKind.ROTATE_INVITE, row["id"], CHAT, "runners")]

    # What the bot and the workers record about members shows in status.
    await db.executemany(
        "INSERT INTO group_members (group_id, user_id, status, last_activity_at) VALUES ($1, $2, $3, $4)",
        [(row["id"], BOB, "member", datetime(2025, 3, 1, 10, tzinfo=UTC)),
         (row["id"], 705, "pending", datetime(2025, 3, 1, 9, tzinfo=UTC)),
         (row["id"], 706, "removed", datetime(2025, 1, 1, 9, tzinfo=UTC))])

    def counted() -> Any:
        found = _status(cluster, "runners")
        return found if found.get("pendingJoinRequests") == 1 else None

    status = await cluster.until("pendingJoinRequests from the member rows", counted)
    assert (status["removedMembers"], status["warnedMembers"]) == (1, 0)
    assert status["lastActivityAt"] == "2025-03-01T10:00:00Z"

    cluster.run("delete", GROUPS, "runners", "--wait=false")
    await cluster.until("the group to go away", lambda: cluster.get(GROUPS, "runners") is None)
    deleted = await db.fetchrow(
        "SELECT id, deleted_at FROM managed_groups WHERE namespace = $1 AND name = 'runners'", kube_namespace)
    assert deleted["deleted_at"] is not None
    assert await db.fetchval("SELECT count(*) FROM group_members WHERE group_id = $1", deleted["id"]) == 0
    assert "Traceback" not in operator.log(100_000)


async def test_a_missing_admin_right_is_named_without_a_crash_loop_and_granting_it_recovers_the_group(
    telegram_emulator: Emulator, operator_factory: OperatorFactory, control_plane: ControlPlane,
    kube_namespace: str, redis: aioredis.Redis,
) -> None:
    token = _world(telegram_emulator)
    telegram_emulator.set_bot_rights(token, CHAT, ["can_invite_users"])
    operator = operator_factory(FAST)
    cluster = Cluster(control_plane, kube_namespace, operator)
    cluster.apply(_group("strict", lifecycle={"phase": "Monitoring"},
                         inactivity={"warnAfterDays": 7, "removeAfterDays": 14}))

    waiting = await cluster.condition("strict", "ChannelReady", "False", "ChannelNotFound")
    assert "NotificationChannel" in _condition(waiting, "ChannelReady")["message"]
    assert _condition(waiting, "Ready")["status"] == "False"

    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bot-token"},
                   "stringData": {"token": token}})
    cluster.apply(_channel(telegram_emulator))
    obj = await cluster.condition("strict", "BotHasRights", "False", "MissingRights")

    message = _condition(obj, "BotHasRights")["message"]
    assert "can_restrict_members (removing inactive members)" in message
    assert "without can_invite_users" not in message
    assert _condition(obj, "Ready")["reason"] == "MissingRights"
    warnings = [e for e in cluster.events("strict")
                if (e["type"], e["reason"]) == ("Warning", "MissingRights")]
    assert warnings and "can_restrict_members" in warnings[0]["message"]
    assert await _tasks(redis, kube_namespace) == []  # nothing is enqueued for a group the bot cannot run

    telegram_emulator.set_bot_rights(token, CHAT, ["can_invite_users", "can_restrict_members"])
    recovered = await cluster.condition("strict", "BotHasRights", "True", "RightsGranted")
    assert _condition(recovered, "Ready")["status"] == "True"
    assert recovered["status"]["phase"] == "Monitoring"
    assert recovered["metadata"]["generation"] == obj["metadata"]["generation"]  # no spec change needed

    async def swept() -> Any:
        tasks = await _tasks(redis, kube_namespace)
        return tasks if tasks else None

    tasks = await cluster.until("an inactivity-sweep entry", swept)
    assert [t.kind for t in tasks] == [GroupTaskKind.INACTIVITY_SWEEP]
    log = operator.log(100_000)
    assert "Traceback" not in log
    assert operator.proc is not None and operator.proc.poll() is None


def _events(cluster: Cluster, name: str, reason: str) -> list[str]:
    # eventTime has microseconds; creationTimestamp only seconds, and two phase moves can share a second.
    found = sorted((e for e in cluster.events(name) if e["reason"] == reason),
                   key=lambda e: e.get("eventTime") or e["metadata"]["creationTimestamp"])
    return [e["message"] for e in found]


def _phase_changes(cluster: Cluster, count: int) -> list[str] | None:
    """The group club's PhaseChanged messages, oldest first, once there are `count`."""
    found = _events(cluster, "club", "PhaseChanged")
    return found if len(found) >= count else None


def _status_with(cluster: Cluster, key: str, value: Any) -> dict[str, Any] | None:
    status = _status(cluster, "club")
    return status if status.get(key) == value else None


async def test_phase_moves_at_its_thresholds_both_ways_with_events_a_new_link_and_the_dry_run_in_status(
    telegram_emulator: Emulator, operator_factory: OperatorFactory, control_plane: ControlPlane,
    kube_namespace: str, db: asyncpg.Pool, redis: aioredis.Redis,
) -> None:
    token = _world(telegram_emulator)
    operator = operator_factory(FAST)
    cluster = Cluster(control_plane, kube_namespace, operator)
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bot-token"},
                   "stringData": {"token": token}})
    cluster.apply(_channel(telegram_emulator))
    lifecycle = {"growthUntilMembers": 10, "growthForDays": 30, "regrowBelowMembers": 4}
    spec = {"inviteLinks": {"rotateEveryHours": 24},
            "inactivity": {"warnAfterDays": 7, "removeAfterDays": 14, "dryRun": True}}
    cluster.apply(_group("club", lifecycle=lifecycle, **spec))
    obj = await cluster.condition("club", "Ready", "True", "GroupReady")
    assert (obj["status"]["phase"], obj["status"]["targetMembers"], obj["status"]["memberCount"]) == (
        "Growth", 10, 4)
    group_id = await db.fetchval("SELECT id FROM managed_groups WHERE namespace = $1 AND name = 'club'",
                                 kube_namespace)
    assert await db.fetchval("SELECT count(*) FROM group_member_counts WHERE group_id = $1", group_id) == 1

    # 31 days in Growth (the clock moved by moving phase_since back): growthForDays moves it.
    await db.execute("UPDATE managed_groups SET phase_since = now() - interval '31 days' WHERE id = $1",
                     group_id)
    moved = await cluster.until("PhaseChanged to Monitoring", lambda: _phase_changes(cluster, 1))
    assert moved == ["Growth -> Monitoring: 31.0 days in Growth reached growthForDays (30)"]
    status = await cluster.until("status phase Monitoring",
                                 lambda: _status_with(cluster, "phase", "Monitoring"))
    since = await db.fetchval("SELECT phase_since FROM managed_groups WHERE id = $1", group_id)
    assert status["phaseSince"] == since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    async def kinds(count: int) -> Any:
        tasks = await _tasks(redis, kube_namespace)
        return tasks if len(tasks) >= count else None

    # A new link at once for the new phase (a later slot), and Monitoring's sweep (a dry run: it lists).
    tasks = await cluster.until("the new phase's tasks", lambda: kinds(3))
    assert [t.kind for t in tasks] == [GroupTaskKind.ROTATE_INVITE, GroupTaskKind.ROTATE_INVITE,
                                       GroupTaskKind.INACTIVITY_SWEEP]
    assert tasks[1].slot > tasks[0].slot and tasks[2].slot == tasks[1].slot

    # What the maintenance worker records (the link it made, the dry run's list) shows in status.
    await db.execute(
        """UPDATE managed_groups SET invite_link = 'https://t.me/+clarionTest', invite_link_slot = $2,
                  invite_link_expires_at = '2031-01-01T00:00:00Z', dry_run_candidates = '{702,703}',
                  dry_run_candidate_count = 2, dry_run_at = now() WHERE id = $1""", group_id, tasks[1].slot)
    status = await cluster.until("the dry run in status",
                                 lambda: _status_with(cluster, "dryRunCandidateCount", 2))
    assert status["dryRunCandidates"] == [BOB, DAVE]
    assert (status["inviteLink"], status["inviteLinkExpiresAt"]) == ("https://t.me/+clarionTest",
                                                                     "2031-01-01T00:00:00Z")
    assert _events(cluster, "club", "DryRun") == [f"would remove 2 members: {BOB}, {DAVE}"]

    # Dave leaves: 3 members, below regrowBelowMembers (4): back to Growth, and another new link.
    await telegram_emulator.leave_group(CHAT, DAVE)
    regrown = await cluster.until("PhaseChanged back to Growth", lambda: _phase_changes(cluster, 2))
    assert regrown[1] == "Monitoring -> Growth: 3 members fell below regrowBelowMembers (4)"
    tasks = await cluster.until("the regrown phase's link", lambda: kinds(4))
    assert tasks[3].kind == GroupTaskKind.ROTATE_INVITE and tasks[3].slot > tasks[2].slot

    # Growth rate: a week in Growth and 3 members a week ago as now: below minGrowthPerDay.
    cluster.apply(_group("club", lifecycle={"minGrowthPerDay": 1, "growthWindowDays": 7}, **spec))
    await db.execute(
        """INSERT INTO group_member_counts (group_id, at, member_count)
           VALUES ($1, now() - interval '7 days' + interval '1 minute', 3)""", group_id)
    await db.execute("UPDATE managed_groups SET phase_since = now() - interval '8 days' WHERE id = $1",
                     group_id)
    slowed = await cluster.until("PhaseChanged on the growth rate", lambda: _phase_changes(cluster, 3))
    assert slowed[2] == ("Growth -> Monitoring: grew 0.00 members/day over the last 7.0 days (3 -> 3), "
                         "below minGrowthPerDay (1)")
    final = await cluster.until("status phase Monitoring again",
                                lambda: _status_with(cluster, "phase", "Monitoring"))
    assert "targetMembers" not in final  # growthUntilMembers is gone from the spec
    log = operator.log(100_000)
    assert "Traceback" not in log
