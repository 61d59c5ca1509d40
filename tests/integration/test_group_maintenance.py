"""The group-maintenance work handler (`clarion_senders.group_maintenance`) against the emulator as Telegram,
real Postgres and Redis, connected as the namespace's tenant role and Redis user the worker pods get
(so every grant and ACL the handler needs is exercised).

Time: members' silence is `last_activity_at` moved back in Postgres (the simulated clock); the handler
counts days by Postgres's `now()`.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from clarion.db import channels as chq
from clarion.db import create_pool
from clarion.db import groups as gq
from clarion.redis import create_redis
from clarion.streams import GroupTask, GroupTaskKind, bot_pause_key, rate_key
from clarion.telegram.botapi import BotApi, BotApiError
from clarion.telegram.limiter import RateLimiter, RateLimits
from clarion_dev.telegram import Emulator
from clarion_operator import tenancy
from clarion_operator.context import Context
from clarion_senders.group_maintenance import GroupMaintenance

from tests.integration.test_tenancy import _operator_context, secret_of

pytestmark = pytest.mark.integration

NAMESPACE, CHANNEL = "team-m", "club"
KEY = f"{NAMESPACE}.{CHANNEL}"
GROUP = -100_8001
OWNER, ADMIN, EXEMPT = 801, 802, 803
QUIET, SLEEPY, CHATTY, GONE = 811, 812, 813, 814  # silent 40, 10, 2 days; not in the chat any more
INACTIVITY = {"warnAfterDays": 7, "removeAfterDays": 30, "exemptUserIds": [EXEMPT]}
_slots = itertools.count(1000)


@pytest.fixture
async def ctx(database_url: str, redis_url: str, db: asyncpg.Pool) -> AsyncIterator[Context]:
    async for value in _operator_context(database_url, redis_url, db):
        yield value


@dataclass
class World:
    emu: Emulator
    token: str
    bot_id: int
    channel_id: int
    db: asyncpg.Pool
    """The system role: the test's own look at the rows."""
    maintenance: GroupMaintenance
    api: BotApi
    pool: asyncpg.Pool
    """The tenant role's pool and Redis client, as the worker has them."""
    redis: aioredis.Redis

    async def manage(self, *, phase: str = "Monitoring", **spec: Any) -> int:
        """The group's row as the operator writes it."""
        body = {"channelRef": {"name": CHANNEL}, "chatId": GROUP, **spec}
        made = await gq.upsert_group(self.db, namespace=NAMESPACE, name="club", uid="uid-club",
                                     channel_id=self.channel_id, chat_id=GROUP, spec=body, phase=phase)
        assert isinstance(made, gq.GroupRecord)
        await self.db.execute("UPDATE managed_groups SET phase = $2 WHERE id = $1", made.id, phase)
        return made.id

    async def silent(self, group_id: int, user_id: int, days: float, status: str = "member") -> None:
        """A member row last seen `days` ago (the simulated clock)."""
        await self.db.execute(
            """INSERT INTO group_members (group_id, user_id, status, last_activity_at)
               VALUES ($1, $2, $3, now() - make_interval(secs => $4 * 86400))
               ON CONFLICT (group_id, user_id) DO UPDATE
               SET status = EXCLUDED.status, last_activity_at = EXCLUDED.last_activity_at""",
            group_id, user_id, status, days)

    async def run(self, group_id: int, kind: GroupTaskKind, slot: int | None = None) -> None:
        task = GroupTask(group_id=group_id, namespace=NAMESPACE, name="club", chat_id=GROUP, kind=kind,
                         slot=next(_slots) if slot is None else slot, trace_id="t")
        await self.maintenance.handle(task)

    async def sweep(self, group_id: int) -> None:
        await self.run(group_id, GroupTaskKind.INACTIVITY_SWEEP)

    async def statuses(self, group_id: int) -> dict[int, str]:
        rows = await self.db.fetch("SELECT user_id, status FROM group_members WHERE group_id = $1", group_id)
        return {row["user_id"]: row["status"] for row in rows}

    async def audit(self) -> list[dict[str, Any]]:
        rows = await self.db.fetch("SELECT actor, action, subject, details FROM audit_log ORDER BY id")
        return [dict(row) for row in rows]

    def calls(self, method: str) -> int:
        stats = self.emu.stats(self.token)["methods"].get(method)
        return 0 if stats is None else int(stats["accepted"])

    def changes(self) -> list[tuple[int, str, str]]:
        return list(self.emu.groups[GROUP].member_changes)


@pytest.fixture
async def world(telegram_emulator: Emulator, ctx: Context, db: asyncpg.Pool) -> AsyncIterator[World]:
    emu = telegram_emulator
    info = emu.add_bot(username="club_bot")
    for uid, name, language in ((OWNER, "Olga", "ru"), (ADMIN, "Adam", "en"), (EXEMPT, "Eve", "en"),
                                (QUIET, "Quinn <Q>", "en"), (SLEEPY, "Соня", "ru"), (CHATTY, "Chad", "en"),
                                (GONE, "Gus", "en")):
        emu.add_user(uid, name, None, language)
    emu.add_group(GROUP, "Club", members=[EXEMPT, QUIET, SLEEPY, CHATTY], admins=[OWNER, ADMIN])
    channel_id = await db.fetchval(
        """INSERT INTO channels (namespace, name, type, bot_id, bot_username, api_base_url, config, ready)
           VALUES ($1, $2, 'telegram', $3, $4, $5, $6, true) RETURNING id""",
        NAMESPACE, CHANNEL, info.id, info.username, emu.base_url, {"defaultLanguage": "en"})
    await tenancy.ensure_runtime_secret(ctx, NAMESPACE)
    secret = secret_of(ctx, NAMESPACE)
    pool = await create_pool(secret["database-url"], min_size=1, max_size=2)
    redis: aioredis.Redis = create_redis(secret["redis-url"])
    # the group's send budget lifted for the test (the emulator's scaled limits still apply)
    limiter = RateLimiter(redis, info.id, RateLimits.from_config({"rateLimits": {"perGroupPerMinute": 150}}))
    await limiter.start()
    api = BotApi(info.token, emu.base_url, timeout_seconds=10)
    try:
        channel = await chq.get_channel(pool, KEY)
        assert channel is not None
        yield World(emu, info.token, info.id, channel_id, db,
                    GroupMaintenance(pool=pool, redis=redis, api=api, limiter=limiter, channel=channel), api,
                    pool, redis)
    finally:
        await api.close()
        await limiter.close()
        await redis.aclose()
        await pool.close()


async def populate(world: World, **inactivity: Any) -> int:
    group_id = await world.manage(inactivity=INACTIVITY | inactivity)
    for uid, days in ((OWNER, 100), (ADMIN, 100), (EXEMPT, 100), (world.bot_id, 100), (QUIET, 40),
                      (SLEEPY, 10), (CHATTY, 2)):
        await world.silent(group_id, uid, days)
    return group_id


async def test_silent_members_are_warned_then_removed_by_ban_then_unban_and_may_rejoin(world: World) -> None:
    group_id = await populate(world)

    await world.sweep(group_id)

    assert await world.statuses(group_id) == {OWNER: "member", ADMIN: "member", EXEMPT: "member",
                                              world.bot_id: "member", QUIET: "removed", SLEEPY: "warned",
                                              CHATTY: "member"}
    assert world.changes() == [(QUIET, "member", "kicked"), (QUIET, "kicked", "left")]
    club = world.emu.groups[GROUP]
    assert QUIET not in club.members and QUIET not in club.banned
    [warning] = world.emu.sent(world.token, GROUP)
    assert warning.text.startswith("Соня, вы не писали здесь уже 10 дн.")  # her language
    assert warning.raw_text.startswith(f'<a href="tg://user?id={SLEEPY}">Соня</a>')
    entries = await world.audit()
    assert [(e["actor"], e["action"], e["subject"]) for e in entries] == [
        ("group-maintenance", "group.member.removed", f"telegram:{QUIET}"),
        ("group-maintenance", "group.member.warned", f"telegram:{SLEEPY}")]
    assert entries[0]["details"] | {"group_id": 0} == {
        "channel": KEY, "namespace": NAMESPACE, "group": "club", "group_id": 0, "chat_id": GROUP,
        "user_id": QUIET, "days_silent": 40, "remove_after_days": 30}
    assert entries[1]["details"]["days_silent"] == 10 and entries[1]["details"]["warn_after_days"] == 7
    timestamps = await world.db.fetchrow(
        "SELECT (SELECT removed_at FROM group_members WHERE user_id = $1) AS removed,"
        " (SELECT warned_at FROM group_members WHERE user_id = $2) AS warned", QUIET, SLEEPY)
    assert timestamps["removed"] is not None and timestamps["warned"] is not None

    # a second sweep changes nothing
    await world.sweep(group_id)
    assert len(world.emu.sent(world.token, GROUP)) == 1 and len(world.changes()) == 2
    assert len(await world.audit()) == 2
    assert world.calls("banChatMember") == 1 and world.calls("unbanChatMember") == 1

    # the removed member may come back
    link = await world.api.create_chat_invite_link(GROUP)
    await world.emu.join_by_link(link, QUIET)
    assert QUIET in club.members


async def test_custom_warning_text_mentions_the_member_escaped(world: World) -> None:
    group_id = await world.manage(inactivity=INACTIVITY | {"warningText": "Hi {name} & co, say <hello>!"})
    await world.silent(group_id, QUIET, 8)
    await world.sweep(group_id)
    [warning] = world.emu.sent(world.token, GROUP)
    assert warning.text == "Hi Quinn <Q> & co, say <hello>!"
    assert warning.raw_text == (f'Hi <a href="tg://user?id={QUIET}">Quinn &lt;Q&gt;</a> &amp; co, '
                                "say &lt;hello&gt;!")


async def test_a_warned_member_who_spoke_again_is_a_member_and_warned_only_after_new_silence(
        world: World) -> None:
    group_id = await world.manage(inactivity=INACTIVITY)
    await world.silent(group_id, CHATTY, 8)
    await world.sweep(group_id)
    assert (await world.statuses(group_id))[CHATTY] == "warned"

    await world.db.execute("UPDATE group_members SET last_activity_at = now() WHERE user_id = $1", CHATTY)
    await world.sweep(group_id)
    assert (await world.statuses(group_id))[CHATTY] == "member"
    assert len(world.emu.sent(world.token, GROUP)) == 1

    await world.silent(group_id, CHATTY, 9)
    await world.sweep(group_id)
    assert (await world.statuses(group_id))[CHATTY] == "warned"
    assert len(world.emu.sent(world.token, GROUP)) == 2


async def test_dry_run_removes_and_warns_nobody_and_lists_exactly_who_would_be_removed(world: World) -> None:
    group_id = await populate(world, dryRun=True)
    await world.silent(group_id, SLEEPY, 31, status="warned")
    await world.silent(group_id, GONE, 50)

    await world.sweep(group_id)

    row = await world.db.fetchrow(
        "SELECT dry_run_candidates, dry_run_candidate_count, dry_run_at FROM managed_groups WHERE id = $1",
        group_id)
    assert row["dry_run_candidates"] == [QUIET, SLEEPY, GONE] and row["dry_run_candidate_count"] == 3
    assert row["dry_run_at"] is not None
    assert world.emu.sent(world.token, GROUP) == [] and world.changes() == []
    assert await world.audit() == []
    assert (await world.statuses(group_id))[QUIET] == "member"

    # the policy switched on: the list goes, the members go
    await populate(world, dryRun=False)
    await world.sweep(group_id)
    row = await world.db.fetchrow(
        "SELECT dry_run_candidates, dry_run_candidate_count, dry_run_at FROM managed_groups WHERE id = $1",
        group_id)
    assert tuple(row.values()) == (None, None, None)
    statuses = await world.statuses(group_id)
    assert (statuses[QUIET], statuses[GONE]) == ("removed", "left")


async def test_removals_stop_at_the_per_minute_cap_and_the_rest_wait_for_a_later_sweep(
        world: World, redis: aioredis.Redis) -> None:
    emu = world.emu
    extra = [821, 822, 823, 824, 825]
    for uid in extra:
        emu.add_user(uid, f"U{uid}", None, "en")
        emu.groups[GROUP].members.add(uid)
    group_id = await world.manage(inactivity=INACTIVITY | {"removalsPerMinute": 2})
    for uid in extra:
        await world.silent(group_id, uid, 60)

    await world.sweep(group_id)
    await world.sweep(group_id)  # within the minute: the cap holds across sweeps

    # the three left over are warned meanwhile (once), and removed by a later sweep
    statuses = await world.statuses(group_id)
    assert sorted(statuses.values()) == ["removed", "removed", "warned", "warned", "warned"]
    assert world.calls("banChatMember") == 2 and len(world.emu.sent(world.token, GROUP)) == 3
    assert sorted(e["action"] for e in await world.audit()) == ["group.member.removed"] * 2 + [
        "group.member.warned"] * 3

    # a minute later (the window's record of the two removals gone), the next sweep removes two more
    await redis.delete(rate_key(world.bot_id, f"group-removals:{GROUP}"))
    await world.sweep(group_id)
    assert sorted((await world.statuses(group_id)).values()) == ["removed"] * 4 + ["warned"]


async def test_a_member_no_longer_in_the_chat_is_marked_left_not_banned(world: World) -> None:
    group_id = await world.manage(inactivity=INACTIVITY)
    await world.silent(group_id, GONE, 40)
    await world.silent(group_id, 899, 8)  # a user Telegram does not know
    await world.sweep(group_id)
    assert await world.statuses(group_id) == {GONE: "left", 899: "left"}
    assert world.changes() == [] and world.emu.sent(world.token, GROUP) == [] and await world.audit() == []


async def test_outside_monitoring_without_the_policy_or_for_a_deleted_group_nothing_happens(
        world: World) -> None:
    group_id = await populate(world)
    await world.db.execute("UPDATE managed_groups SET phase = 'Growth' WHERE id = $1", group_id)
    await world.sweep(group_id)
    await world.manage(inactivity=None)
    await world.sweep(group_id)
    await world.manage(inactivity=INACTIVITY)
    await world.db.execute("UPDATE managed_groups SET deleted_at = now() WHERE id = $1", group_id)
    await world.sweep(group_id)
    await world.run(group_id, GroupTaskKind.ROTATE_INVITE)
    assert world.changes() == [] and world.emu.sent(world.token, GROUP) == [] and await world.audit() == []
    assert world.emu.groups[GROUP].invite_links == {}


async def test_a_missing_right_is_acknowledged_without_acting(world: World) -> None:
    group_id = await populate(world)
    world.emu.set_bot_rights(world.token, GROUP, ["can_invite_users", "can_delete_messages"])
    await world.sweep(group_id)  # returns: the operator's rights check reports it
    assert world.changes() == [] and (await world.statuses(group_id))[QUIET] == "member"


async def test_invite_rotation_makes_one_link_per_period_and_revokes_the_previous(world: World) -> None:
    links = {"rotateEveryHours": 24, "memberLimit": 50, "name": "spring"}
    group_id = await world.manage(phase="Growth", inviteLinks=links)
    club = world.emu.groups[GROUP]

    await world.run(group_id, GroupTaskKind.ROTATE_INVITE, slot=7)
    await world.run(group_id, GroupTaskKind.ROTATE_INVITE, slot=7)
    [first] = club.invite_links.values()
    assert (first.name, first.member_limit, first.creates_join_request, first.revoked) == (
        "spring", 50, False, False)
    row = await world.db.fetchrow(
        """SELECT invite_link, invite_link_slot, extract(epoch FROM invite_link_expires_at)::bigint AS expires
           FROM managed_groups WHERE id = $1""", group_id)
    assert (row["invite_link"], row["invite_link_slot"], row["expires"]) == (first.link, 7, first.expire_date)

    await world.run(group_id, GroupTaskKind.ROTATE_INVITE, slot=8)
    await world.run(group_id, GroupTaskKind.ROTATE_INVITE, slot=7)  # a late entry of an older period
    assert len(club.invite_links) == 2 and first.revoked
    second = next(link for link in club.invite_links.values() if link is not first)
    assert not second.revoked and second.expire_date is not None
    assert second.expire_date - (first.expire_date or 0) in range(0, 60)  # both 24 h from their making
    current = await world.db.fetchval("SELECT invite_link FROM managed_groups WHERE id = $1", group_id)
    assert current == second.link
    with pytest.raises(ValueError, match="INVITE_HASH_EXPIRED"):
        await world.emu.join_by_link(first.link, GONE)
    await world.emu.join_by_link(second.link, GONE)
    assert GONE in club.members


async def test_monitoring_links_ask_to_join_without_a_member_limit(world: World) -> None:
    links = {"rotateEveryHours": 6, "expireAfterHours": 2, "memberLimit": 50}
    group_id = await world.manage(phase="Monitoring", inviteLinks=links)
    await world.run(group_id, GroupTaskKind.ROTATE_INVITE, slot=1)
    [link] = world.emu.groups[GROUP].invite_links.values()
    assert (link.member_limit, link.creates_join_request) == (None, True)
    assert await world.db.fetchval(
        "SELECT round(extract(epoch FROM invite_link_expires_at - now()) / 3600) FROM managed_groups") == 2
    update = await world.emu.join_by_link(link.link, GONE)
    assert update is not None and "chat_join_request" in update


@pytest.mark.emulator(limits="scaled", scale=0.1)  # the group: a burst of 3, then 2 messages a minute
async def test_too_many_requests_pauses_the_bot_and_raises_and_the_retry_warns_nobody_twice(
        world: World) -> None:
    world.emu.add_user(831, "Fay", None, "en")
    world.emu.groups[GROUP].members.add(831)
    group_id = await world.manage(inactivity=INACTIVITY)
    for uid in (QUIET, SLEEPY, CHATTY, 831):
        await world.silent(group_id, uid, 8)

    with pytest.raises(BotApiError) as refused:
        await world.sweep(group_id)

    assert refused.value.status == 429
    assert world.maintenance.limiter.paused_for() > 0  # every process of the bot waits it out
    assert sorted((await world.statuses(group_id)).values()) == ["member"] + ["warned"] * 3
    # the pause over (its key expired: the simulated clock), the entry is retried by a worker
    world.emu.set_limits("off")
    await world.redis.delete(bot_pause_key(world.bot_id))
    old = world.maintenance
    world.maintenance = GroupMaintenance(pool=world.pool, redis=world.redis, api=world.api,
                                         limiter=RateLimiter(world.redis, world.bot_id, old.limiter.limits),
                                         channel=old.channel)
    await world.sweep(group_id)
    assert sorted((await world.statuses(group_id)).values()) == ["warned"] * 4
    assert len(world.emu.sent(world.token, GROUP)) == 4


async def test_a_removal_cut_short_after_the_ban_is_finished_and_an_admins_ban_is_left_alone(
        world: World) -> None:
    group_id = await world.manage(inactivity=INACTIVITY)
    await world.silent(group_id, QUIET, 40)
    await world.silent(group_id, SLEEPY, 40)
    # a worker began removing QUIET and died after the ban; an administrator banned SLEEPY themselves
    await world.db.execute("UPDATE group_members SET removed_at = now() WHERE user_id = $1", QUIET)
    await world.api.ban_chat_member(GROUP, QUIET)
    await world.api.ban_chat_member(GROUP, SLEEPY)

    await world.sweep(group_id)

    assert await world.statuses(group_id) == {QUIET: "removed", SLEEPY: "left"}
    club = world.emu.groups[GROUP]
    assert QUIET not in club.banned and SLEEPY in club.banned
    assert [(e["action"], e["subject"]) for e in await world.audit()] == [
        ("group.member.removed", f"telegram:{QUIET}")]
