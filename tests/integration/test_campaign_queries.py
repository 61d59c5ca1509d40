"""The shared campaign queries against a real Postgres: snapshot, claim, results, retry-failed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from clarion.db import campaigns as q
from clarion.models import Audience

pytestmark = pytest.mark.integration

EVERYONE = Audience(all_subscribers=True)


async def make_channel(db: asyncpg.Pool, name: str = "news") -> int:
    channel_id: int = await db.fetchval(
        """INSERT INTO channels (namespace, name, type, bot_id, config)
           VALUES ('default', $1, 'telegram', 42, '{}'::jsonb) RETURNING id""", name,
    )
    return channel_id


async def make_campaign(db: asyncpg.Pool, channel_id: int, name: str = "promo", shards: int = 1) -> int:
    campaign_id: int = await db.fetchval(
        """INSERT INTO campaigns (namespace, name, uid, channel_id, spec, message_hash, phase, shards)
           VALUES ('default', $1, $1 || '-uid', $2, $3, 'h', 'Sending', $4) RETURNING id""",
        name, channel_id, {"message": {"text": "hi"}}, shards,
    )
    return campaign_id


async def add_subscribers(db: asyncpg.Pool, channel_id: int, rows: list[tuple[Any, ...]]) -> None:
    """rows: (chat_id, language, tags, subscribed, unavailable)."""
    await db.executemany(
        """INSERT INTO subscribers (channel_id, chat_id, language, tags, subscribed, unavailable)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        [(channel_id, *row) for row in rows],
    )


async def delivered_to(db: asyncpg.Pool, campaign_id: int) -> dict[int, str | None]:
    rows = await db.fetch("SELECT chat_id, language FROM deliveries WHERE campaign_id = $1", campaign_id)
    return {r["chat_id"]: r["language"] for r in rows}


async def test_snapshot_takes_reachable_subscribers_matching_the_filters(db: asyncpg.Pool) -> None:
    channel = await make_channel(db)
    other = await make_channel(db, "other")
    await add_subscribers(db, channel, [
        (1, "en", ["vip"], True, False),
        (2, "de", ["vip", "beta"], True, False),
        (3, "en-GB", ["news"], True, False),
        (4, "en", ["vip"], False, False),        # unsubscribed
        (5, "en", ["vip"], True, True),          # blocked the bot earlier
        (6, "fr", ["vip"], True, False),
        (7, None, ["vip"], True, False),
    ])
    await add_subscribers(db, other, [(8, "en", ["vip"], True, False)])
    campaign = await make_campaign(db, channel)
    audience = Audience.model_validate({"tags": ["vip", "news"], "excludeTags": ["beta"],
                                        "languages": ["en", "fr"], "chatIds": [-100500, 5, 4, 1]})
    async with db.acquire() as conn, conn.transaction():
        total = await q.snapshot_audience(conn, campaign, channel, audience, shards=1)
    # 1, 3 (en-GB is English), 6 by tags and language; -100500 explicit (a group, not a subscriber);
    # 5 and 4 explicit but unavailable / unsubscribed; 2 excluded by tag; 7 has no language.
    assert await delivered_to(db, campaign) == {1: "en", 3: "en-GB", 6: "fr", -100500: None}
    assert total == 4
    assert await db.fetchval("SELECT total FROM campaigns WHERE id = $1", campaign) == 4


async def test_snapshot_twice_changes_nothing(db: asyncpg.Pool) -> None:
    channel = await make_channel(db)
    await add_subscribers(db, channel, [(i, "en", [], True, False) for i in range(1, 101)])
    campaign = await make_campaign(db, channel, shards=4)
    async with db.acquire() as conn:
        first = await q.snapshot_audience(conn, campaign, channel, EVERYONE, shards=4)
        second = await q.snapshot_audience(conn, campaign, channel, EVERYONE, shards=4)
    assert first == second == 100
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1", campaign) == 100
    shards = await db.fetch(
        "SELECT shard, count(*) AS n FROM deliveries WHERE campaign_id = $1 GROUP BY shard", campaign
    )
    assert {r["shard"] for r in shards} == {0, 1, 2, 3}


async def test_snapshot_includes_reachable_members_of_referenced_groups(db: asyncpg.Pool) -> None:
    channel = await make_channel(db)
    await add_subscribers(db, channel, [(11, "en", [], True, False), (12, "en", [], True, True),
                                        (13, "en", [], True, False)])
    group = await db.fetchval(
        """INSERT INTO managed_groups (namespace, name, channel_id, chat_id)
           VALUES ('default', 'club', $1, -500) RETURNING id""", channel,
    )
    await db.executemany(
        "INSERT INTO group_members (group_id, user_id, status) VALUES ($1, $2, $3)",
        [(group, 11, "member"), (group, 12, "member"), (group, 13, "left"), (group, 14, "member")],
    )
    campaign = await make_campaign(db, channel)
    async with db.acquire() as conn:
        club = Audience.model_validate({"groupRefs": [{"name": "club"}]})
        await q.snapshot_audience(conn, campaign, channel, club, shards=1)
    assert set(await delivered_to(db, campaign)) == {11}


async def test_bad_shard_count_is_refused_and_inserts_nothing(db: asyncpg.Pool) -> None:
    channel = await make_channel(db)
    await add_subscribers(db, channel, [(1, "en", [], True, False)])
    campaign = await make_campaign(db, channel)
    async with db.acquire() as conn:
        with pytest.raises(ValueError, match="shards"):
            await q.snapshot_audience(conn, campaign, channel, EVERYONE, 0)
    assert await delivered_to(db, campaign) == {}


async def test_concurrent_claimers_never_get_the_same_row(db: asyncpg.Pool) -> None:
    channel = await make_channel(db)
    await add_subscribers(db, channel, [(i, "en", [], True, False) for i in range(1, 2001)])
    campaign = await make_campaign(db, channel)
    async with db.acquire() as conn:
        await q.snapshot_audience(conn, campaign, channel, EVERYONE, shards=1)

    async def claimer(name: str) -> list[int]:
        mine: list[int] = []
        while True:
            async with db.acquire() as conn:
                got = await q.claim(conn, campaign, 0, 37, name, 60)
            if not got:
                return mine
            mine.extend(c.chat_id for c in got)

    claimed = await asyncio.gather(*(claimer(f"pod-{i}") for i in range(12)))
    everything = [chat for part in claimed for chat in part]
    assert len(everything) == len(set(everything)) == 2000
    assert sum(1 for part in claimed if part) > 1
    owners = await db.fetch("SELECT claimed_by, count(*) AS n FROM deliveries GROUP BY claimed_by")
    expected = {f"pod-{i}": len(part) for i, part in enumerate(claimed) if part}
    assert {r["claimed_by"]: r["n"] for r in owners} == expected


async def test_results_settle_rows_and_mark_blocked_subscribers_unavailable(db: asyncpg.Pool) -> None:
    channel = await make_channel(db)
    await add_subscribers(db, channel, [(i, "en", [], True, False) for i in range(1, 6)])
    campaign = await make_campaign(db, channel)
    async with db.acquire() as conn:
        await q.snapshot_audience(conn, campaign, channel, EVERYONE, shards=1)
        await q.claim(conn, campaign, 0, 10, "pod-a", 60)
        now = datetime.now(UTC)
        later = now + timedelta(hours=1)
        await q.record_results(conn, campaign, channel, "pod-a", q.Results(
            sent=[(1, 101, now, None)], blocked=[(2, "blocked", "Forbidden: bot was blocked by the user")],
            failed=[(3, "Bad Request: chat not found")], retry=[(4, "server error", later)],
        ))
        counts = await q.counts(conn, campaign)
        assert (counts.sent, counts.blocked, counts.failed, counts.pending, counts.sending) == (1, 1, 1, 1, 1)
        assert not await q.is_settled(conn, campaign)
        assert await q.claim(conn, campaign, 0, 10, "pod-b", 60) == []  # 4 is not due, 5 is held
        assert await q.release_claims(conn, campaign, "pod-a") == 1
        assert [c.chat_id for c in await q.claim(conn, campaign, 0, 10, "pod-b", 60)] == [5]
    row = await db.fetchrow("SELECT unavailable, unavailable_reason FROM subscribers WHERE chat_id = 2")
    assert (row["unavailable"], row["unavailable_reason"]) == (True, "blocked")
    sent = await db.fetchrow("SELECT message_id, attempts FROM deliveries WHERE chat_id = 1")
    assert (sent["message_id"], sent["attempts"]) == (101, 1)
    campaign2 = await make_campaign(db, channel, "next")
    async with db.acquire() as conn:
        await q.snapshot_audience(conn, campaign2, channel, EVERYONE, shards=1)
    assert set(await delivered_to(db, campaign2)) == {1, 3, 4, 5}


async def test_expired_claims_of_a_dead_sender_become_claimable(db: asyncpg.Pool) -> None:
    channel = await make_channel(db)
    await add_subscribers(db, channel, [(i, "en", [], True, False) for i in range(1, 4)])
    campaign = await make_campaign(db, channel)
    async with db.acquire() as conn:
        await q.snapshot_audience(conn, campaign, channel, EVERYONE, shards=1)
        await q.claim(conn, campaign, 0, 10, "dead-pod", 0.01)
        await db.execute("UPDATE deliveries SET claimed_until = now() - interval '1 second'")
        assert await q.release_expired(conn, campaign, 0) == 3
        again = await q.claim(conn, campaign, 0, 10, "live-pod", 60)
    assert sorted(c.chat_id for c in again) == [1, 2, 3]


async def shards_of(db: asyncpg.Pool, campaign: int) -> dict[int, set[int]]:
    rows = await db.fetch("SELECT chat_id, shard FROM deliveries WHERE campaign_id = $1", campaign)
    by_shard: dict[int, set[int]] = {}
    for r in rows:
        by_shard.setdefault(r["shard"], set()).add(r["chat_id"])
    return by_shard


async def test_a_new_sender_of_an_index_takes_over_what_earlier_senders_of_it_held(db: asyncpg.Pool) -> None:
    channel = await make_channel(db)
    await add_subscribers(db, channel, [(i, "en", [], True, False) for i in range(1, 41)])
    campaign = await make_campaign(db, channel, shards=2)
    async with db.acquire() as conn:
        await q.snapshot_audience(conn, campaign, channel, EVERYONE, shards=2)
        shard = await shards_of(db, campaign)
        # The first sender of index 0 held rows of its own shard and, helping, of shard 1; the sender
        # of index 1 holds the rest of shard 1. Every lease has an hour to run.
        own = await q.claim(conn, campaign, 0, 100, "sender-0-a", 3600)
        helped = await q.claim(conn, campaign, 0, 3, "sender-0-a", 3600, other_shards=True)
        other = await q.claim(conn, campaign, 1, 100, "sender-1-a", 3600)
        assert {c.chat_id for c in own} == shard[0]
        assert {c.shard for c in helped} == {1}
        assert {c.chat_id for c in other} == shard[1] - {c.chat_id for c in helped}

        # Its replacement (another pod name) gets them back at once, and only them.
        assert await q.take_over(conn, campaign, 0, "sender-0-b") == len(shard[0]) + 3
        assert await q.take_over(conn, campaign, 0, "sender-0-b") == 0
        again = await q.claim(conn, campaign, 0, 100, "sender-0-b", 3600)
        assert {c.chat_id for c in again} == shard[0]
        helped_again = await q.claim(conn, campaign, 0, 100, "sender-0-b", 3600, other_shards=True)
        assert {c.chat_id for c in helped_again} == {c.chat_id for c in helped}
    holders = await db.fetch(
        """SELECT claimed_by, claimed_by_shard, count(*) AS n, bool_and(claimed_until > now()) AS leased
           FROM deliveries WHERE campaign_id = $1 GROUP BY 1, 2""", campaign)
    assert {(r["claimed_by"], r["claimed_by_shard"], r["n"], r["leased"]) for r in holders} == {
        ("sender-0-b", 0, len(shard[0]) + 3, True), ("sender-1-a", 1, len(shard[1]) - 3, True)}


async def test_a_sender_whose_shard_is_drained_claims_the_other_shards_due_and_lapsed_rows(
        db: asyncpg.Pool) -> None:
    channel = await make_channel(db)
    await add_subscribers(db, channel, [(i, "en", [], True, False) for i in range(1, 41)])
    campaign = await make_campaign(db, channel, shards=3)
    async with db.acquire() as conn:
        await q.snapshot_audience(conn, campaign, channel, EVERYONE, shards=3)
        shard = await shards_of(db, campaign)
        await q.claim(conn, campaign, 0, 100, "sender-0", 60)
        await q.record_results(conn, campaign, channel, "sender-0", q.Results(
            sent=[(chat, 1, datetime.now(UTC), None) for chat in shard[0]]))
        await q.claim(conn, campaign, 2, 100, "dead-sender-2", 60)
        await db.execute("UPDATE deliveries SET claimed_until = now() - interval '1 second' WHERE shard = 2")
        assert await q.claim(conn, campaign, 0, 100, "sender-0", 60) == []
        assert await q.release_expired(conn, campaign) == len(shard[2])
        helped = await q.claim(conn, campaign, 0, 100, "sender-0", 60, other_shards=True)
        assert await q.claim(conn, campaign, 1, 100, "sender-1", 60) == []
        assert await q.next_attempt_at(conn, campaign) is None
    assert sorted(c.chat_id for c in helped) == sorted(shard[1] | shard[2])
    assert await db.fetchval(
        "SELECT count(*) FROM deliveries WHERE claimed_by = 'sender-0' AND claimed_by_shard = 0"
    ) == len(shard[1]) + len(shard[2])


async def test_retry_failed_resets_only_failed_rows(db: asyncpg.Pool) -> None:
    channel = await make_channel(db)
    await add_subscribers(db, channel, [(i, "en", [], True, False) for i in range(1, 5)])
    campaign = await make_campaign(db, channel)
    async with db.acquire() as conn:
        await q.snapshot_audience(conn, campaign, channel, EVERYONE, shards=1)
        await q.claim(conn, campaign, 0, 10, "pod", 60)
        now = datetime.now(UTC)
        await q.record_results(conn, campaign, channel, "pod", q.Results(
            sent=[(1, 1, now, None)], blocked=[(2, "deactivated", "Forbidden: user is deactivated")],
            failed=[(3, "timeout"), (4, "timeout")],
        ))
        assert await q.is_settled(conn, campaign)
        assert await q.reset_failed(conn, campaign) == 2
        counts = await q.counts(conn, campaign)
    assert (counts.sent, counts.blocked, counts.failed, counts.pending) == (1, 1, 0, 2)
    rows = await db.fetch("SELECT chat_id, attempts FROM deliveries WHERE status = 'pending' ORDER BY 1")
    assert [(r["chat_id"], r["attempts"]) for r in rows] == [(3, 0), (4, 0)]


async def test_migrated_group_subscriber_moves_to_the_new_chat_id(db: asyncpg.Pool) -> None:
    channel = await make_channel(db)
    await add_subscribers(db, channel, [(-77, None, ["groups"], True, False)])
    campaign = await make_campaign(db, channel)
    async with db.acquire() as conn:
        await q.snapshot_audience(conn, campaign, channel, Audience(tags=["groups"]), shards=1)
        await q.claim(conn, campaign, 0, 10, "pod", 60)
        await q.record_results(conn, campaign, channel, "pod", q.Results(
            sent=[(-77, 9, datetime.now(UTC), -1000000000077)], migrated=[(-77, -1000000000077)]))
    row = await db.fetchrow("SELECT status, delivered_chat_id FROM deliveries WHERE chat_id = -77")
    assert (row["status"], row["delivered_chat_id"]) == ("sent", -1000000000077)
    assert await db.fetchval("SELECT array_agg(chat_id) FROM subscribers") == [-1000000000077]
