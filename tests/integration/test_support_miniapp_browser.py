"""Issue 15's acceptance: an admin answers support requests in the Mini App, in headless Chromium.

The desk runs as it would (`clarion_dev.testing.support_stack`): `clarion-webhook`, a `clarion-worker`
for the telegram channel and one for its email channel, and `clarion-bot` as processes, on Postgres and
Redis, with the Telegram emulator and the SMTP sink. The page is opened the way Telegram opens a Mini
App from a group's `startapp` link: initData signed with the bot's token in the URL fragment
(`#tgWebAppData=…&tgWebAppVersion=…&tgWebAppPlatform=…`), `start_param` `t<id>`. What is asserted is
what people see: the page, the email the requester gets, the DM the user gets, the admin post in the
group as the emulator holds it now.

Here (not in tests/e2e) because no control plane or operator is involved: the channel rows are written
with the operator's own `upsert_channel`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from clarion.streams import notify_stream
from clarion_dev.net import free_port
from clarion_dev.smtp_sink import CapturedMessage, SmtpSink
from clarion_dev.telegram import Emulator
from clarion_dev.telegram.world import SentMessage
from clarion_dev.testing.support_stack import (
    ADMIN,
    DM_USER,
    MAIL_KEY,
    SENDER,
    STRANGER,
    SupportStack,
    buttons,
    support_stack,
    thread_of,
)
from clarion_dev.testing.waiting import async_wait_for
from playwright.async_api import Page, expect

pytestmark = pytest.mark.integration

MIA = "mia@example.org"
REQUEST = "Where is my invoice for order 1042?"


@pytest.fixture
async def desk(telegram_emulator: Emulator, smtp_sink: SmtpSink, db: asyncpg.Pool, database_url: str,
               redis_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[SupportStack]:
    """The desk; parametrized indirectly, the param is the webhook's Telegram script URL (default: none)."""
    script_url = getattr(request, "param", "")
    async with support_stack(telegram_emulator, smtp_sink, db, database_url, redis_url, tmp_path / "logs",
                             script_url=script_url) as made:
        yield made


async def api_request_post(desk: SupportStack) -> tuple[int, Any]:
    """A contact form's request; (thread id, its post as the worker sent it to the group)."""
    thread_id = await desk.request(MIA, "Mia", REQUEST)
    await desk.wait_post(thread_id, what="the request posted in the support group")
    [sent] = [m for m in desk.posts() if thread_of(m) == thread_id]
    return thread_id, sent


async def open_app(page: Page, url: str) -> None:
    """Launch the Mini App: a fresh document each time, as Telegram opens a new webview (going from the
    page to the same page with another fragment would not load it again)."""
    await page.goto("about:blank")
    await page.goto(url)


async def answer_in_page(page: Page, desk: SupportStack, thread_id: int, text: str) -> None:
    """Open the Mini App as the admin from the post's link, check the request is shown, answer."""
    await open_app(page, desk.page_url(ADMIN, thread_id))
    await expect(page.locator("body")).to_have_attribute("data-state", "ready")
    await page.get_by_test_id("reply-text").fill(text)
    await page.get_by_test_id("reply-submit").click()
    await expect(page.locator("body")).to_have_attribute("data-state", "sent")
    await expect(page.get_by_test_id("sent")).to_have_text("Your answer is on its way.")
    await expect(page.get_by_test_id("request-status")).to_have_attribute("data-status", "replying")


async def mail_to(sink: SmtpSink, address: str, count: int) -> list[CapturedMessage]:
    def arrived() -> list[CapturedMessage] | None:
        found = [c for c in sink.messages if address in c.rcpt_tos]
        return found if len(found) >= count else None

    mail: list[CapturedMessage] = await async_wait_for(arrived, timeout=30, interval=0.05,
                                                       what=f"{count} email(s) to {address}")
    return mail


def plain_text(captured: CapturedMessage) -> str:
    part = captured.message.get_body(("plain",))
    assert part is not None
    text: str = part.get_content()
    return text.strip()


async def test_an_admin_answers_a_contact_form_request_and_the_post_shows_replied_without_the_button(
    desk: SupportStack, browser_page: Page, db: asyncpg.Pool,
) -> None:
    page = browser_page
    thread_id, sent = await api_request_post(desk)
    assert sent.text == f"Request from Mia <{MIA}>:\n\n{REQUEST}"
    assert buttons(sent.reply_markup) == [
        {"text": "Reply", "url": f"https://t.me/shop_desk_bot/desk?startapp=t{thread_id}"}]

    await open_app(page, desk.page_url(ADMIN, thread_id))
    await expect(page.locator("body")).to_have_attribute("data-state", "ready")
    await expect(page.get_by_test_id("title")).to_have_text("Support request")
    await expect(page.get_by_test_id("request-from")).to_have_text(f"Mia · {MIA}")
    await expect(page.get_by_test_id("request-text")).to_have_text(REQUEST)
    await expect(page.get_by_test_id("request-status")).to_have_attribute("data-status", "open")
    await page.get_by_test_id("reply-text").fill("Your invoice is attached to your account page.")
    await page.get_by_test_id("reply-submit").click()
    await expect(page.locator("body")).to_have_attribute("data-state", "sent")

    [mail] = await mail_to(desk.sink, MIA, 1)
    assert mail.rcpt_tos == [MIA]
    assert mail.message["Subject"] == "Re: your request" and mail.message["From"] == SENDER
    assert mail.message["To"] == MIA
    assert plain_text(mail) == "Your invoice is attached to your account page."
    post = await desk.wait_post(thread_id, lambda p: p.text.startswith("✅"), what="the post edited ✅")
    assert post.text == f"✅ Replied by Ada Lovelace\n\n{sent.text}" and post.reply_markup is None
    assert page.errors == []  # type: ignore[attr-defined]

    await open_app(page, desk.page_url(ADMIN, thread_id))  # opened again: answered, no form
    await expect(page.locator("body")).to_have_attribute("data-state", "closed")
    await expect(page.get_by_test_id("request-status")).to_have_text("answered")
    await expect(page.get_by_test_id("reply-form")).to_be_hidden()
    assert page.errors == []  # type: ignore[attr-defined]
    thread = await db.fetchrow("SELECT status, replied_by, replied_by_name FROM support_threads")
    assert dict(thread) == {"status": "replied", "replied_by": ADMIN.id, "replied_by_name": "Ada Lovelace"}


async def test_a_rejected_email_shows_failed_with_the_button_and_a_second_try_after_recovery_shows_replied(
    desk: SupportStack, browser_page: Page,
) -> None:
    page = browser_page
    thread_id, sent = await api_request_post(desk)
    desk.sink.faults.set(permanent_rate=1.0)  # every DATA answered 550

    await answer_in_page(page, desk, thread_id, "First try")
    post = await desk.wait_post(thread_id, lambda p: p.text.startswith("❌"), what="the post edited ❌")
    reason, _, rest = (post.text or "").partition("\n\n")
    assert reason.startswith("❌ Email failed: ") and "550" in reason and rest == sent.text
    assert post.reply_markup == sent.reply_markup  # the Reply button is kept for a retry
    assert desk.sink.messages == []

    desk.sink.faults.set()  # the server recovers
    await open_app(page, desk.page_url(ADMIN, thread_id))
    await expect(page.locator("body")).to_have_attribute("data-state", "ready")
    await expect(page.get_by_test_id("request-status")).to_have_attribute("data-status", "failed")
    await page.get_by_test_id("reply-text").fill("Second try")
    await page.get_by_test_id("reply-submit").click()
    await expect(page.locator("body")).to_have_attribute("data-state", "sent")

    [mail] = await mail_to(desk.sink, MIA, 1)
    assert plain_text(mail) == "Second try" and mail.message["Subject"] == "Re: your request"
    post = await desk.wait_post(thread_id, lambda p: p.text.startswith("✅"), what="the post edited ✅")
    assert post.text == f"✅ Replied by Ada Lovelace\n\n{sent.text}" and post.reply_markup is None
    assert page.errors == []  # type: ignore[attr-defined]


UNREACHABLE_SCRIPT = f"http://127.0.0.1:{free_port()}/js/telegram-web-app.js"


@pytest.mark.parametrize("desk", [UNREACHABLE_SCRIPT], indirect=True)
async def test_a_dm_answered_in_the_mini_app_reaches_the_user_and_the_post_shows_replied(
    desk: SupportStack, browser_page: Page,
) -> None:
    """Also: Telegram's script configured but unreachable (no internet) — the page works from the fragment,
    and the failed load of that script is its only error."""
    page, emu = browser_page, desk.emulator
    await emu.user_sends(desk.token, DM_USER.id, "My parcel never came")

    sent: SentMessage = await async_wait_for(
        lambda: next((m for m in desk.posts() if "My parcel never came" in m.text), None),
        timeout=30, interval=0.05, what="the DM posted")
    thread_id = thread_of(sent)
    assert thread_id is not None
    assert [b["text"] for b in buttons(sent.reply_markup)] == ["Reply", "Reply here"]

    await answer_in_page(page, desk, thread_id, "It ships today")

    def answers() -> list[str] | None:
        texts = [m.text for m in emu.sent(desk.token, DM_USER.id)]
        return [t for t in texts if t.startswith("Answer from support")] or None

    assert await async_wait_for(answers, timeout=30, interval=0.05, what="the answer in the user's chat") == [
        "Answer from support:\n\nIt ships today"]
    post = await desk.wait_post(thread_id, lambda p: p.text.startswith("✅"), what="the post edited ✅")
    assert post.text == f"✅ Replied by Ada Lovelace\n\n{sent.text}" and post.reply_markup is None
    errors = page.errors  # type: ignore[attr-defined]
    assert errors and all("ERR_CONNECTION_REFUSED" in e for e in errors), errors
    assert desk.sink.messages == []


async def test_a_non_admin_sees_the_refusal_and_nothing_is_queued(
    desk: SupportStack, browser_page: Page, db: asyncpg.Pool, redis: aioredis.Redis,
) -> None:
    page = browser_page
    thread_id, sent = await api_request_post(desk)

    await open_app(page, desk.page_url(STRANGER, thread_id))
    await expect(page.locator("body")).to_have_attribute("data-state", "error")
    await expect(page.get_by_test_id("error")).to_have_text(
        "Error: only the channel's admins may answer its requests")
    await expect(page.get_by_test_id("reply-form")).to_be_hidden()
    await expect(page.get_by_test_id("request")).to_be_hidden()

    assert await redis.xlen(notify_stream(MAIL_KEY, "instant")) == 0
    assert await db.fetchval("SELECT status FROM support_threads WHERE id = $1", thread_id) == "open"
    assert await db.fetchval("SELECT count(*) FROM notifications WHERE reference LIKE 'support-reply:%'") == 0
    assert desk.post_of(thread_id) is not None and desk.post_of(thread_id).text == sent.text  # type: ignore[union-attr]
    errors = page.errors  # type: ignore[attr-defined]
    assert all("403" in e for e in errors), errors  # Chromium reports the refused fetch, nothing else
