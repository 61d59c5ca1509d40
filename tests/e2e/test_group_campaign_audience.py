"""A BroadcastCampaign whose audience names a ManagedGroup (`groupRefs`) reaches the group's active
members, end to end: the operator records the group, the bot's member rows say who is in it, the
sender Job's pods send through the emulator."""

from __future__ import annotations

import json

import asyncpg
import pytest
from clarion.db import groups as group_rows
from clarion.db.groups import GroupRecord
from clarion_dev.podrunner import PodRunner
from clarion_dev.telegram import Emulator
from clarion_dev.testing.campaigns import GROUP, VERSION, Campaigns, add_subscribers, make_channel
from clarion_dev.testing.cluster import KubeApis
from clarion_dev.testing.operator import Operator
from clarion_dev.testing.waiting import async_wait_for

pytestmark = pytest.mark.e2e

CHAT = -1001700
OWNER = 800
MEMBER, WARNED, LEFT, REMOVED, PENDING, NEVER_STARTED, OUTSIDER = 801, 802, 803, 804, 805, 806, 807


async def test_a_campaign_to_a_managed_group_reaches_its_active_members_and_nobody_else(
    telegram_emulator: Emulator, operator: Operator, campaigns: Campaigns, pod_runner: PodRunner,
    k8s: KubeApis, kube_namespace: str, db: asyncpg.Pool,
) -> None:
    channel = await make_channel(k8s, kube_namespace, telegram_emulator, operator, db)
    for user in (OWNER, MEMBER, WARNED, LEFT, REMOVED, PENDING, OUTSIDER):
        telegram_emulator.add_user(user)
    telegram_emulator.add_user(NEVER_STARTED, started=False)  # the bot may not write to them first
    telegram_emulator.add_group(CHAT, "Runners", members=[MEMBER, WARNED, NEVER_STARTED], admins=[OWNER])
    k8s.custom.create_namespaced_custom_object(GROUP, VERSION, kube_namespace, "managedgroups", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ManagedGroup", "metadata": {"name": "runners"},
        "spec": {"channelRef": {"name": channel.name}, "chatId": CHAT}})

    async def recorded() -> GroupRecord | None:
        return await group_rows.get_group(db, channel.id, CHAT)

    try:
        group: GroupRecord = await async_wait_for(recorded, timeout=60, interval=0.3, what="the group's row")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- operator log ---\n{operator.log()}") from None
    # The member rows as the bot writes them (joins, leaves, the workers' warnings and removals).
    for user, member_status in [(MEMBER, "member"), (WARNED, "warned"), (LEFT, "left"), (REMOVED, "removed"),
                         (PENDING, "pending"), (NEVER_STARTED, "member")]:
        await db.execute("""INSERT INTO group_members (group_id, user_id, status) VALUES ($1, $2, $3)
                            ON CONFLICT (group_id, user_id) DO UPDATE SET status = EXCLUDED.status""",
                         group.id, user, member_status)
    # Everyone but NEVER_STARTED has started the bot; OUTSIDER is a subscriber outside the group.
    await add_subscribers(db, channel, [MEMBER, WARNED, LEFT, REMOVED, PENDING, OUTSIDER])

    campaigns.create("members-only", channel, audience={"groupRefs": [{"name": "runners"}]},
                     text="Club news")

    status = await campaigns.wait_phase("members-only", "Completed", "PartiallyFailed", "Failed")
    assert (status["phase"], status["total"], status["sent"]) == ("Completed", 2, 2), json.dumps(status)
    receivers = sorted(m.chat_id for m in telegram_emulator.sent(channel.token) if m.text == "Club news")
    assert receivers == [MEMBER, WARNED]
