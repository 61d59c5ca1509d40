"""Per-namespace credentials against the real Postgres and Redis (docs/tenancy.md).

The operator's tenancy module runs with its real Postgres pool and Redis client; only the Kubernetes
API is an in-memory stand-in holding the Secrets it writes. Every check connects with the URLs from
that Secret, as the namespace's pods do.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
from clarion.db import campaigns as cq
from clarion.db import channels as chq
from clarion.db import create_pool, events, group_activity, subscribers, support
from clarion.db import push_subscriptions as push
from clarion.db import tenancy as q
from clarion.redis import create_redis
from clarion.streams import (
    BOT_GROUP,
    CAMPAIGN_DELIVERIES_STREAM,
    WORKER_GROUP,
    bot_pause_key,
    dead_letter_stream,
    notification_status_stream,
    notify_stream,
    partition_lease_key,
    rate_key,
    updates_stream,
)
from clarion.telegram.limiter import RateLimiter, RateLimits
from clarion_bot.leases import Leases
from clarion_operator import tenancy
from clarion_operator.context import Context
from clarion_operator.settings import OperatorSettings
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

pytestmark = pytest.mark.integration

SECRET = "clarion-runtime"
BOT_A, BOT_B = 7001, 7002
TABLES = ("channels", "subscribers", "campaigns", "deliveries", "notifications", "managed_groups",
          "group_members", "support_threads", "audit_log", "api_keys", "idempotency_keys",
          "push_subscriptions")


class SecretStore:
    """The part of `clarion_operator.k8s.Kube` the tenancy module uses, in memory."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.annotations: list[tuple[str, str, str, dict[str, str]]] = []

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        found = self.secrets.get((namespace, name))
        return None if found is None else dict(found)

    async def apply_secret(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        self.secrets[(meta["namespace"], meta["name"])] = dict(body["stringData"])

    async def annotate_resource(self, plural: str, namespace: str, name: str,
                                annotations: dict[str, str]) -> None:
        self.annotations.append((plural, namespace, name, annotations))


async def _operator_context(database_url: str, redis_url: str, db: asyncpg.Pool,
                            **settings: Any) -> AsyncIterator[Context]:
    config = OperatorSettings(database_url=database_url, redis_url=redis_url, runtime_secret_name=SECRET,
                              **settings)
    redis = create_redis(redis_url)
    ctx = Context(settings=config, db=db, redis=redis, kube=cast(Any, SecretStore()),
                  reconciling=asyncio.Semaphore(4))
    await tenancy.prepare_database(ctx, cast(Any, _Quiet()))
    try:
        yield ctx
    finally:
        # Roles and ACL users are server-wide: a test database's are dropped with it.
        async with db.acquire() as conn:
            for tenant in await q.list_tenants(conn):
                for role in (tenant.role_a, tenant.role_b):
                    if role is not None:
                        await q.drop_role(conn, role)
                if tenant.redis_user is not None:
                    await redis.acl_deluser(tenant.redis_user)
        await redis.aclose()


class _Quiet:
    def info(self, *_: Any) -> None:
        pass


@pytest.fixture
async def ctx(database_url: str, redis_url: str, db: asyncpg.Pool) -> AsyncIterator[Context]:
    async for value in _operator_context(database_url, redis_url, db):
        yield value


def kube(ctx: Context) -> SecretStore:
    return cast(SecretStore, ctx.kube)


def secret_of(ctx: Context, namespace: str) -> dict[str, str]:
    return kube(ctx).secrets[(namespace, SECRET)]


async def seed(db: asyncpg.Pool, namespace: str, bot_id: int) -> dict[str, int]:
    """One row of every table for the namespace; returns the ids."""
    channel = await db.fetchval(
        """INSERT INTO channels (namespace, name, type, bot_id, config)
           VALUES ($1, 'shop', 'telegram', $2, '{}') RETURNING id""", namespace, bot_id)
    await db.execute(
        "INSERT INTO subscribers (channel_id, chat_id, language) VALUES ($1, 11, 'en'), ($1, 12, 'en')",
        channel)
    campaign = await db.fetchval(
        """INSERT INTO campaigns (namespace, name, uid, channel_id, spec, message_hash, phase, shards, total)
           VALUES ($1, 'news', $1 || '-uid', $2, '{}', 'h', 'Sending', 1, 2) RETURNING id""",
        namespace, channel)
    await db.execute("INSERT INTO deliveries (campaign_id, chat_id, shard) VALUES ($1, 11, 0), ($1, 12, 0)",
                     campaign)
    key = await db.fetchval(
        """INSERT INTO api_keys (namespace, name, secret_uid, key_sha256, channels)
           VALUES ($1, 'backend', $1 || '-uid', md5($1) || md5($1), '{shop}') RETURNING id""", namespace)
    await db.execute("INSERT INTO idempotency_keys (api_key_id, key, request_sha256) VALUES ($1, 'k', 'h')",
                     key)
    await db.execute(
        """INSERT INTO notifications (id, channel_id, lane, recipient, content, trace_id, api_key_id)
           VALUES (gen_random_uuid(), $1, 'instant', '11', '{}', 't', $2)""", channel, key)
    group = await db.fetchval(
        """INSERT INTO managed_groups (namespace, name, channel_id, chat_id) VALUES ($1, 'g', $2, -100)
           RETURNING id""", namespace, channel)
    await db.execute("INSERT INTO group_members (group_id, user_id) VALUES ($1, 11)", group)
    await db.execute(
        """INSERT INTO support_threads (channel_id, user_chat_id, admin_chat_id, admin_message_id)
           VALUES ($1, 11, 900, 1)""", channel)
    await db.execute("INSERT INTO audit_log (actor, action, subject) VALUES ('op', 'x', $1)", namespace)
    await db.execute(
        """INSERT INTO push_subscriptions (id, channel_id, recipient, endpoint, p256dh, auth)
           VALUES (gen_random_uuid(), $1, 'client', 'https://push.example/' || $2, 'k', 'a')""",
        channel, namespace)
    return {"channel": channel, "campaign": campaign, "group": group}


async def connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, timeout=5)


async def test_every_table_has_row_level_security_enabled_forced_and_a_policy(db: asyncpg.Pool) -> None:
    rows = await db.fetch(
        """SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
                  (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policies
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY c.relname""")
    assert {r["relname"] for r in rows} >= set(TABLES)
    unprotected = [r["relname"] for r in rows
                   if not (r["relrowsecurity"] and r["relforcerowsecurity"] and r["policies"] > 0)]
    assert unprotected == [], f"tables without forced row-level security and a policy: {unprotected}"


async def test_runtime_secret_holds_the_namespace_credentials_not_the_operators(
        ctx: Context, db: asyncpg.Pool, database_url: str, redis_url: str) -> None:
    await seed(db, "team-a", BOT_A)
    await tenancy.ensure_runtime_secret(ctx, "team-a")

    data = secret_of(ctx, "team-a")
    pg, rd = urlsplit(data["database-url"]), urlsplit(data["redis-url"])
    operator_pg, operator_rd = urlsplit(database_url), urlsplit(redis_url)
    assert pg.username and pg.username != operator_pg.username and pg.password
    assert (pg.hostname, pg.port, pg.path) == (operator_pg.hostname, operator_pg.port, operator_pg.path)
    assert rd.username and rd.username != "default" and rd.password
    assert (rd.hostname, rd.port, rd.path) == (operator_rd.hostname, operator_rd.port, operator_rd.path)
    conn = await connect(data["database-url"])
    try:
        assert not await conn.fetchval(
            "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user")
    finally:
        await conn.close()


async def test_a_namespace_role_reads_and_writes_only_its_own_rows_in_every_table(
        ctx: Context, db: asyncpg.Pool) -> None:
    a, b = await seed(db, "team-a", BOT_A), await seed(db, "team-b", BOT_B)
    await tenancy.ensure_runtime_secret(ctx, "team-a")
    conn = await connect(secret_of(ctx, "team-a")["database-url"])
    try:
        for table in TABLES:
            try:
                rows = await conn.fetch(f"SELECT * FROM {table}")
            except asyncpg.InsufficientPrivilegeError:
                continue  # no grant at all: neither namespace's rows
            namespaces = {await db.fetchval("SELECT namespace FROM channels WHERE id = $1", r["channel_id"])
                          if "channel_id" in r else r.get("namespace") for r in rows}
            if table == "deliveries":
                namespaces = {await db.fetchval("SELECT namespace FROM campaigns WHERE id = $1",
                                                r["campaign_id"]) for r in rows}
            if table == "group_members":
                namespaces = {await db.fetchval("SELECT namespace FROM managed_groups WHERE id = $1",
                                                r["group_id"]) for r in rows}
            assert rows and namespaces == {"team-a"}, (table, namespaces)

        # B's rows cannot be changed, even by naming them
        assert await conn.execute("UPDATE deliveries SET status = 'sent' WHERE campaign_id = $1",
                                  b["campaign"]) == "UPDATE 0"
        assert await conn.execute("UPDATE subscribers SET subscribed = false WHERE channel_id = $1",
                                  b["channel"]) == "UPDATE 0"
        assert await conn.execute("UPDATE notifications SET status = 'sent' WHERE channel_id = $1",
                                  b["channel"]) == "UPDATE 0"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # RLS: new row violates policy
            await conn.execute("INSERT INTO subscribers (channel_id, chat_id) VALUES ($1, 99)", b["channel"])
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                """INSERT INTO support_threads (channel_id, user_chat_id, admin_chat_id, admin_message_id)
                   VALUES ($1, 1, 2, 3)""", b["channel"])
        # nor moved into B's campaign or channel (no privilege on the key columns)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE deliveries SET campaign_id = $1 WHERE campaign_id = $2",
                               b["campaign"], a["campaign"])
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE subscribers SET channel_id = $1", b["channel"])
        # and nothing the operator alone does
        for statement in ("DELETE FROM deliveries", "UPDATE campaigns SET phase = 'Completed'",
                          "UPDATE channels SET ready = false", "DELETE FROM subscribers",
                          "INSERT INTO audit_log (actor, action, subject) VALUES ('x', 'y', 'z')",
                          "SELECT secret_sha256 FROM tenants"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
        assert [r["namespace"] for r in await conn.fetch("SELECT namespace FROM tenants")] == ["team-a"]
    finally:
        await conn.close()
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE status = 'pending'") == 4


async def test_a_namespace_role_runs_every_bot_and_sender_query(ctx: Context, db: asyncpg.Pool) -> None:
    a = await seed(db, "team-a", BOT_A)
    await seed(db, "team-b", BOT_B)
    await tenancy.ensure_runtime_secret(ctx, "team-a")
    pool = await create_pool(secret_of(ctx, "team-a")["database-url"], min_size=1, max_size=2)
    channel_id, campaign_id = a["channel"], a["campaign"]
    try:
        # the bot
        channel = await chq.get_channel(pool, "team-a.shop")
        assert channel is not None and channel.bot_id == BOT_A
        assert await chq.get_channel(pool, "team-b.shop") is None
        assert await subscribers.subscribe(pool, channel_id, 13, username="u", first_name="F", last_name=None,
                                           language="de") == "de"
        await subscribers.set_language(pool, channel_id, 14, "fr")
        assert await subscribers.get_language(pool, channel_id, 14) == "fr"
        assert await subscribers.unsubscribe(pool, channel_id, 13)
        assert await subscribers.mark_unavailable(pool, channel_id, 12, "blocked")
        assert await subscribers.mark_available(pool, channel_id, 12)
        assert (await subscribers.get_subscriber(pool, channel_id, 13)) is not None
        thread = await support.reserve_thread_id(pool)
        await support.record_thread(pool, channel_id, thread, user_chat_id=11, user_message_id=5,
                                    admin_chat_id=900, admin_message_id=77, user_name="N", user_language="en")
        assert await support.get_thread(pool, channel_id, thread) == support.SupportThread(11, "N", "en")

        # the sender
        async with pool.acquire() as conn:
            loaded = await cq.load_campaign(conn, campaign_id)
            assert loaded is not None and loaded[1].bot_id == BOT_A
            assert await cq.campaign_phase(conn, campaign_id) == "Sending"
            assert await cq.take_over(conn, campaign_id, 0, "pod-0") == 0
            claimed = await cq.claim(conn, campaign_id, 0, 10, "pod-0", 30.0)
            assert sorted(c.chat_id for c in claimed) == [11, 12]
            assert await cq.extend_claims(conn, campaign_id, "pod-0", 30.0) == 2
            await cq.release_expired(conn, campaign_id, 0)
            await cq.release_expired(conn, campaign_id)
            assert await cq.release_claims(conn, campaign_id, "pod-0", [12]) == 1
            assert await cq.claim(conn, campaign_id, 1, 10, "pod-1", 30.0, other_shards=True)
            now = datetime.now(UTC)
            await cq.record_results(conn, campaign_id, channel_id, "pod-0", cq.Results(
                sent=[(11, 1, now, None)], migrated=[(12, -1012)]))
            await cq.record_results(conn, campaign_id, channel_id, "pod-1", cq.Results(
                blocked=[(12, "blocked", "403")]))
            await cq.record_results(conn, campaign_id, channel_id, "pod-1", cq.Results(
                failed=[(12, "400")], retry=[(12, "500", now + timedelta(seconds=1))]))
            counts = await cq.shard_counts(conn, campaign_id, 0)
            assert counts.total == 2 and counts.sent == 1 and counts.blocked == 1
            assert await cq.is_settled(conn, campaign_id)
            assert await cq.shard_settled(conn, campaign_id, 0)
            assert await cq.next_attempt_at(conn, campaign_id) is None
            assert await cq.next_attempt_at(conn, campaign_id, 0) is None
    finally:
        await pool.close()
    assert await db.fetchval("SELECT count(*) FROM subscribers WHERE channel_id = $1 AND chat_id = -1012",
                             channel_id) == 1  # the migrated group's row moved
    assert await db.fetchval("SELECT status FROM deliveries WHERE campaign_id = $1 AND chat_id = 12",
                             campaign_id) == "blocked"


async def test_a_namespace_role_runs_the_webpush_worker_s_subscription_queries_on_its_own_rows_only(
        ctx: Context, db: asyncpg.Pool) -> None:
    a, b = await seed(db, "team-a", BOT_A), await seed(db, "team-b", BOT_B)
    mine = await db.fetchval("SELECT id FROM push_subscriptions WHERE channel_id = $1", a["channel"])
    theirs = await db.fetchval("SELECT id FROM push_subscriptions WHERE channel_id = $1", b["channel"])
    await tenancy.ensure_runtime_secret(ctx, "team-a")
    pool = await create_pool(secret_of(ctx, "team-a")["database-url"], min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            assert (await push.get(conn, a["channel"], mine)) is not None
            assert await push.get(conn, b["channel"], theirs) is None
            assert [s.id for s in await push.for_recipient(conn, a["channel"], "client")] == [mine]
            await push.mark_sent(conn, a["channel"], mine)
            await push.mark_sent(conn, b["channel"], theirs)
            assert not await push.delete(conn, b["channel"], theirs)
            assert await push.delete(conn, a["channel"], mine)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # the API registers, as the system
                await push.register(conn, channel_id=a["channel"], recipient="x", endpoint="https://p/x",
                                    p256dh="k", auth="a", expires_at=None)
    finally:
        await pool.close()
    assert await db.fetchval("SELECT count(*) FROM push_subscriptions WHERE id = $1", mine) == 0
    assert await db.fetchval("SELECT last_sent_at FROM push_subscriptions WHERE id = $1", theirs) is None


async def test_a_namespace_role_records_follow_ups_of_its_own_cards_with_their_callback_row(
        ctx: Context, db: asyncpg.Pool) -> None:
    await seed(db, "team-a", BOT_A)
    await seed(db, "team-b", BOT_B)
    cards = {}
    for namespace in ("team-a", "team-b"):
        async with db.acquire() as conn, conn.transaction():
            card, _ = await events.claim_event(conn, id=uuid.uuid4(), namespace=namespace, event_id="done-1",
                                               type="booking_done", initiator={"role": "system", "id": "-"},
                                               data={}, api_key_id=None)
            await events.finish_event(conn, card.id, {"recipients": []}, ["booking_confirmed"],
                                      "booking-done")
        cards[namespace] = await events.get_event_by_uuid(db, card.id)
    await tenancy.ensure_runtime_secret(ctx, "team-a")
    pool = await create_pool(secret_of(ctx, "team-a")["database-url"], min_size=1, max_size=2)
    try:
        mine, theirs = cards["team-a"], cards["team-b"]
        assert mine is not None and theirs is not None
        assert await events.get_event_by_uuid(pool, theirs.id) is None  # another namespace's card
        async with pool.acquire() as conn:
            recorded = await events.record_follow_up(conn, mine, 0, by="900", data={})
        assert recorded is not None and recorded[1]
    finally:
        await pool.close()
    deliveries = await db.fetch("SELECT namespace, route FROM event_deliveries")
    assert [tuple(d) for d in deliveries] == [("team-a", "booking-done")]


async def test_a_namespace_role_records_group_activity_of_its_own_groups_only(
        ctx: Context, db: asyncpg.Pool) -> None:
    a, b = await seed(db, "team-a", BOT_A), await seed(db, "team-b", BOT_B)
    await db.execute("UPDATE group_members SET status = 'warned', warned_at = now() - interval '1 day', "
                     "last_activity_at = now() - interval '40 days'")
    await tenancy.ensure_runtime_secret(ctx, "team-a")
    pool = await create_pool(secret_of(ctx, "team-a")["database-url"], min_size=1, max_size=2)
    now = datetime.now(UTC)
    try:
        await group_activity.record_seen(pool, [a["group"], a["group"]], [11, 12], [now, now])
        await group_activity.member_joined(pool, a["group"], 13)
        await group_activity.member_left(pool, a["group"], 12)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # another namespace's group: row security
            await group_activity.member_joined(pool, b["group"], 13)
        await group_activity.record_seen(pool, [b["group"]], [11], [now])  # skipped: not its group
    finally:
        await pool.close()
    rows = {(r["group_id"], r["user_id"]): (r["status"], r["warned_at"] is None) for r in await db.fetch(
        "SELECT group_id, user_id, status, warned_at FROM group_members")}
    assert rows == {(a["group"], 11): ("member", True), (a["group"], 12): ("left", True),
                    (a["group"], 13): ("member", True), (b["group"], 11): ("warned", False)}


async def test_the_sender_claim_keeps_its_index_under_row_security(ctx: Context, db: asyncpg.Pool) -> None:
    a = await seed(db, "team-a", BOT_A)
    await tenancy.ensure_runtime_secret(ctx, "team-a")
    conn = await connect(secret_of(ctx, "team-a")["database-url"])
    try:
        await conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch(
            """EXPLAIN SELECT ctid FROM deliveries WHERE campaign_id = $1 AND shard = 0 AND status = 'pending'
               AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT 10 FOR UPDATE SKIP LOCKED""",
            a["campaign"]))
    finally:
        await conn.close()
    assert "deliveries_claim" in plan, plan
    assert "SubPlan" in plan or "InitPlan" in plan, plan  # the policy, evaluated per statement


async def test_wrong_password_and_unknown_role_are_refused(ctx: Context, db: asyncpg.Pool) -> None:
    await seed(db, "team-a", BOT_A)
    await tenancy.ensure_runtime_secret(ctx, "team-a")
    data = secret_of(ctx, "team-a")
    pg = urlsplit(data["database-url"])
    wrong = data["database-url"].replace(f":{pg.password}@", ":not-the-password@")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await connect(wrong)
    unknown = data["database-url"].replace(f"{pg.username}:", "clarion_t_nobody_0000000000_a:")
    with pytest.raises((asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError)):
        await connect(unknown)
    rd = urlsplit(data["redis-url"])
    for url in (data["redis-url"].replace(f":{rd.password}@", ":wrong@"),
                data["redis-url"].replace(f"{rd.username}:", "clarion-t-nobody:")):
        client = aioredis.Redis.from_url(url)
        try:
            with pytest.raises(AuthenticationError):
                await client.ping()
        finally:
            await client.aclose()


async def test_a_namespace_redis_user_reaches_only_its_keys_streams_and_bots(ctx: Context, db: asyncpg.Pool,
                                                                            redis: aioredis.Redis) -> None:
    await seed(db, "team-a", BOT_A)
    await seed(db, "team-b", BOT_B)
    await tenancy.ensure_runtime_secret(ctx, "team-a")
    own = updates_stream("team-a.shop", 3)
    other = updates_stream("team-b.shop", 3)
    await redis.xadd(other, {"e": b"{}"})
    await redis.set(partition_lease_key("team-b.shop", 0), "someone")
    await redis.xadd(dead_letter_stream(CAMPAIGN_DELIVERIES_STREAM), {"chat_id": b"1"})
    tenant = create_redis(secret_of(ctx, "team-a")["redis-url"])
    try:
        # what the bot does on its own streams and keys
        await redis.xadd(own, {"e": b"{}"})
        await tenant.xgroup_create(own, BOT_GROUP, id="0", mkstream=True)
        reply: Any = await tenant.xreadgroup(BOT_GROUP, "r1", {own: ">"}, count=10)
        entry_id = reply[0][1][0][0]
        async with tenant.pipeline(transaction=True) as pipe:
            pipe.hincrby(own + ":attempts", entry_id, 1)
            pipe.pexpire(own + ":attempts", 60_000)
            pipe.xadd(dead_letter_stream(own), {"id": entry_id})
            pipe.xack(own, BOT_GROUP, entry_id)
            pipe.hdel(own + ":attempts", entry_id)
            await pipe.execute()
        await tenant.xautoclaim(own, BOT_GROUP, "r1", min_idle_time=0)
        await tenant.xinfo_groups(own)
        await tenant.xinfo_consumers(own, BOT_GROUP)
        await tenant.xpending(own, BOT_GROUP)
        await tenant.xrange(own, count=10)
        await tenant.xtrim(own, minid=entry_id, approximate=False)
        await tenant.xgroup_delconsumer(own, BOT_GROUP, "r1")
        leases = Leases(tenant, "team-a.shop", "r1", 5000)
        assert await leases.heartbeat() == 1
        assert await leases.acquire(0) and await leases.renew(0)
        await leases.release(0)
        await leases.leave()
        await tenant.set("fsm:team-a.shop:1:1:state", "x", ex=60)
        assert await tenant.get("fsm:team-a.shop:1:1:state") == b"x"
        # what bot and sender do through the shared limiter of their bot
        limiter = RateLimiter(tenant, BOT_A, RateLimits.from_config({}), cap_scope="campaign:1",
                              cap_per_second=5)
        await limiter.start()
        try:
            assert (await limiter.reserve([11, -12]))[0].granted
            await limiter.pause(0.01)
        finally:
            await limiter.close()
        # the sender's dead letters: write, never read
        await tenant.xadd(dead_letter_stream(CAMPAIGN_DELIVERIES_STREAM), {"chat_id": b"2"}, maxlen=1000,
                          approximate=True)
        # what the notification worker does on its channel's lanes, dead letters and status stream
        lane = notify_stream("team-a.shop", "instant")
        await tenant.xgroup_create(lane, WORKER_GROUP, id="0", mkstream=True)
        await tenant.xadd(lane, {"e": b"{}"})
        await tenant.xreadgroup(WORKER_GROUP, "w1", {lane: ">"}, count=10)
        await tenant.xautoclaim(lane, WORKER_GROUP, "w1", min_idle_time=0)
        await tenant.xadd(dead_letter_stream(lane), {"id": b"1"})
        await tenant.xadd(notification_status_stream("team-a.shop"), {"e": b"{}"})
        await tenant.xinfo_groups(lane)

        refused = [
            tenant.xrange(other), tenant.xadd(other, {"e": b"{}"}),
            tenant.xadd(notify_stream("team-b.shop", "instant"), {"e": b"{}"}),
            tenant.xrange(notification_status_stream("team-b.shop")),
            tenant.xgroup_create(other, BOT_GROUP, id="0"),
            tenant.get(partition_lease_key("team-b.shop", 0)),
            tenant.delete(partition_lease_key("team-b.shop", 0)),
            tenant.set(bot_pause_key(BOT_B), "1"), tenant.get(rate_key(BOT_B, "global")),
            tenant.publish(bot_pause_key(BOT_B), "1"),
            tenant.xrange(dead_letter_stream(CAMPAIGN_DELIVERIES_STREAM)),
            tenant.get("fsm:team-b.shop:1:1:state"), tenant.keys("*"), tenant.scan(0), tenant.flushdb(),
            tenant.config_get("*"), tenant.acl_list(), tenant.client_list(), tenant.script_flush(),
        ]
        for call in refused:
            with pytest.raises(NoPermissionError):
                await call
        other_limiter = RateLimiter(tenant, BOT_B, RateLimits.from_config({}))
        with pytest.raises((NoPermissionError, ResponseError)):  # a script's keys are checked too
            await other_limiter.reserve([11])
        pubsub: Any = tenant.pubsub()
        try:
            with pytest.raises(NoPermissionError):  # the refusal is the subscription's reply
                await pubsub.subscribe(bot_pause_key(BOT_B))
                await pubsub.get_message(timeout=2.0)
        finally:
            await pubsub.aclose()
    finally:
        await tenant.aclose()
    assert await redis.get(partition_lease_key("team-b.shop", 0)) == b"someone"
    assert await redis.xlen(dead_letter_stream(CAMPAIGN_DELIVERIES_STREAM)) == 2


async def test_a_runtime_secret_without_the_redis_user_keys_gets_credentials_that_have_them(
        ctx: Context, db: asyncpg.Pool) -> None:
    """KEDA's TriggerAuthentication reads redis-username and redis-password (ADR 0008); a Secret an
    operator wrote before them is rotated, and the old credentials keep working for the grace."""
    await seed(db, "team-a", BOT_A)
    await tenancy.ensure_runtime_secret(ctx, "team-a")
    old = {k: v for k, v in secret_of(ctx, "team-a").items() if k in ("database-url", "redis-url")}
    kube(ctx).secrets[("team-a", SECRET)] = dict(old)
    await tenancy.ensure_runtime_secret(ctx, "team-a")

    new = secret_of(ctx, "team-a")
    assert new["redis-url"] != old["redis-url"]
    url = urlsplit(new["redis-url"])
    assert (new["redis-username"], new["redis-password"]) == (url.username, url.password)
    for redis_url in (old["redis-url"], new["redis-url"]):
        client = aioredis.Redis.from_url(redis_url)
        assert await client.ping()
        await client.aclose()
    # what KEDA's redis-streams scaler runs (lag mode), with the user and password on their own
    host = urlsplit(new["redis-url"])
    keda = aioredis.Redis(host=host.hostname or "", port=host.port or 6379, db=int(host.path[1:] or 0),
                          username=new["redis-username"], password=new["redis-password"])
    try:
        assert (await keda.info())["redis_version"]
        stream = notify_stream("team-a.shop", "bulk")
        await keda.xlen(stream)
        with pytest.raises(ResponseError, match="no such key"):
            await keda.xinfo_groups(stream)
    finally:
        await keda.aclose()


async def test_rotation_keeps_the_old_credentials_for_the_grace_period_then_refuses_them(
        ctx: Context, db: asyncpg.Pool) -> None:
    await seed(db, "team-a", BOT_A)
    await tenancy.ensure_runtime_secret(ctx, "team-a")
    old = secret_of(ctx, "team-a")
    kube(ctx).secrets.pop(("team-a", SECRET))  # lost (or due): the next call rotates
    await tenancy.ensure_runtime_secret(ctx, "team-a")
    new = secret_of(ctx, "team-a")
    assert new["database-url"] != old["database-url"] and new["redis-url"] != old["redis-url"]
    assert kube(ctx).annotations and kube(ctx).annotations[-1][1:3] == ("team-a", "shop")  # bots restart

    for secret in (old, new):  # within the grace period both work
        conn = await connect(secret["database-url"])
        assert await conn.fetchval("SELECT count(*) FROM channels") == 1
        await conn.close()
        client = aioredis.Redis.from_url(secret["redis-url"])
        assert await client.ping()
        await client.aclose()

    await db.execute("UPDATE tenants SET retiring_until = now() - interval '1 second'")
    await tenancy.sweep(ctx)
    with pytest.raises((asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError)):
        await connect(old["database-url"])
    client = aioredis.Redis.from_url(old["redis-url"])
    with pytest.raises(AuthenticationError):
        await client.ping()
    await client.aclose()
    conn = await connect(new["database-url"])
    assert await conn.fetchval("SELECT count(*) FROM subscribers") == 2
    await conn.close()


async def test_due_rotation_without_grace_refuses_the_old_password_at_once(
        database_url: str, redis_url: str, db: asyncpg.Pool) -> None:
    await seed(db, "team-a", BOT_A)
    async for ctx in _operator_context(database_url, redis_url, db, credential_rotation_hours=1,
                                       credential_grace_minutes=0):
        await tenancy.ensure_runtime_secret(ctx, "team-a")
        old = secret_of(ctx, "team-a")
        await db.execute("UPDATE tenants SET rotated_at = now() - interval '2 hours'")
        await tenancy.sweep(ctx)
        assert secret_of(ctx, "team-a") != old
        with pytest.raises((asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError)):
            await connect(old["database-url"])
        conn = await connect(secret_of(ctx, "team-a")["database-url"])
        await conn.close()


async def test_credentials_are_deleted_when_the_namespace_has_no_clarion_resources(
        ctx: Context, db: asyncpg.Pool, redis: aioredis.Redis) -> None:
    await seed(db, "team-a", BOT_A)
    await tenancy.ensure_runtime_secret(ctx, "team-a")
    async with db.acquire() as conn:
        tenant = await q.get_tenant(conn, "team-a")
    assert tenant is not None and tenant.role_a is not None and tenant.redis_user is not None

    await db.execute("UPDATE channels SET deleted_at = now()")
    assert not await tenancy.release_if_unused(ctx, "team-a")  # its campaign and group still live
    await db.execute("UPDATE campaigns SET deleted_at = now()")
    await db.execute("UPDATE managed_groups SET deleted_at = now()")
    assert await tenancy.release_if_unused(ctx, "team-a")

    assert await db.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = ANY($1::text[])",
                             [tenant.role_a, tenant.role_b]) == 0
    assert tenant.redis_user.encode() not in await redis.acl_users()
    assert await db.fetchval("SELECT count(*) FROM tenants") == 0
    with pytest.raises((asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError)):
        await connect(secret_of(ctx, "team-a")["database-url"])


async def test_shared_database_mode_gives_pods_the_runtime_url_and_still_a_redis_user(
        database_url: str, redis_url: str, db: asyncpg.Pool) -> None:
    await seed(db, "team-a", BOT_A)
    async for ctx in _operator_context(database_url, redis_url, db, tenant_database_credentials="shared",
                                       runtime_database_url="postgresql://app:pw@db.example:5432/clarion"):
        await tenancy.ensure_runtime_secret(ctx, "team-a")
        data = secret_of(ctx, "team-a")
        assert data["database-url"] == "postgresql://app:pw@db.example:5432/clarion"
        async with db.acquire() as conn:
            tenant = await q.get_tenant(conn, "team-a")
        assert tenant is not None and tenant.role_a is None
        assert tenant.redis_user is not None and urlsplit(data["redis-url"]).username == tenant.redis_user
