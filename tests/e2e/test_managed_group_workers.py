"""A ManagedGroup run end to end by Clarion's processes (issue 16, ADR 0010): the `clarion-operator`
process reconciles it and enqueues its maintenance and posts; the operator's group-lane Deployments run
as `clarion-worker` pods (the pod runner) under the namespace's own Postgres role and Redis user; the
emulator is Telegram. Time is simulated by moving the members' stored last-seen times back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from clarion_dev.cluster import ControlPlane
from clarion_dev.podrunner import PodRunner
from clarion_dev.telegram import Emulator
from clarion_dev.testing.campaigns import Channel, make_channel
from clarion_dev.testing.cluster import KubeApis
from clarion_dev.testing.operator import Operator, OperatorFactory

from tests.cluster.test_managed_group_lifecycle import GROUPS, Cluster, _condition

pytestmark = pytest.mark.e2e

CHAT = -1001777
OWNER, ACTIVE, IDLE, GONE, EXEMPT = 801, 802, 803, 804, 805
FAST = {"CLARION_GROUP_CHECK_SECONDS": "1", "CLARION_GROUP_MEMBER_COUNT_SECONDS": "1",
        "CLARION_GROUP_POSTS_CHECK_SECONDS": "1", "CLARION_GROUP_INACTIVITY_SWEEP_SECONDS": "5"}
SCALING = {"minReplicas": 0, "maxReplicas": 1, "scaleDownCooldownSeconds": 5}


def _group(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "clarion.io/v1alpha1", "kind": "ManagedGroup", "metadata": {"name": name},
            "spec": {"channelRef": {"name": "community"}, "chatId": CHAT, **spec}}


async def _members(db: asyncpg.Pool, namespace: str, name: str, rows: list[tuple[int, str, float]]) -> int:
    """Member rows as the bot records them, each last seen `days` ago; returns the group's id."""
    group_id: int = await db.fetchval(
        "SELECT id FROM managed_groups WHERE namespace = $1 AND name = $2 AND deleted_at IS NULL",
        namespace, name)
    await db.executemany(
        """INSERT INTO group_members (group_id, user_id, status, last_activity_at, warned_at)
           VALUES ($1, $2, $3, now() - make_interval(secs => $4 * 86400),
                   CASE WHEN $3 = 'warned' THEN now() - interval '20 days' END)
           ON CONFLICT (group_id, user_id) DO UPDATE SET status = EXCLUDED.status,
               last_activity_at = EXCLUDED.last_activity_at, warned_at = EXCLUDED.warned_at""",
        [(group_id, user, status, days) for user, status, days in rows])
    return group_id


async def _community(emulator: Emulator, operator: Operator, k8s: KubeApis, control_plane: ControlPlane,
                     namespace: str, db: asyncpg.Pool) -> tuple[Channel, Cluster]:
    """The channel `community` (its group lanes from zero to one pod) and the group Runners in Telegram:
    Olga its owner, four members, the channel's bot an administrator."""
    channel = await make_channel(k8s, namespace, emulator, operator, db, name="community",
                                 autoscaling=SCALING)
    for user, name in ((OWNER, "Olga"), (ACTIVE, "Ann"), (IDLE, "Ivan"), (GONE, "Gus"), (EXEMPT, "Eve")):
        emulator.add_user(user, name)
    emulator.add_group(CHAT, "Runners", members=[ACTIVE, IDLE, GONE, EXEMPT], admins=[OWNER])
    return channel, Cluster(control_plane, namespace, operator)


async def test_the_workers_warn_and_remove_idle_members_rotate_the_link_and_post_on_schedule(
    telegram_emulator: Emulator, operator_factory: OperatorFactory, pod_runner: PodRunner, k8s: KubeApis,
    control_plane: ControlPlane, kube_namespace: str, db: asyncpg.Pool,
) -> None:
    operator = operator_factory(FAST)
    channel, cluster = await _community(telegram_emulator, operator, k8s, control_plane, kube_namespace, db)
    soon = (datetime.now(UTC) + timedelta(seconds=15)).strftime("%Y-%m-%dT%H:%M:%SZ")
    cluster.apply(_group(
        "runners", lifecycle={"phase": "Monitoring"},
        inactivity={"warnAfterDays": 7, "removeAfterDays": 30, "exemptUserIds": [EXEMPT]},
        inviteLinks={"rotateEveryHours": 24},
        scheduledPosts=[{"name": "run", "at": soon, "text": "Club run at 7", "pin": True}]))
    await cluster.condition("runners", "Ready", "True", "GroupReady")
    await _members(db, kube_namespace, "runners", [
        (ACTIVE, "member", 1), (IDLE, "member", 10), (GONE, "warned", 40), (EXEMPT, "member", 40),
        (OWNER, "member", 40)])

    def removed() -> Any:
        status = (cluster.get(GROUPS, "runners") or {}).get("status") or {}
        return status if status.get("removedMembers") == 1 and status.get("warnedMembers") == 1 else None

    status = await cluster.until("one member warned and one removed by the worker pods", removed, timeout=180)

    group = telegram_emulator.groups[CHAT]
    # the removal was a ban then an unban, so Gus can come back; nobody else lost membership
    assert [c for c in group.member_changes if c[0] == GONE] == [(GONE, "member", "kicked"),
                                                                 (GONE, "kicked", "left")]
    assert {c[0] for c in group.member_changes} == {GONE}
    assert GONE not in group.banned
    warnings = [m for m in telegram_emulator.sent(channel.token, CHAT) if "tg://user" in m.raw_text]
    assert [w.raw_text.startswith(f'<a href="tg://user?id={IDLE}">Ivan</a>') for w in warnings] == [True]
    rows = {r["user_id"]: r["status"] for r in await db.fetch(
        """SELECT user_id, status FROM group_members m JOIN managed_groups g ON g.id = m.group_id
           WHERE g.namespace = $1""", kube_namespace)}
    assert rows == {ACTIVE: "member", IDLE: "warned", GONE: "removed", EXEMPT: "member", OWNER: "member"}
    audited = await db.fetch("SELECT action, details FROM audit_log WHERE details->>'channel' = $1 "
                             "AND actor = 'group-maintenance' ORDER BY id", f"{kube_namespace}.community")
    assert sorted((a["action"], a["details"]["user_id"]) for a in audited) == [
        ("group.member.removed", GONE), ("group.member.warned", IDLE)]

    # the invite link the group-maintenance worker made is in status and is a live link in Telegram
    link = await cluster.until("the invite link in status",
                               lambda: ((cluster.get(GROUPS, "runners") or {}).get("status") or {})
                               .get("inviteLink"))
    assert link in group.invite_links and not group.invite_links[link].revoked
    assert group.invite_links[link].creates_join_request  # Monitoring: joins go through the join policy

    # the scheduled post went through the group-posts workers, once, and was pinned
    def posted() -> Any:
        found = [m for m in telegram_emulator.sent(channel.token, CHAT) if m.text == "Club run at 7"]
        return found or None

    [post] = await cluster.until("the scheduled post in the group", posted, timeout=120)
    assert group.log.pinned and group.log.pinned[-1] == post.message_id
    assert _condition(cluster.get(GROUPS, "runners"), "BotHasRights")["status"] == "True"
    assert "Traceback" not in operator.log(100_000)
    assert status["phase"] == "Monitoring"


async def test_a_dry_run_lists_whom_it_would_remove_in_status_and_an_event_and_removes_nobody(
    telegram_emulator: Emulator, operator_factory: OperatorFactory, pod_runner: PodRunner, k8s: KubeApis,
    control_plane: ControlPlane, kube_namespace: str, db: asyncpg.Pool,
) -> None:
    operator = operator_factory(FAST)
    channel, cluster = await _community(telegram_emulator, operator, k8s, control_plane, kube_namespace, db)
    cluster.apply(_group("runners", lifecycle={"phase": "Monitoring"},
                         inactivity={"warnAfterDays": 7, "removeAfterDays": 30, "dryRun": True,
                                     "exemptUserIds": [EXEMPT]}))
    await cluster.condition("runners", "Ready", "True", "GroupReady")
    await _members(db, kube_namespace, "runners", [
        (ACTIVE, "member", 1), (IDLE, "member", 31), (GONE, "warned", 40), (EXEMPT, "member", 40),
        (OWNER, "member", 40)])

    def listed() -> Any:
        status = (cluster.get(GROUPS, "runners") or {}).get("status") or {}
        return status if status.get("dryRunCandidateCount") == 2 else None

    status = await cluster.until("the dry run's candidates in status", listed, timeout=180)
    assert status["dryRunCandidates"] == [IDLE, GONE]
    events = cluster.events("runners")
    assert any(e["reason"] == "DryRun" and str(IDLE) in e["message"] and str(GONE) in e["message"]
               for e in events), [e["message"] for e in events]
    group = telegram_emulator.groups[CHAT]
    assert group.member_changes == []
    assert not [m for m in telegram_emulator.sent(channel.token, CHAT) if "tg://user" in m.raw_text]
    rows = {r["user_id"]: r["status"] for r in await db.fetch(
        """SELECT user_id, status FROM group_members m JOIN managed_groups g ON g.id = m.group_id
           WHERE g.namespace = $1""", kube_namespace)}
    assert rows == {ACTIVE: "member", IDLE: "member", GONE: "warned", EXEMPT: "member", OWNER: "member"}
