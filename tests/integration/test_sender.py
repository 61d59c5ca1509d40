"""The campaign sender end to end: real `clarion-sender campaign` processes, Postgres, Redis and the
Telegram emulator enforcing (scaled) limits."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from clarion.db import campaigns as q
from clarion.models import Audience
from clarion.streams import CAMPAIGN_DELIVERIES_STREAM, dead_letter_stream
from clarion_dev.net import free_port
from clarion_dev.telegram import Emulator
from clarion_dev.telegram.limits import RateLimits as EmulatorLimits
from clarion_dev.testing.telegram import aiogram_bot
from clarion_dev.testing.waiting import async_wait_for
from prometheus_client.parser import text_string_to_metric_families

SENDER = str(Path(sys.executable).with_name("clarion-sender"))
SCALE = 5
# Telegram's budgets x 5 so that a test takes seconds. The overall burst is one second's worth: the
# in-process emulator stamps requests when its event loop gets to them, and on a loaded 2-core machine
# (the pytest process also runs the test's own queries) it can fall behind and then work off the
# backlog faster than the rate. Two senders that did not share one budget (2 x the rate) would
# still empty it within about a second.
EMULATOR_LIMITS = EmulatorLimits(global_burst=30 * SCALE)
pytestmark = [pytest.mark.integration,
              pytest.mark.emulator(limits="scaled", scale=SCALE, seed=7, rate_limits=EMULATOR_LIMITS)]
# The channel's limits match the emulator's scaled budgets (Telegram's x 10).
RATE_LIMITS = {"globalPerSecond": 30 * SCALE, "perChatPerSecond": 1 * SCALE,
               "perGroupPerMinute": 20 * SCALE, "paidBroadcastPerSecond": 1000 * SCALE}
FIRST_USER = 100_000

EVERYONE = Audience(all_subscribers=True)


@dataclass
class World:
    """A channel whose bot lives in the emulator, its subscribers, and a campaign in phase Sending."""

    db: asyncpg.Pool
    emu: Emulator
    token: str
    channel_id: int
    campaign_id: int = 0
    reachable: set[int] = field(default_factory=set)
    blocked: set[int] = field(default_factory=set)
    unknown: set[int] = field(default_factory=set)

    def per_chat(self) -> Counter[int]:
        return Counter(m.chat_id for m in self.emu.sent(self.token))

    async def counts(self) -> q.CampaignCounts:
        async with self.db.acquire() as conn:
            return await q.counts(conn, self.campaign_id)


async def make_world(db: asyncpg.Pool, emu: Emulator, *, users: int, blocked: float = 0.0,
                     deactivated: float = 0.0, unknown: int = 0) -> World:
    bot = emu.add_bot()
    marked = emu.add_users(users, FIRST_USER, blocked_share=blocked, deactivated_share=deactivated, seed=3)
    channel_id = await db.fetchval(
        """INSERT INTO channels (namespace, name, type, bot_id, api_base_url, config, ready)
           VALUES ('default', 'news', 'telegram', $1, $2, $3, true) RETURNING id""",
        bot.id, emu.base_url, {"rateLimits": RATE_LIMITS, "defaultLanguage": "en"},
    )
    all_users = set(range(FIRST_USER, FIRST_USER + users))
    world = World(db, emu, bot.token, channel_id)
    world.blocked = set(marked["blocked"]) | set(marked["deactivated"])
    world.reachable = all_users - world.blocked
    world.unknown = set(range(9_000_000, 9_000_000 + unknown))
    await db.executemany(
        "INSERT INTO subscribers (channel_id, chat_id, language) VALUES ($1, $2, $3)",
        [(channel_id, chat, "en") for chat in sorted(all_users | world.unknown)],
    )
    return world


async def start_campaign(world: World, *, shards: int = 2, audience: dict[str, Any] | None = None,
                         delivery: dict[str, Any] | None = None, name: str = "promo",
                         message: dict[str, Any] | None = None) -> int:
    audience = audience or {"allSubscribers": True}
    spec: dict[str, Any] = {"channelRef": {"name": "news"},
            "message": message or {"text": "Hello!", "variants": [{"language": "de", "text": "Hallo!"}]},
            "audience": audience,
            "delivery": {"batchSize": 100, "maxAttempts": 5, "retryBackoffSeconds": 1, **(delivery or {})}}
    async with world.db.acquire() as conn, conn.transaction():
        campaign_id: int = await conn.fetchval(
            """INSERT INTO campaigns (namespace, name, uid, channel_id, spec, message_hash, phase, shards)
               VALUES ('default', $1, $1 || '-uid', $2, $3, 'hash', 'Sending', $4) RETURNING id""",
            name, world.channel_id, spec, shards,
        )
        picked = Audience.model_validate(audience)
        await q.snapshot_audience(conn, campaign_id, world.channel_id, picked, shards)
    world.campaign_id = campaign_id
    return campaign_id


class Senders:
    """`clarion-sender campaign` subprocesses, one per shard (as the indexed Job runs them)."""

    def __init__(self, database_url: str, redis_url: str, world: World) -> None:
        self.env = {**os.environ, "CLARION_DATABASE_URL": database_url, "CLARION_REDIS_URL": redis_url,
                    "CLARION_BOT_TOKEN": world.token, "CLARION_LOG_FORMAT": "json",
                    "CLARION_LOG_LEVEL": os.environ.get("SENDER_TEST_LOG_LEVEL", "WARNING")}
        self.world = world
        self.procs: dict[int, asyncio.subprocess.Process] = {}

    async def start(self, shard: int, **env: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            SENDER, "campaign",
            env={**self.env, "CLARION_CAMPAIGN_ID": str(self.world.campaign_id),
                 "JOB_COMPLETION_INDEX": str(shard), "CLARION_POD_NAME": f"sender-{shard}", **env},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        self.procs[shard] = proc
        return proc

    async def wait(self, timeout: float = 120) -> dict[int, int]:
        """Exit status of every sender, failing with its stderr when one did not exit 0."""
        codes: dict[int, int] = {}
        for shard, proc in self.procs.items():
            try:
                _, err = await asyncio.wait_for(proc.communicate(), timeout)
            except TimeoutError:
                proc.kill()
                _, err = await proc.communicate()
                raise AssertionError(f"sender {shard} still running after {timeout}s:\n"
                                     f"{err.decode()[-3000:]}") from None
            codes[shard] = proc.returncode if proc.returncode is not None else -1
            assert codes[shard] == 0, f"sender {shard} exited {codes[shard]}:\n{err.decode()[-3000:]}"
        return codes

    async def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.fixture
async def senders(database_url: str, redis_url: str) -> AsyncIterator[list[Senders]]:
    made: list[Senders] = []
    yield made
    for group in made:
        await group.kill_all()


async def test_campaign_reaches_each_reachable_subscriber_exactly_once_across_two_senders(
        db: asyncpg.Pool, telegram_emulator: Emulator, database_url: str, redis_url: str,
        senders: list[Senders]) -> None:
    world = await make_world(db, telegram_emulator, users=2900, blocked=0.05, deactivated=0.02, unknown=100)
    await start_campaign(world, shards=2)
    pods = Senders(database_url, redis_url, world)
    senders.append(pods)
    await pods.start(0)
    await pods.start(1)
    await pods.wait()

    counts = await world.counts()
    assert counts.total == 3000
    assert (counts.sent, counts.blocked, counts.failed, counts.pending, counts.sending) == (
        len(world.reachable), len(world.blocked), len(world.unknown), 0, 0)
    assert world.per_chat() == Counter(dict.fromkeys(world.reachable, 1))
    events = telegram_emulator.retry_afters(world.token)
    assert events == []
    unavailable = await db.fetch("SELECT chat_id, unavailable_reason FROM subscribers WHERE unavailable")
    assert {r["chat_id"] for r in unavailable} == world.blocked
    assert {r["unavailable_reason"] for r in unavailable} == {"blocked", "deactivated"}

    async with db.acquire() as conn:
        next_id = await conn.fetchval(
            """INSERT INTO campaigns (namespace, name, uid, channel_id, spec, message_hash, shards)
               VALUES ('default', 'next', 'next-uid', $1, '{}'::jsonb, 'h', 1) RETURNING id""",
            world.channel_id)
        total = await q.snapshot_audience(conn, next_id, world.channel_id, EVERYONE, 1)
    assert total == len(world.reachable) + len(world.unknown)


async def test_killed_sender_restarted_finishes_without_loss_and_few_duplicates(
        db: asyncpg.Pool, telegram_emulator: Emulator, database_url: str, redis_url: str,
        senders: list[Senders]) -> None:
    world = await make_world(db, telegram_emulator, users=2000)
    await start_campaign(world, shards=1, delivery={"batchSize": 50})
    pods = Senders(database_url, redis_url, world)
    senders.append(pods)
    window = "32"
    proc = await pods.start(0, CLARION_SENDER_CONCURRENCY=window)
    await async_wait_for(lambda: len(telegram_emulator.sent(world.token)) >= 600, timeout=60,
                         what="600 messages before the kill")
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE status = 'sending'") > 0

    await pods.start(0, CLARION_SENDER_CONCURRENCY=window)  # the Job restarts the pod
    await pods.wait()

    per_chat = world.per_chat()
    assert set(per_chat) == world.reachable
    duplicates = sum(n - 1 for n in per_chat.values())
    # At most what was in the air plus what was sent but not yet recorded (one batch) when it died.
    assert duplicates <= int(window) + 50
    counts = await world.counts()
    assert (counts.sent, counts.pending, counts.sending) == (2000, 0, 0)


async def test_killed_senders_replacement_takes_over_its_claims_without_waiting_out_the_lease(
        db: asyncpg.Pool, telegram_emulator: Emulator, database_url: str, redis_url: str,
        senders: list[Senders]) -> None:
    world = await make_world(db, telegram_emulator, users=1000)
    await start_campaign(world, shards=1, delivery={"batchSize": 50})
    pods = Senders(database_url, redis_url, world)
    senders.append(pods)
    window, lease = "32", "600"
    proc = await pods.start(0, CLARION_SENDER_CONCURRENCY=window, CLARION_CLAIM_LEASE_SECONDS=lease,
                            CLARION_POD_NAME="sender-0-a")
    await async_wait_for(lambda: len(telegram_emulator.sent(world.token)) >= 300, timeout=60,
                         what="300 messages before the kill")
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    held = await db.fetchrow(
        """SELECT count(*) AS n, min(claimed_until) AS lease_until FROM deliveries
           WHERE status = 'sending' AND claimed_by = 'sender-0-a'""")
    assert held["n"] > 0

    # The Job's replacement pod: same index, another name. The dead pod's claims have ten minutes to
    # run; the replacement takes them back as it starts and finishes the campaign long before that.
    await pods.start(0, CLARION_SENDER_CONCURRENCY=window, CLARION_CLAIM_LEASE_SECONDS=lease,
                     CLARION_POD_NAME="sender-0-b")
    await pods.wait(timeout=90)

    assert await db.fetchval("SELECT now() < $1", held["lease_until"])
    per_chat = world.per_chat()
    assert set(per_chat) == world.reachable
    duplicates = sum(n - 1 for n in per_chat.values())
    # At most what was in the air plus what was sent but not yet recorded (one batch) when it died.
    assert duplicates <= int(window) + 50
    counts = await world.counts()
    assert (counts.sent, counts.pending, counts.sending) == (1000, 0, 0)


async def test_sender_whose_shard_is_done_sends_the_other_shards_rows(
        db: asyncpg.Pool, telegram_emulator: Emulator, database_url: str, redis_url: str,
        senders: list[Senders]) -> None:
    world = await make_world(db, telegram_emulator, users=600)
    await start_campaign(world, shards=3)
    pods = Senders(database_url, redis_url, world)
    senders.append(pods)
    # Only the pod of index 1 runs (the others could not be scheduled, say): it sends its shard and
    # then the other two, and exits when the campaign is settled.
    await pods.start(1)
    await pods.wait()

    assert world.per_chat() == Counter(dict.fromkeys(world.reachable, 1))
    counts = await world.counts()
    assert (counts.sent, counts.pending, counts.sending) == (600, 0, 0)
    by_shard = await db.fetch("SELECT shard, count(*) AS n FROM deliveries WHERE status = 'sent' GROUP BY 1")
    assert len(by_shard) == 3


async def test_server_errors_are_retried_until_sent(
        db: asyncpg.Pool, telegram_emulator: Emulator, database_url: str, redis_url: str,
        senders: list[Senders]) -> None:
    world = await make_world(db, telegram_emulator, users=200)
    await start_campaign(world, shards=1, delivery={"maxAttempts": 10})
    telegram_emulator.faults.set("sendMessage", error_rate_5xx=0.25, error_status=502)
    pods = Senders(database_url, redis_url, world)
    senders.append(pods)
    await pods.start(0)
    await pods.wait()

    assert telegram_emulator.stats(world.token)["server_errors"] > 0
    assert world.per_chat() == Counter(dict.fromkeys(world.reachable, 1))
    retried = await db.fetchval("SELECT count(*) FROM deliveries WHERE status = 'sent' AND attempts > 1")
    assert retried > 0
    assert (await world.counts()).sent == 200


async def test_deliveries_failing_every_attempt_end_failed_on_the_dead_letter_stream(
        db: asyncpg.Pool, telegram_emulator: Emulator, database_url: str, redis_url: str,
        redis: aioredis.Redis, senders: list[Senders]) -> None:
    world = await make_world(db, telegram_emulator, users=20)
    await start_campaign(world, shards=1, delivery={"maxAttempts": 2})
    telegram_emulator.faults.set("sendMessage", error_rate_5xx=1.0, error_status=503)
    pods = Senders(database_url, redis_url, world)
    senders.append(pods)
    await pods.start(0)
    await pods.wait()

    rows = await db.fetch("SELECT status, attempts, last_error FROM deliveries")
    assert {(r["status"], r["attempts"]) for r in rows} == {("failed", 2)}
    assert all("Service Unavailable" in r["last_error"] for r in rows)
    dead: Any = await redis.xrange(dead_letter_stream(CAMPAIGN_DELIVERIES_STREAM))
    assert sorted(int(fields[b"chat_id"]) for _, fields in dead) == sorted(world.reachable)
    assert {fields[b"campaign_id"] for _, fields in dead} == {str(world.campaign_id).encode()}


async def test_a_429_pauses_every_sender_instead_of_hammering(
        db: asyncpg.Pool, telegram_emulator: Emulator, database_url: str, redis_url: str,
        senders: list[Senders]) -> None:
    world = await make_world(db, telegram_emulator, users=3000)
    spam_users = set(range(1, 1001))
    for user in spam_users:
        telegram_emulator.add_user(user)
    await start_campaign(world, shards=2)
    pods = Senders(database_url, redis_url, world)
    senders.append(pods)
    window = 20
    await pods.start(0, CLARION_SENDER_CONCURRENCY=str(window))
    await pods.start(1, CLARION_SENDER_CONCURRENCY=str(window))
    await async_wait_for(lambda: len(telegram_emulator.sent(world.token)) >= 300, timeout=60,
                         what="the senders to be under way")
    # Another client of the same bot that ignores the limits empties the bot's overall budget.
    async with aiogram_bot(telegram_emulator, world.token) as spammer:
        await asyncio.gather(*(spammer.send_message(user, "spam") for user in spam_users),
                             return_exceptions=True)
    await pods.wait()

    events = telegram_emulator.retry_afters(world.token)
    ours = [e for e in events if e.chat_id not in spam_users]
    assert ours, "the senders never met the pause the spammer caused"
    # Only requests already reserved or in the air when the first 429 came back are refused;
    # afterwards every process waits out retry_after instead of asking again.
    assert len(ours) <= 2 * window
    first = min(ours, key=lambda e: e.at)
    pause_end = first.at + first.retry_after
    assert [e for e in ours if e.at >= pause_end] == []
    campaign_sends = [m for m in telegram_emulator.sent(world.token) if m.chat_id not in spam_users]
    assert [m for m in campaign_sends if first.at <= m.at < pause_end] == []
    assert Counter(m.chat_id for m in campaign_sends) == Counter(dict.fromkeys(world.reachable, 1))
    assert (await world.counts()).sent == 3000


async def test_retry_failed_resends_only_the_failed_deliveries(
        db: asyncpg.Pool, telegram_emulator: Emulator, database_url: str, redis_url: str,
        senders: list[Senders]) -> None:
    world = await make_world(db, telegram_emulator, users=100, blocked=0.1, unknown=10)
    await start_campaign(world, shards=1)
    first = Senders(database_url, redis_url, world)
    senders.append(first)
    await first.start(0)
    await first.wait()
    assert (await world.counts()).failed == 10

    for chat in world.unknown:  # the unknown chats start existing
        telegram_emulator.add_user(chat)
    async with db.acquire() as conn:
        assert await q.reset_failed(conn, world.campaign_id) == 10
    second = Senders(database_url, redis_url, world)
    senders.append(second)
    await second.start(0)
    await second.wait()

    counts = await world.counts()
    assert (counts.sent, counts.blocked, counts.failed) == (len(world.reachable) + 10, len(world.blocked), 0)
    assert world.per_chat() == Counter(dict.fromkeys(world.reachable | world.unknown, 1))


async def test_each_language_gets_its_variant_with_format_buttons_photo_and_paid_flag(
        db: asyncpg.Pool, telegram_emulator: Emulator, database_url: str, redis_url: str,
        senders: list[Senders]) -> None:
    world = await make_world(db, telegram_emulator, users=3)
    german, brazilian = FIRST_USER + 1, FIRST_USER + 2
    await db.execute("UPDATE subscribers SET language = 'de-AT' WHERE chat_id = $1", german)
    await db.execute("UPDATE subscribers SET language = 'pt-BR' WHERE chat_id = $1", brazilian)
    buttons = [[
        {"text": "Read", "url": "https://example.com/news"},
        {"text": "Later", "callbackData": "later"},
    ]]
    await start_campaign(world, shards=1, delivery={"paidBroadcast": True}, message={
        "text": "<b>News</b> for you", "parseMode": "HTML", "mediaUrl": "https://example.com/news.png",
        "disableNotification": True, "buttons": buttons,
        "variants": [{"language": "de", "text": "<b>Neues</b> für dich",
                      "buttons": [[{"text": "Lesen", "url": "https://example.com/de"}]]},
                     {"language": "pt", "text": "<i>Novidades</i>"}]})
    pods = Senders(database_url, redis_url, world)
    senders.append(pods)
    await pods.start(0)
    await pods.wait()

    got = {m.chat_id: m for m in telegram_emulator.sent(world.token)}
    assert set(got) == {FIRST_USER, german, brazilian}
    assert {m.method for m in got.values()} == {"sendPhoto"}
    assert all(m.photo and m.paid and m.parse_mode == "HTML" for m in got.values())
    assert (got[FIRST_USER].text, got[german].text, got[brazilian].text) == (
        "News for you", "Neues für dich", "Novidades")
    assert got[german].reply_markup == {"inline_keyboard": [[{"text": "Lesen", "url": "https://example.com/de"}]]}
    main_keyboard = {"inline_keyboard": [[{"text": "Read", "url": "https://example.com/news"},
                                          {"text": "Later", "callback_data": "later"}]]}
    assert got[FIRST_USER].reply_markup == got[brazilian].reply_markup == main_keyboard
    ids = await db.fetch("SELECT message_id FROM deliveries WHERE status = 'sent'")
    assert len(ids) == 3 and all(r["message_id"] for r in ids)


async def test_migrated_group_is_sent_at_its_new_id(
        db: asyncpg.Pool, telegram_emulator: Emulator, database_url: str, redis_url: str,
        senders: list[Senders]) -> None:
    world = await make_world(db, telegram_emulator, users=5)
    telegram_emulator.add_group(-4242, "Old group", "group", members=[FIRST_USER])
    telegram_emulator.migrate_group(-4242, -1004242)
    await db.execute("INSERT INTO subscribers (channel_id, chat_id) VALUES ($1, -4242)", world.channel_id)
    await start_campaign(world, shards=1, audience={"chatIds": [-4242, FIRST_USER]})
    pods = Senders(database_url, redis_url, world)
    senders.append(pods)
    await pods.start(0)
    await pods.wait()

    assert world.per_chat() == Counter({-1004242: 1, FIRST_USER: 1})
    row = await db.fetchrow("SELECT status, delivered_chat_id FROM deliveries WHERE chat_id = -4242")
    assert (row["status"], row["delivered_chat_id"]) == ("sent", -1004242)
    assert await db.fetchval("SELECT count(*) FROM subscribers WHERE chat_id = -1004242") == 1


async def test_pausing_stops_the_sender_and_resuming_finishes_the_rest(
        db: asyncpg.Pool, telegram_emulator: Emulator, database_url: str, redis_url: str,
        senders: list[Senders]) -> None:
    world = await make_world(db, telegram_emulator, users=3000)
    await start_campaign(world, shards=1)
    first = Senders(database_url, redis_url, world)
    senders.append(first)
    await first.start(0)
    await async_wait_for(lambda: len(telegram_emulator.sent(world.token)) >= 300, timeout=60,
                         what="the sender to be under way")
    await db.execute("UPDATE campaigns SET phase = 'Paused' WHERE id = $1", world.campaign_id)
    await first.wait()
    paused = await world.counts()
    assert paused.sending == 0 and paused.pending > 0
    assert paused.sent == len(telegram_emulator.sent(world.token))

    await db.execute("UPDATE campaigns SET phase = 'Sending' WHERE id = $1", world.campaign_id)
    second = Senders(database_url, redis_url, world)
    senders.append(second)
    await second.start(0)
    await second.wait()
    assert world.per_chat() == Counter(dict.fromkeys(world.reachable, 1))


async def test_sigterm_releases_what_the_sender_holds_and_exits_zero(
        db: asyncpg.Pool, telegram_emulator: Emulator, database_url: str, redis_url: str,
        senders: list[Senders]) -> None:
    world = await make_world(db, telegram_emulator, users=3000)
    await start_campaign(world, shards=1)
    pods = Senders(database_url, redis_url, world)
    senders.append(pods)
    proc = await pods.start(0)
    await async_wait_for(lambda: len(telegram_emulator.sent(world.token)) >= 300, timeout=60,
                         what="the sender to be under way")
    proc.send_signal(signal.SIGTERM)
    await pods.wait(timeout=30)
    counts = await world.counts()
    assert counts.sending == 0 and counts.pending > 0
    assert counts.sent == len(telegram_emulator.sent(world.token))


async def test_sender_refuses_an_unknown_campaign_with_a_clear_error(
        database_url: str, redis_url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        SENDER, "campaign", "--campaign-id", "999999",
        env={**os.environ, "CLARION_DATABASE_URL": database_url, "CLARION_REDIS_URL": redis_url,
             "CLARION_BOT_TOKEN": "123456:" + "x" * 35, "CLARION_LOG_FORMAT": "json"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert b"campaign 999999 does not exist" in err


async def test_sender_refuses_a_stored_spec_that_does_not_parse_and_sends_nothing(
        db: asyncpg.Pool, telegram_emulator: Emulator, database_url: str, redis_url: str) -> None:
    world = await make_world(db, telegram_emulator, users=20)
    await start_campaign(world, shards=1, delivery={"batchSize": 0, "maxAttempts": "often"})
    proc = await asyncio.create_subprocess_exec(
        SENDER, "campaign", "--campaign-id", str(world.campaign_id),
        env={**os.environ, "CLARION_DATABASE_URL": database_url, "CLARION_REDIS_URL": redis_url,
             "CLARION_BOT_TOKEN": world.token, "CLARION_LOG_FORMAT": "json"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert b"spec.delivery.batchSize: Input should be greater than or equal to 1" in err
    assert b"spec.delivery.maxAttempts: Input should be a valid integer" in err
    assert telegram_emulator.sent(world.token) == []
    counts = await world.counts()
    assert (counts.pending, counts.sending, counts.sent) == (20, 0, 0)


# /metrics samples keyed by name and labels.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int) -> Samples:
    """Every sample of a sender's /metrics, keyed by name and labels."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_running_sender_exposes_results_latency_limiter_waits_and_progress(
        db: asyncpg.Pool, telegram_emulator: Emulator, database_url: str, redis_url: str,
        senders: list[Senders]) -> None:
    world = await make_world(db, telegram_emulator, users=200, blocked=0.1)
    # 20 messages a second for this campaign: the sender runs ~10 s, long enough to be scraped.
    await start_campaign(world, shards=1, delivery={"ratePerSecond": 20})
    port = free_port()
    pods = Senders(database_url, redis_url, world)
    senders.append(pods)
    await pods.start(0, CLARION_METRICS_PORT=str(port))
    channel = frozenset({("channel", "news")})

    async def under_way() -> Samples | None:
        # /metrics is served from another thread while the sender works: one scrape may fall between
        # two gauge updates, so wait for one whose progress gauges add up.
        samples = await scrape(port)
        sent = samples.get(("clarion_messages_sent_total", channel | {("result", "sent")}), 0)
        progress = sum(v for (name, _), v in samples.items() if name == "clarion_campaign_deliveries")
        return samples if sent >= 40 and progress == 200 else None

    samples: Samples = await async_wait_for(
        under_way, timeout=60, ignore=(aiohttp.ClientError,),
        what="the sender's /metrics to count 40 sent messages")
    by_result = {dict(labels)["result"]: value for (name, labels), value in samples.items()
                 if name == "clarion_messages_sent_total"}
    assert set(by_result) == {"sent", "blocked", "failed", "retry", "rate_limited", "migrated"}
    assert by_result["failed"] == by_result["retry"] == by_result["rate_limited"] == 0
    answered = by_result["sent"] + by_result["blocked"]
    # Every answer has its round trip in the histogram (give or take a send finishing mid-scrape).
    assert abs(samples[("clarion_send_latency_seconds_count", channel)] - answered) <= 2
    # Every send waited for its slot; at 20/s those waits add up to seconds.
    assert samples[("clarion_limiter_wait_seconds_count", channel)] >= answered - 2
    assert samples[("clarion_limiter_wait_seconds_sum", channel)] > 1.0
    progress = {dict(labels)["status"]: value for (name, labels), value in samples.items()
                if name == "clarion_campaign_deliveries"}
    assert {dict(labels)["campaign"] for (name, labels) in samples if name == "clarion_campaign_deliveries"} \
        == {"default/promo"}
    assert 0 < progress["sent"] < len(world.reachable) and progress["pending"] + progress["sending"] > 0
    await pods.wait()
    counts = await world.counts()
    assert (counts.sent, counts.blocked) == (len(world.reachable), len(world.blocked))
