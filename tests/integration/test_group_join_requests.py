"""Managed groups' join requests and welcomes with the bot as it runs: the emulator (as Telegram) enqueues a
`chat_join_request` → webhook → Redis → `clarion_bot.main.run` → the emulator sees approveChatJoinRequest
or declineChatJoinRequest; Postgres and Redis real.

Time: deadlines and welcome deletions are rows the bot's sweep acts on when Postgres's `now()` has passed
them; the tests move the stored time back (`due_now`) instead of waiting minutes, so what runs is the
bot's own path (the sweep, its Redis period key, the decision), only the clock is simulated.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from clarion.streams import DEFAULT_PARTITIONS, update_partition, updates_stream
from clarion_bot.main import run as run_bot
from clarion_dev.telegram import Emulator

from tests.integration.test_bot_end_to_end import ADMIN, KEY, NAMESPACE, USER, Stack, make_stack, until

pytestmark = pytest.mark.integration

GROUP = -100_7001
DESK = -100_7002  # the admins' chat for manual cards
BOB = 502  # no @username, German
MIA = 503  # a member of the desk, not an admin of the bot


@contextlib.asynccontextmanager
async def running_bot(stack: Stack) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_bot(stack.bot_settings(bot_groups_sweep_seconds=0.1), stop,
                                       handle_signals=False))
    try:
        yield
    finally:
        stop.set()
        assert await task == 0


@pytest.fixture
async def stack(telegram_emulator: Emulator, db: Any, database_url: str,
                redis_url: str) -> AsyncIterator[Stack]:
    emu = telegram_emulator
    emu.add_user(ADMIN, "Ada", "ada_admin", "en")
    emu.add_user(USER, "Иван", "ivan", "ru")
    emu.add_user(BOB, "Bob", None, "de")
    emu.add_user(MIA, "Mia", "mia", "en")
    emu.add_group(GROUP, "Book club", members=[ADMIN], admins=[ADMIN])
    emu.add_group(DESK, "Moderators", members=[ADMIN, MIA], admins=[ADMIN])
    async with make_stack(emu, db, database_url, redis_url) as made:
        yield made


async def manage(stack: Stack, db: Any, join_requests: dict[str, Any],
                 welcome: dict[str, Any] | None = None) -> int:
    """The row the operator writes for a ManagedGroup of the stack's channel."""
    spec: dict[str, Any] = {"channelRef": {"name": KEY.split(".", 1)[1]}, "chatId": GROUP,
                            "joinRequests": join_requests}
    if welcome is not None:
        spec["welcomeMessage"] = welcome
    group_id: int = await db.fetchval(
        "INSERT INTO managed_groups (namespace, name, channel_id, chat_id, spec) "
        "VALUES ($1, 'club', $2, $3, $4) RETURNING id", NAMESPACE, stack.channel_id, GROUP, spec)
    return group_id


def calls(stack: Stack, method: str) -> int:
    stats = stack.emulator.stats(stack.token)["methods"].get(method)
    return 0 if stats is None else int(stats["accepted"])


def members(stack: Stack) -> set[int]:
    return set(stack.emulator.groups[GROUP].members)


async def decided(db: Any, user_id: int) -> Any:
    """The request once decided and applied (Telegram told, audit and member rows written)."""
    return await until(lambda: db.fetchrow(
        """SELECT r.status, r.reason, r.decided_by, m.status AS member FROM group_join_requests r
           JOIN group_members m USING (group_id, user_id)
           WHERE r.user_id = $1 AND r.applied_at IS NOT NULL""", user_id), timeout=20, what="the decision")


async def audit(db: Any) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT actor, action, subject, details FROM audit_log ORDER BY id")
    return [dict(row) for row in rows]


async def due_now(db: Any, table: str, column: str) -> None:
    """The simulated clock: what is due later becomes due now."""
    await db.execute(f"UPDATE {table} SET {column} = now() - interval '1 second'")


async def test_policy_approve_approves_welcomes_in_the_users_language_and_audits(
        stack: Stack, db: Any) -> None:
    russian = {"language": "ru", "text": "Добро пожаловать, {name}!"}
    await manage(stack, db, {"policy": "approve"},
                 welcome={"text": "Welcome, {name}!", "translations": [russian]})
    async with running_bot(stack):
        await stack.emulator.request_join(stack.token, GROUP, USER)
        await stack.emulator.request_join(stack.token, GROUP, MIA)
        assert dict(await decided(db, USER)) == {"status": "approved", "reason": "policy approve",
                                                 "decided_by": f"bot:{KEY}", "member": "member"}
        await decided(db, MIA)
        texts = await until(lambda: len(t := stack.texts(GROUP)) >= 2 and t, timeout=20, what="welcomes")
    assert sorted(texts) == ["Welcome, Mia!", "Добро пожаловать, Иван!"]
    assert calls(stack, "approveChatJoinRequest") == 2 and {USER, MIA} <= members(stack)
    rows = [r for r in await audit(db) if r["subject"] == f"telegram:{USER}"]
    assert len(rows) == 1 and rows[0]["actor"] == f"bot:{KEY}" and rows[0]["action"] == "group.join_approved"
    assert rows[0]["details"]["policy"] == "approve" and rows[0]["details"]["reason"] == "policy approve"


async def test_policy_decline_declines_and_audits(stack: Stack, db: Any) -> None:
    await manage(stack, db, {"policy": "decline"}, welcome={"text": "Welcome, {name}!"})
    async with running_bot(stack):
        await stack.emulator.request_join(stack.token, GROUP, USER)
        row = await decided(db, USER)
    assert (row["status"], row["member"]) == ("declined", "declined")
    assert calls(stack, "declineChatJoinRequest") == 1 and USER not in members(stack)
    assert stack.texts(GROUP) == []
    [entry] = await audit(db)
    assert entry["action"] == "group.join_declined" and entry["details"]["reason"] == "policy decline"


async def test_manual_card_is_decided_by_an_admin_and_refused_to_anyone_else(stack: Stack, db: Any) -> None:
    emu = stack.emulator
    await manage(stack, db, {"policy": "manual", "adminChatId": DESK})
    async with running_bot(stack):
        await emu.request_join(stack.token, GROUP, USER)
        [card] = await until(lambda: stack.emulator.sent(stack.token, DESK), timeout=20, what="the card")
        assert card.text == "Join request to Book club:\nИван (@ivan, id 501, language ru)"  # noqa: RUF001
        approve, decline = card.reply_markup["inline_keyboard"][0] if card.reply_markup else ([], [])
        assert (approve["text"], decline["text"]) == ("Approve", "Decline")
        assert await db.fetchval("SELECT status FROM group_join_requests") == "pending"
        assert await db.fetchval("SELECT status FROM group_members WHERE user_id = $1", USER) == "pending"

        await emu.press_button(stack.token, MIA, card.message_id, approve["callback_data"], chat_id=DESK)
        await emu.wait_webhook_idle(stack.token)
        await until(lambda: calls(stack, "answerCallbackQuery") == 1, timeout=20, what="the refusal")
        assert await db.fetchval("SELECT status FROM group_join_requests") == "pending"

        await emu.press_button(stack.token, ADMIN, card.message_id, approve["callback_data"], chat_id=DESK)
        row = await decided(db, USER)
        edited = await until(lambda: (m := emu.message(stack.token, DESK, card.message_id)) is not None
                             and (m.text or "").startswith("✅") and m, timeout=20, what="the card edited")
    assert (row["status"], row["decided_by"], row["member"]) == ("approved", f"telegram:{ADMIN}", "member")
    assert edited.text == f"✅ Approved by Ada\n\n{card.text}" and edited.reply_markup is None
    assert calls(stack, "approveChatJoinRequest") == 1 and USER in members(stack)
    [entry] = await audit(db)
    assert entry["actor"] == f"telegram:{ADMIN}" and entry["details"]["policy"] == "manual"


async def test_rules_decline_a_user_without_username_and_send_the_decline_message(
        stack: Stack, db: Any) -> None:
    await manage(stack, db, {"policy": "rules", "rules": {"requireUsername": True,
                                                          "declineMessage": "Set a @username first."}})
    async with running_bot(stack):
        await stack.emulator.request_join(stack.token, GROUP, BOB)
        row = await decided(db, BOB)
        await until(lambda: stack.texts(BOB), timeout=20, what="the decline message")
    assert (row["status"], row["reason"]) == ("declined", "no username")
    assert calls(stack, "declineChatJoinRequest") == 1 and stack.texts(BOB) == ["Set a @username first."]


async def test_rules_decline_a_language_not_in_the_list(stack: Stack, db: Any) -> None:
    await manage(stack, db, {"policy": "rules", "rules": {"allowedLanguages": ["en", "ru"]}})
    async with running_bot(stack):
        await stack.emulator.request_join(stack.token, GROUP, BOB)
        await stack.emulator.request_join(stack.token, GROUP, USER)
        assert (await decided(db, BOB))["reason"] == "language de not allowed"
        assert (await decided(db, USER))["status"] == "approved"


QUESTION = {"policy": "rules", "rules": {"requireUsername": True, "question": {
    "text": "What is the club's favourite colour?", "answerWithinMinutes": 10, "acceptedAnswers": ["Blue"]}}}


async def test_rules_question_answered_in_time_is_approved(stack: Stack, db: Any) -> None:
    await manage(stack, db, QUESTION)
    async with running_bot(stack):
        await stack.emulator.request_join(stack.token, GROUP, USER)
        [question] = await until(lambda: stack.texts(USER), timeout=20, what="the question")
        assert question == ("Чтобы вступить в Book club, ответьте в течение 10 мин.:\n\n"
                            "What is the club's favourite colour?")
        assert await db.fetchval("SELECT deadline - now() > interval '9 minutes' FROM group_join_requests")
        await stack.emulator.user_sends(stack.token, USER, "  blue ")
        row = await decided(db, USER)
        await until(lambda: len(stack.texts(USER)) == 2, timeout=20, what="the user told")
    assert (row["status"], row["reason"]) == ("approved", "answer accepted") and USER in members(stack)
    assert stack.texts(USER)[1] == "Спасибо! Ваша заявка на вступление одобрена."
    assert stack.texts(ADMIN) == []  # the answer went to the question, not to the support inbox


async def test_rules_question_unanswered_is_declined_at_the_deadline_across_a_bot_restart(
        stack: Stack, db: Any) -> None:
    await manage(stack, db, QUESTION)
    async with running_bot(stack):
        await stack.emulator.request_join(stack.token, GROUP, MIA)
        await until(lambda: stack.texts(MIA), timeout=20, what="the question")
        assert await db.fetchval("SELECT status FROM group_join_requests") == "asked"
    # the bot is down when the deadline passes; the next process's sweep finds it
    await due_now(db, "group_join_requests", "deadline")
    assert calls(stack, "declineChatJoinRequest") == 0
    async with running_bot(stack):
        row = await decided(db, MIA)
        # too late: the question's state went with the timeout, so this is an ordinary message to support
        await stack.emulator.user_sends(stack.token, MIA, "Blue")
        await until(lambda: stack.texts(ADMIN), timeout=20, what="the late answer at support")
    assert (row["status"], row["reason"], row["member"]) == ("declined", "no answer in time", "declined")
    assert calls(stack, "declineChatJoinRequest") == 1 and calls(stack, "approveChatJoinRequest") == 0
    assert "Blue" in stack.texts(ADMIN)[0]
    assert await db.fetchval("SELECT status FROM group_join_requests") == "declined"
    [entry] = await audit(db)
    assert (entry["action"], entry["details"]["reason"]) == ("group.join_declined", "no answer in time")


async def test_a_wrong_answer_is_declined(stack: Stack, db: Any) -> None:
    await manage(stack, db, QUESTION)
    async with running_bot(stack):
        await stack.emulator.request_join(stack.token, GROUP, MIA)
        await until(lambda: stack.texts(MIA), timeout=20, what="the question")
        await stack.emulator.user_sends(stack.token, MIA, "green")
        row = await decided(db, MIA)
    assert (row["status"], row["reason"]) == ("declined", "answer not accepted")


async def test_welcome_is_deleted_when_due_even_after_a_restart(stack: Stack, db: Any) -> None:
    emu = stack.emulator
    await manage(stack, db, {"policy": "approve"}, welcome={"text": "Hi {name}", "deleteAfterSeconds": 3600})
    async with running_bot(stack):
        await emu.request_join(stack.token, GROUP, MIA)
        [welcome] = await until(lambda: emu.sent(stack.token, GROUP), timeout=20, what="the welcome")
        assert welcome.text == "Hi Mia"
        assert await db.fetchval("SELECT delete_at - now() > interval '59 minutes' FROM group_welcomes")
    assert emu.message(stack.token, GROUP, welcome.message_id) is not None
    await due_now(db, "group_welcomes", "delete_at")
    async with running_bot(stack):
        await until(lambda: emu.message(stack.token, GROUP, welcome.message_id) is None, timeout=20,
                    what="the welcome deleted")
        await until(lambda: db.fetchval("SELECT count(*) = 0 FROM group_welcomes"), timeout=20,
                    what="the row forgotten")


async def test_requests_to_a_chat_that_is_not_managed_are_left_alone(
        stack: Stack, db: Any, redis: Any) -> None:
    stream = updates_stream(KEY, update_partition(GROUP, DEFAULT_PARTITIONS))

    async def handled() -> bool:
        groups = await redis.xinfo_groups(stream)
        return bool(groups) and groups[0]["pending"] == 0 and groups[0]["last-delivered-id"] != b"0-0"

    async with running_bot(stack):
        await stack.emulator.request_join(stack.token, GROUP, USER)
        await stack.emulator.wait_webhook_idle(stack.token)
        await until(handled, timeout=20, what="the request handled and acknowledged")
    assert calls(stack, "approveChatJoinRequest") + calls(stack, "declineChatJoinRequest") == 0
    assert await db.fetchval("SELECT count(*) FROM group_join_requests") == 0
