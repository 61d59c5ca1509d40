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
from clarion_dev.testing.operator import Operator, OperatorFactory
from clarion_dev.testing.telegram import aiogram_bot
from clarion_dev.testing.waiting import async_wait_for

pytestmark = pytest.mark.cluster

API = "clarion.io/v1alpha1"
GROUPS = "managedgroups.clarion.io"
CHAT = -1001500
OWNER, BOB, DAVE, ERIN = 701, 702, 703, 704
FAST = {"CLARION_GROUP_CHECK_SECONDS": "1", "CLARION_GROUP_MEMBER_COUNT_SECONDS": "1"}


class Cluster:
    """kubectl in the test's namespace, and waits that show the operator's log when they fail."""

    def __init__(self, control_plane: ControlPlane, namespace: str, operator: Operator) -> None:
        self.control_plane, self.namespace, self.operator = control_plane, namespace, operator

    def run(self, *args: str, input_text: str | None = None) -> str:
        result = self.control_plane.kubectl("-n", self.namespace, *args, check=False, input_text=input_text)
        assert result.returncode == 0, result.stdout + result.stderr
        return str(result.stdout)

    def apply(self, obj: dict[str, Any]) -> None:
        self.run("apply", "-f", "-", input_text=json.dumps(obj))

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        out = self.run("get", resource, name, "-o", "json", "--ignore-not-found")
        return json.loads(out) if out.strip() else None

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
    cluster.apply(_group("runners"))

    obj = await cluster.condition("runners", "Ready", "True", "GroupReady")

    status = obj["status"]
    assert (status["phase"], status["title"], status["memberCount"]) == ("Growth", "Runners", 4)
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

    # Growth: one rotate-invite entry per period, however many passes ran in it.
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
