"""Templates through the public API on real Postgres and Redis: the channel row as the operator writes it,
the API rendering at accept, refusals naming the field, a template edit followed within seconds, and
(with `clarion-worker` processes) the rendered text reaching the emulator and the SMTP sink."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from clarion.db import api_keys as keys
from clarion.models import ApiKeySecret, NotificationChannelSpec
from clarion_dev.smtp_sink import SmtpSink
from clarion_dev.telegram import Emulator
from clarion_dev.testing.waiting import async_wait_for
from clarion_operator import store
from clarion_operator.channel_logic import stored_config, stored_templates
from clarion_webhook.app import create_app
from clarion_webhook.settings import WebhookSettings

pytestmark = [pytest.mark.integration, pytest.mark.emulator(limits="off")]

KEY = "t" * 40
BEARER = {"Authorization": f"Bearer {KEY}"}
WORKER = str(Path(sys.executable).with_name("clarion-worker"))
SHIPPED = {
    "name": "order-shipped",
    "variables": [{"name": "orderId"}, {"name": "customer", "default": "there"}],
    "defaultLanguage": "en",
    "variants": [
        {"language": "en", "parseMode": "MarkdownV2",
         "text": "*Hi* {{ customer }}, order {{ orderId }} shipped",
         "buttons": [[{"text": "Track", "url": "https://shop.example/o/{{ orderId | urlencode }}"}]]},
        {"language": "de", "parseMode": "HTML",
         "text": "<b>Hallo</b> {{ customer }}, {{ orderId }} ist unterwegs"},
    ],
}
LONG = {"name": "long", "variables": [{"name": "body"}],
        "variants": [{"language": "en", "text": "{{ body }}{{ body }}"}]}
BROKEN = {"name": "broken", "variables": [{"name": "orderId"}],
          "variants": [{"language": "en", "text": "Order {{ orderId "}]}
RESET = {"name": "password-reset", "variables": [{"name": "link"}],
         "variants": [{"language": "en", "subject": "Reset your password", "text": "Open {{ link }}",
                       "html": "<p><a href=\"{{ link }}\">Choose a new password</a></p>"}]}


async def _put_channel(db: asyncpg.Pool, name: str, spec: dict[str, Any], **facts: Any) -> None:
    """The channel row as the operator's reconcile writes it."""
    parsed = NotificationChannelSpec.model_validate(spec)
    await store.upsert_channel(
        db, namespace="shop", name=name, type_=parsed.type, uid=f"uid-{name}",
        bot_id=facts.get("bot_id"), bot_username=None, api_base_url=facts.get("api_base_url"),
        webhook_secret_sha256=None, config=stored_config(parsed.section),
        templates=[t.to_json() for t in stored_templates(parsed)], ready=True)


def _telegram_spec(emulator: Emulator, *templates: dict[str, Any]) -> dict[str, Any]:
    return {"type": "telegram", "telegram": {"botTokenSecretRef": {"name": "bot"},
                                             "apiBaseUrl": emulator.base_url},
            "templates": list(templates)}


def _email_spec(port: int) -> dict[str, Any]:
    return {"type": "email", "email": {"host": "127.0.0.1", "port": port, "tls": "none",
                                       "from": "Shop <shop@example.org>"},
            "templates": [RESET]}


class World:
    def __init__(self, api: httpx.AsyncClient, token: str, bot_id: int) -> None:
        self.api, self.token, self.bot_id = api, token, bot_id

    async def post(self, template: dict[str, Any], *, chat_id: int = 100_000, channel: str = "shop/alerts",
                   **content: Any) -> httpx.Response:
        recipient = {"email": "buyer@example.org"} if channel == "shop/mail" else {"chatId": chat_id}
        return await self.api.post("/api/v1/notifications", headers=BEARER, json={
            "channel": channel, "recipient": recipient, "content": {"template": template, **content}})


@pytest.fixture
async def world(db: asyncpg.Pool, database_url: str, redis_url: str, telegram_emulator: Emulator,
                smtp_sink: SmtpSink) -> AsyncIterator[World]:
    bot = telegram_emulator.add_bot()
    telegram_emulator.add_users(10, 100_000)
    await _put_channel(db, "alerts", _telegram_spec(telegram_emulator, SHIPPED, LONG, BROKEN),
                       bot_id=bot.id, api_base_url=telegram_emulator.base_url)
    await _put_channel(db, "mail", _email_spec(smtp_sink.port))
    await keys.sync_api_key(db, ApiKeySecret(
        namespace="shop", name="backend", uid="uid-backend",
        key_sha256=hashlib.sha256(KEY.encode()).hexdigest(), channels=("*",), rate_per_minute=None))
    app = create_app(WebhookSettings(database_url=database_url, redis_url=redis_url, channel_cache_seconds=0))
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://clarion")
    try:
        yield World(client, bot.token, bot.id)
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


async def _content(db: asyncpg.Pool, answer: httpx.Response) -> dict[str, Any]:
    content: dict[str, Any] = await db.fetchval("SELECT content FROM notifications WHERE id = $1",
                                                answer.json()["id"])
    return content


async def test_a_template_is_rendered_at_accept_and_stored_with_its_name_and_language(
    world: World, db: asyncpg.Pool,
) -> None:
    answer = await world.post({"name": "order-shipped", "language": "de-AT",
                               "variables": {"orderId": "A-17", "customer": "<Ann>"}},
                              disableNotification=True)

    assert answer.status_code == 202, answer.text
    assert await _content(db, answer) == {
        "text": "<b>Hallo</b> &lt;Ann&gt;, A-17 ist unterwegs", "parseMode": "HTML", "buttons": [],
        "disableNotification": True, "template": "order-shipped", "language": "de"}


@pytest.mark.parametrize(("content", "field", "words"), [
    ({"template": {"name": "order-shipped", "variables": {"customer": "Ann"}}},
     "content.template.variables.orderId", "needs variable orderId"),
    ({"template": {"name": "no-such-template", "variables": {}}}, "content.template.name",
     "has no template 'no-such-template'"),
    ({"template": {"name": "broken", "variables": {"orderId": 1}}}, "content.template.name",
     "'broken' of channel shop/alerts does not compile"),
    ({"template": {"name": "long", "variables": {"body": "x" * 2049}}}, "content.template.variables",
     "at most 4096 characters"),
    ({"template": {"name": "order-shipped"}, "text": "hello"}, "content", "leave out text"),
    ({"template": {"name": "order-shipped", "variables": {"orderId": {"nested": 1}}}},
     "content.template.variables.orderId", ""),
])
async def test_a_template_request_that_cannot_be_rendered_is_a_422_naming_the_field_and_stores_nothing(
    world: World, db: asyncpg.Pool, content: dict[str, Any], field: str, words: str,
) -> None:
    answer = await world.api.post("/api/v1/notifications", headers=BEARER, json={
        "channel": "shop/alerts", "recipient": {"chatId": 100_000}, "content": content})

    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"].startswith(field) and words in error["message"]
    assert await db.fetchval("SELECT count(*) FROM notifications") == 0


async def test_an_edited_template_reaches_the_api_within_seconds_and_leaves_accepted_ones_alone(
    world: World, db: asyncpg.Pool, telegram_emulator: Emulator,
) -> None:
    before = await world.post({"name": "order-shipped", "variables": {"orderId": 1}})
    assert before.status_code == 202, before.text
    edited = {**SHIPPED, "variants": [{"language": "en", "text": "Shipped: {{ orderId }}"}]}

    await _put_channel(db, "alerts", _telegram_spec(telegram_emulator, edited),
                       bot_id=world.bot_id, api_base_url=telegram_emulator.base_url)

    async def rendered_anew() -> str | None:
        answer = await world.post({"name": "order-shipped", "variables": {"orderId": 2}})
        assert answer.status_code == 202, answer.text
        text = str((await _content(db, answer))["text"])
        return text if text.startswith("Shipped") else None

    text: str = await async_wait_for(rendered_anew, timeout=10, interval=0.1, what="the edit")
    assert text == "Shipped: 2"
    assert (await _content(db, before))["text"] == "*Hi* there, order 1 shipped"


async def test_an_idempotent_replay_gets_its_first_answer_after_the_template_is_removed(
    world: World, db: asyncpg.Pool, telegram_emulator: Emulator,
) -> None:
    body = {"channel": "shop/alerts", "recipient": {"chatId": 100_000},
            "content": {"template": {"name": "order-shipped", "variables": {"orderId": 7}}}}
    headers = {**BEARER, "Idempotency-Key": "order-7"}
    first = await world.api.post("/api/v1/notifications", headers=headers, json=body)
    assert first.status_code == 202, first.text

    await _put_channel(db, "alerts", _telegram_spec(telegram_emulator, LONG),
                       bot_id=world.bot_id, api_base_url=telegram_emulator.base_url)

    async def template_gone() -> bool | None:
        fresh = await world.post({"name": "order-shipped", "variables": {"orderId": 8}})
        return fresh.status_code == 422 or None

    gone: bool = await async_wait_for(template_gone, timeout=10, interval=0.1, what="the removal")
    assert gone
    stored = await db.fetchval("SELECT count(*) FROM notifications")
    again = await world.api.post("/api/v1/notifications", headers=headers, json=body)
    other = await world.api.post("/api/v1/notifications", headers=headers,
                                 json={**body, "recipient": {"chatId": 100_001}})

    assert (again.status_code, again.headers.get("idempotent-replay")) == (202, "true")
    assert again.json() == first.json()
    assert (other.status_code, other.json()["error"]["code"]) == (422, "idempotency_key_reused")
    assert await db.fetchval("SELECT count(*) FROM notifications") == stored


async def _run_worker(channel: str, database_url: str, redis_url: str, log: Path,
                      **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        WORKER, "--channel", channel, stdout=log.open("ab"), stderr=log.open("ab"),
        env={**os.environ, "CLARION_DATABASE_URL": database_url, "CLARION_REDIS_URL": redis_url,
             "CLARION_LOG_FORMAT": "json", **env})


async def test_workers_deliver_the_rendered_text_to_telegram_and_the_mailbox(
    world: World, db: asyncpg.Pool, telegram_emulator: Emulator, smtp_sink: SmtpSink, database_url: str,
    redis_url: str, tmp_path: Path,
) -> None:
    order = "A-1.2 (gift)!"
    telegram = await world.post({"name": "order-shipped",
                                 "variables": {"orderId": order, "customer": "Ann_B"}})
    email = await world.post({"name": "password-reset", "variables": {"link": "https://x.example/r?a=1&b=2"}},
                             channel="shop/mail")
    assert (telegram.status_code, email.status_code) == (202, 202), (telegram.text, email.text)
    workers = [await _run_worker("shop.alerts", database_url, redis_url, tmp_path / "alerts.log",
                                 CLARION_BOT_TOKEN=world.token),
               await _run_worker("shop.mail", database_url, redis_url, tmp_path / "mail.log")]
    try:
        async def both_sent() -> list[str] | None:
            statuses = [(await world.api.get(a.headers["location"], headers=BEARER)).json()["status"]
                        for a in (telegram, email)]
            return statuses if statuses == ["sent", "sent"] else None

        try:
            statuses: list[str] = await async_wait_for(both_sent, timeout=60, interval=0.2, what="both sent")
        except AssertionError as exc:
            logs = "\n".join(p.read_text()[-2000:] for p in tmp_path.glob("*.log"))
            raise AssertionError(f"{exc}\n{logs}") from None
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            await worker.wait()

    assert statuses == ["sent", "sent"]
    [message] = telegram_emulator.sent(world.token, chat_id=100_000)
    assert message.parse_mode == "MarkdownV2"
    assert message.text == f"Hi Ann_B, order {order} shipped"  # as Telegram shows it: the value intact
    assert message.reply_markup == {"inline_keyboard": [[
        {"text": "Track", "url": "https://shop.example/o/A-1.2%20%28gift%29%21"}]]}
    [mail] = smtp_sink.messages
    assert mail.message["Subject"] == "Reset your password"
    plain = mail.message.get_body(("plain",))
    html = mail.message.get_body(("html",))
    assert plain is not None and html is not None
    assert plain.get_content().strip() == "Open https://x.example/r?a=1&b=2"
    assert '<a href="https://x.example/r?a=1&amp;b=2">' in html.get_content()
