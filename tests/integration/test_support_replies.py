"""Support posts and the edits that show a reply's outcome, with the bot as it runs: the emulator (as
Telegram) → webhook → Redis → `clarion_bot.main.run` → emulator, Postgres and Redis real.

The status events are written the way the channel's worker writes them (`clarion_senders.worker`): the
notification rows as the API stores them (a reply's row referenced by the thread, `support-reply:<id>`;
an api request's post `support-post:<id>`), then the row's outcome and a `NotificationEvent` on the status
stream of the channel that sent it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from clarion.db import support
from clarion.keys import channel_key
from clarion.streams import NotificationEvent, notification_status_stream, support_group
from clarion_bot.main import run as run_bot
from clarion_dev.telegram import Emulator
from clarion_dev.testing.telegram import aiogram_bot
from prometheus_client import generate_latest

from tests.integration.test_bot_end_to_end import ADMIN, KEY, NAMESPACE, USER, Stack, make_stack, until

pytestmark = pytest.mark.integration

APP_URL = "https://support.example.org/app/"
EMAIL_CHANNEL = "support-mail"
GROUP = -100_5551


@contextlib.asynccontextmanager
async def running_bot(stack: Stack, **overrides: Any) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_bot(stack.bot_settings(**overrides), stop, handle_signals=False))
    try:
        yield
    finally:
        stop.set()
        assert await task == 0


def mini_app(short_name: str | None = None) -> dict[str, Any]:
    app: dict[str, Any] = {"url": APP_URL}
    if short_name:
        app["shortName"] = short_name
    return {"miniApp": app, "replyEmailChannel": EMAIL_CHANNEL}


@pytest.fixture
async def stack(telegram_emulator: Emulator, db: Any, database_url: str,
                redis_url: str) -> AsyncIterator[Stack]:
    telegram_emulator.add_user(ADMIN, "Ada", "ada_admin", "en")
    telegram_emulator.add_user(USER, "Иван", "ivan", "ru")
    async with make_stack(telegram_emulator, db, database_url, redis_url, support=mini_app()) as made:
        yield made


def post_of(stack: Stack, chat_id: int) -> Any:
    """The first message the bot sent to `chat_id`, as it is now (edits applied)."""
    first = stack.emulator.sent(stack.token, chat_id)[0]
    return stack.emulator.message(stack.token, chat_id, first.message_id)


async def dm_thread(stack: Stack, db: Any, text: str = "My order did not arrive") -> Any:
    """The user writes to the bot; returns the thread once its post is in the support chat."""
    await stack.emulator.user_sends(stack.token, USER, text)
    row = await until(lambda: db.fetchrow("SELECT id, admin_message_id, post_text FROM support_threads"),
                      timeout=20, what="the thread recorded")
    await until(lambda: stack.texts(USER), timeout=20, what="the user told")
    return row


def buttons(message: Any) -> list[dict[str, Any]]:
    markup = message.reply_markup
    return [] if markup is None else [b for row in markup["inline_keyboard"] for b in row]


async def answer_in_chat(stack: Stack, text: str) -> None:
    emu = stack.emulator
    post = post_of(stack, ADMIN)
    [reply_here] = [b for b in buttons(post) if "callback_data" in b]
    await emu.press_button(stack.token, ADMIN, post.message_id, reply_here["callback_data"])
    await until(lambda: any(t.startswith("Write your answer") for t in stack.texts(ADMIN)), timeout=20,
                what="the prompt")
    await emu.user_sends(stack.token, ADMIN, text)


async def test_dm_post_has_both_reply_buttons_and_an_answer_in_chat_edits_it_replied(
        stack: Stack, db: Any) -> None:
    async with running_bot(stack):
        thread = await dm_thread(stack, db)
        post = post_of(stack, ADMIN)
        assert post.text == thread["post_text"] and "My order did not arrive" in post.text
        app, here = buttons(post)
        assert app == {"text": "Reply", "web_app": {"url": f"{APP_URL}?thread={thread['id']}"}}
        assert here["text"] == "Reply here" and here["callback_data"] == f"sr:{thread['id']}"

        await answer_in_chat(stack, "It ships tomorrow")
        await until(lambda: "Your answer was delivered to Иван." in stack.texts(ADMIN), timeout=20,
                    what="the admin told")
        assert stack.texts(USER)[-1] == "Ответ службы поддержки:\n\nIt ships tomorrow"
        post = post_of(stack, ADMIN)
        assert post.text == f"✅ Replied by Ada\n\n{thread['post_text']}" and post.reply_markup is None
    row = await db.fetchrow(
        "SELECT status, replied_by, replied_by_name, reply_text, body FROM support_threads")
    assert dict(row) == {"status": "replied", "replied_by": ADMIN, "replied_by_name": "Ada",
                         "reply_text": "It ships tomorrow", "body": "My order did not arrive"}
    assert stack.emulator.retry_afters(stack.token) == []


async def test_answer_to_a_user_who_blocked_the_bot_shows_not_delivered_and_keeps_the_buttons(
        stack: Stack, db: Any) -> None:
    async with running_bot(stack):
        thread = await dm_thread(stack, db)
        before = buttons(post_of(stack, ADMIN))
        stack.emulator.set_blocked(stack.token, USER, True)
        await answer_in_chat(stack, "Are you there?")
        await until(lambda: any(t.startswith("Not delivered") for t in stack.texts(ADMIN)), timeout=20,
                    what="the admin told")
        post = post_of(stack, ADMIN)
        assert post.text == (f"❌ Not delivered: Forbidden: bot was blocked by the user\n\n"
                             f"{thread['post_text']}")
        assert buttons(post) == before
    assert await db.fetchval("SELECT status FROM support_threads") == "failed"


@pytest.mark.parametrize(("short_name", "expected"), [("support", "link"), (None, "in chat only")])
async def test_post_in_a_group_support_chat_links_the_mini_app_with_startapp(
        telegram_emulator: Emulator, db: Any, database_url: str, redis_url: str, short_name: str | None,
        expected: str) -> None:
    emu = telegram_emulator
    emu.add_user(ADMIN, "Ada", "ada_admin", "en")
    emu.add_user(USER, "Иван", "ivan", "ru")
    emu.add_group(GROUP, "Support desk", members=[ADMIN], admins=[ADMIN])
    async with make_stack(emu, db, database_url, redis_url, supportChatId=GROUP,
                          support=mini_app(short_name)) as stack, running_bot(stack):
        thread = await dm_thread(stack, db)
        if expected == "link":
            assert buttons(post_of(stack, GROUP)) == [
                {"text": "Reply", "url": f"https://t.me/clarion_support_bot/support?startapp=t{thread['id']}"},
                {"text": "Reply here", "callback_data": f"sr:{thread['id']}"}]
        else:
            assert buttons(post_of(stack, GROUP)) == [
                {"text": "Reply", "callback_data": f"sr:{thread['id']}"}]


# --- the status streams ---------------------------------------------------------------------------------

async def email_channel(db: Any) -> int:
    channel_id: int = await db.fetchval(
        "INSERT INTO channels (namespace, name, type, config, ready) VALUES ($1, $2, 'email', '{}', true) "
        "RETURNING id", NAMESPACE, EMAIL_CHANNEL)
    return channel_id


async def notification(db: Any, channel_id: int, recipient: str, reference: str,
                       thread_id: int | None) -> uuid.UUID:
    """A notification row as the API stores it (queued on the instant lane)."""
    ident = uuid.uuid4()
    await db.execute(
        """INSERT INTO notifications (id, channel_id, lane, recipient, content, reference, status, trace_id,
                                      support_thread_id)
           VALUES ($1, $2, 'instant', $3, $4, $5, 'queued', 'trace', $6)""",
        ident, channel_id, recipient, json.dumps({"text": "reply"}), reference, thread_id)
    return ident


async def settle(db: Any, redis: Any, channel: str, ident: uuid.UUID, status: str, *,
                 error: str | None = None, message_id: int | None = None, publish: bool = True) -> None:
    """What the worker does with an outcome: the row first, then the event on the channel's status stream."""
    row = await db.fetchrow(
        """UPDATE notifications SET status = $2, last_error = $3, provider_message_id = $4, attempts = 1
           WHERE id = $1 RETURNING reference""", ident, status, error,
        None if message_id is None else str(message_id))
    if publish:
        event = NotificationEvent(notification_id=str(ident), status=status, channel=channel,
                                  reference=row["reference"], error=error,
                                  provider_message_id=None if message_id is None else str(message_id),
                                  attempts=1, trace_id="trace")
        await redis.xadd(notification_status_stream(channel), event.to_fields())


async def api_request(stack: Stack, db: Any, redis: Any) -> tuple[int, str]:
    """A request from POST /api/v1/requests: the thread, and its post as the worker sends it (the bot
    records the post's message id from the status event). Returns (thread id, post text)."""
    thread_id = await support.reserve_thread_id(db)
    post_text = "Request from Mia (mia@example.org):\n\nWhere is my invoice?"
    async with db.acquire() as conn, conn.transaction():  # the thread and its post's row
        post_id = await notification(conn, stack.channel_id, str(ADMIN), support.reference("post", thread_id),
                                     None)
        await support.record_api_request(conn, thread_id, stack.channel_id, email="mia@example.org",
                                         name="Mia", language="en", body="Where is my invoice?",
                                         admin_chat_id=ADMIN, post_text=post_text,
                                         post_notification_id=post_id)
        await conn.execute("UPDATE notifications SET support_thread_id = $1 WHERE id = $2",
                           thread_id, post_id)
    sender = aiogram_bot(stack.emulator, stack.token)
    try:  # the worker sends the post with its Mini App button
        sent = await sender.send_message(ADMIN, post_text, reply_markup={  # type: ignore[arg-type]
            "inline_keyboard": [[{"text": "Reply", "web_app": {"url": f"{APP_URL}?thread={thread_id}"}}]]})
    finally:
        await sender.session.close()
    await settle(db, redis, KEY, post_id, "sent", message_id=sent.message_id)
    return thread_id, post_text


async def mini_app_reply(db: Any, thread_id: int, channel_id: int, recipient: str) -> uuid.UUID:
    """What POST /app/api/replies does: the reply's notification, and the thread `replying`."""
    ident = await notification(db, channel_id, recipient, support.reference("reply", thread_id), thread_id)
    assert await support.start_reply(db, thread_id, admin_id=ADMIN, admin_name="Ada", text="Sent today",
                                     notification_id=ident) is not None
    return ident


async def acknowledged(redis: Any, stream: str) -> bool:
    """Every entry of the stream delivered to the bot's support group and acknowledged."""
    groups = {g["name"]: g for g in await redis.xinfo_groups(stream)}
    group = groups.get(support_group(KEY).encode())
    last = (await redis.xrevrange(stream, count=1))[0][0]
    return group is not None and group["pending"] == 0 and group["last-delivered-id"] == last


async def test_email_reply_outcomes_edit_the_api_requests_post_and_a_repeated_event_edits_nothing(
        stack: Stack, db: Any, redis: Any) -> None:
    emu = stack.emulator
    email_id = await email_channel(db)
    email_key = channel_key(NAMESPACE, EMAIL_CHANNEL)
    async with running_bot(stack):
        thread_id, post_text = await api_request(stack, db, redis)
        message_id = await until(lambda: db.fetchval("SELECT admin_message_id FROM support_threads"),
                                 timeout=20, what="the post's message id recorded")
        assert message_id == emu.sent(stack.token, ADMIN)[0].message_id

        first = await mini_app_reply(db, thread_id, email_id, "mia@example.org")
        await settle(db, redis, email_key, first, "failed", error="550 mailbox unavailable")
        post = await until(lambda: (m := post_of(stack, ADMIN)).text.startswith("❌") and m, timeout=20,
                           what="the post edited ❌")
        assert post.text == f"❌ Email failed: 550 mailbox unavailable\n\n{post_text}"
        assert buttons(post) == [{"text": "Reply", "web_app": {"url": f"{APP_URL}?thread={thread_id}"}}]

        second = await mini_app_reply(db, thread_id, email_id, "mia@example.org")
        await settle(db, redis, email_key, second, "sent")
        post = await until(lambda: (m := post_of(stack, ADMIN)).text.startswith("✅") and m, timeout=20,
                           what="the post edited ✅")
        assert post.text == f"✅ Replied by Ada\n\n{post_text}" and post.reply_markup is None
        edits = emu.stats(stack.token)["methods"]["editMessageText"]["accepted"]

        await settle(db, redis, email_key, second, "sent")  # the same event again
        await settle(db, redis, email_key, first, "failed", error="550 mailbox unavailable")  # a stale one
        await until(lambda: acknowledged(redis, notification_status_stream(email_key)), timeout=20,
                    what="the repeated events handled")
    assert emu.stats(stack.token)["methods"]["editMessageText"]["accepted"] == edits == 2
    assert post_of(stack, ADMIN).text == f"✅ Replied by Ada\n\n{post_text}"
    assert await db.fetchval("SELECT status FROM support_threads") == "replied"
    assert emu.retry_afters(stack.token) == []
    metrics = generate_latest().decode()
    assert 'clarion_bot_support_post_edits_total{result="edited",shows="failed"}' in metrics


async def test_a_telegram_reply_settled_while_the_bot_was_stopped_is_shown_once_it_is_back(
        stack: Stack, db: Any, redis: Any) -> None:
    async with running_bot(stack):
        thread = await dm_thread(stack, db)
    reply = await mini_app_reply(db, thread["id"], stack.channel_id, str(USER))
    await settle(db, redis, KEY, reply, "blocked", error="Forbidden: bot was blocked by the user")
    assert post_of(stack, ADMIN).text == thread["post_text"]  # nobody edited it meanwhile
    async with running_bot(stack):
        post = await until(lambda: (m := post_of(stack, ADMIN)).text.startswith("❌") and m, timeout=20,
                           what="the post edited once the bot is back")
    assert post.text == f"❌ Not delivered: Forbidden: bot was blocked by the user\n\n{thread['post_text']}"
    assert [b.get("text") for b in buttons(post)] == ["Reply", "Reply here"]


async def test_the_sweep_shows_a_reply_whose_event_the_stream_no_longer_has(
        stack: Stack, db: Any, redis: Any) -> None:
    async with running_bot(stack):
        thread = await dm_thread(stack, db)
    reply = await mini_app_reply(db, thread["id"], stack.channel_id, str(USER))
    await settle(db, redis, KEY, reply, "sent", publish=False)  # trimmed away before the bot read it
    async with running_bot(stack, bot_support_sweep_seconds=0.5):
        post = await until(lambda: (m := post_of(stack, ADMIN)).text.startswith("✅") and m, timeout=20,
                           what="the post edited by the sweep")
    assert post.text == f"✅ Replied by Ada\n\n{thread['post_text']}" and post.reply_markup is None
    assert await db.fetchval("SELECT status FROM support_threads") == "replied"
