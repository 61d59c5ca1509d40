"""Events end to end (issue 17, docs/events.md): the routing matrix of
`manifests/examples/booking-routes.yaml` stored as the operator stores routes, events posted to
`POST /api/v1/events` of the real webhook app (uvicorn), notifications sent by a real `clarion-worker`
process to the Telegram emulator, and the booking_done card's button pressed by an emulator user, which
reaches the bot through the webhook and records the follow-up event the backend reads with
`GET /api/v1/events?reference=` and receives, signed, at the route's callback URL (a local HTTP server
that refuses the first delivery, so the retry is seen).

What is asserted is what each person received (the emulator's record) and the API's answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from aiohttp import web
from clarion.db import api_keys as keys
from clarion.db import events
from clarion.keys import channel_key
from clarion.models import ApiKeySecret, NotificationRouteSpec
from clarion_bot.main import run as run_bot
from clarion_bot.settings import BotSettings
from clarion_dev.net import free_port
from clarion_dev.telegram import Emulator
from clarion_dev.testing.processes import stop_processes
from clarion_dev.testing.servers import serve_asgi
from clarion_dev.testing.telegram import aiogram_bot
from clarion_dev.testing.waiting import async_wait_for
from clarion_webhook.app import create_app
from clarion_webhook.settings import WebhookSettings

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "booking-routes.yaml"
WORKER = str(Path(sys.executable).with_name("clarion-worker"))
NAMESPACE, NAME = "salon", "clarion-bot"
KEY = channel_key(NAMESPACE, NAME)
SECRET = "webhook-Secret_0123456789"
API_KEY = "e" * 40
CLIENT, SPECIALIST, ADMIN = 701, 702, 703
CHATS = {"client": CLIENT, "specialist": SPECIALIST, "admin": ADMIN}
DATA = {"service": "Haircut", "when": "5 Dec 10:00"}


async def until(predicate: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    return await async_wait_for(predicate, timeout=timeout, interval=0.05, what=what)


class Backend:
    """The backend's callback endpoint: answers 500 to the first POST, 204 after; keeps what it got."""

    def __init__(self) -> None:
        self.received: list[tuple[int, dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        status = 500 if not self.received else 204
        self.received.append((status, dict(request.headers), await request.read()))
        return web.Response(status=status)


@dataclass
class Stack:
    emu: Emulator
    token: str
    api: httpx.AsyncClient
    db: asyncpg.Pool
    backend: Backend

    def texts(self, chat_id: int) -> list[str]:
        return [m.text for m in self.emu.sent(self.token, chat_id)]

    async def post(self, event_id: str, type_: str, initiator: str, roles: dict[str, dict[str, Any]]) -> Any:
        body = {
            "type": type_,
            "id": event_id,
            "initiator": {"role": initiator, "id": str(CHATS.get(initiator, 0))},
            "recipients": [{"role": role, "id": str(CHATS[role]), **extra} for role, extra in roles.items()],
            "data": DATA,
        }
        return await self.api.post("/api/v1/events", json=body)


@pytest.fixture
async def stack(
    telegram_emulator: Emulator, db: asyncpg.Pool, database_url: str, redis_url: str, tmp_path: Path
) -> AsyncIterator[Stack]:
    emu = telegram_emulator
    info = emu.add_bot(username="salon_bot")
    for user, name in ((CLIENT, "Cleo"), (SPECIALIST, "Sam"), (ADMIN, "Ada")):
        emu.add_user(user, name, None, "en")
    await db.execute(
        """INSERT INTO channels (namespace, name, type, bot_id, bot_username, api_base_url,
                                 webhook_secret_sha256, config, ready)
           VALUES ($1, $2, 'telegram', $3, $4, $5, $6, $7, true)""",
        NAMESPACE,
        NAME,
        info.id,
        info.username,
        emu.base_url,
        hashlib.sha256(SECRET.encode()).hexdigest(),
        {
            "adminChatIds": [ADMIN],
            "defaultLanguage": "en",
            "rateLimits": {"globalPerSecond": 30, "perChatPerSecond": 30},
        },
    )
    backend = Backend()
    receiver = web.Application()
    receiver.router.add_post("/follow-ups", backend.handle)
    runner = web.AppRunner(receiver)
    await runner.setup()
    backend_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", backend_port).start()
    docs = [doc for doc in yaml.safe_load_all(EXAMPLES.read_text()) if doc]
    secrets = {doc["metadata"]["name"]: doc["stringData"] for doc in docs if doc["kind"] == "Secret"}
    for doc in docs:  # as the operator stores each route: its spec and its callback's secret
        if doc["kind"] != "NotificationRoute":
            continue
        spec = NotificationRouteSpec.model_validate(doc["spec"])
        secret = None
        if spec.callback is not None:
            ref = spec.callback.secret_ref
            secret = secrets[ref.name][ref.key].encode()
            spec = spec.model_copy(
                update={
                    "callback": spec.callback.model_copy(
                        update={"url": f"http://127.0.0.1:{backend_port}/follow-ups"}
                    )
                }
            )
        await events.upsert_route(
            db,
            namespace=NAMESPACE,
            name=doc["metadata"]["name"],
            uid=f"uid-{doc['metadata']['name']}",
            spec=spec,
            callback_secret=secret,
        )
    await keys.sync_api_key(
        db,
        ApiKeySecret(
            namespace=NAMESPACE,
            name="backend",
            uid="uid-backend",
            key_sha256=hashlib.sha256(API_KEY.encode()).hexdigest(),
            channels=("*",),
            rate_per_minute=None,
        ),
    )
    port = free_port()
    settings = WebhookSettings(
        database_url=database_url,
        redis_url=redis_url,
        webhook_port=port,
        channel_cache_seconds=0,
        callback_poll_seconds=0.2,
    )
    env = {
        **os.environ,
        "CLARION_DATABASE_URL": database_url,
        "CLARION_REDIS_URL": redis_url,
        "CLARION_BOT_TOKEN": info.token,
        "CLARION_WORKER_CHANNEL": KEY,
        "CLARION_LOG_FORMAT": "json",
        "CLARION_POD_NAME": "worker-0",
    }
    log = (tmp_path / "worker.log").open("ab")
    worker = await asyncio.create_subprocess_exec(
        WORKER, "--lanes", "instant", env=env, stdout=log, stderr=log
    )
    stop = asyncio.Event()
    bot_settings = BotSettings(
        channel=KEY,
        bot_token=info.token,
        database_url=database_url,
        redis_url=redis_url,
        bot_lease_ttl_ms=2000,
    )
    try:
        async with serve_asgi(create_app(settings), port=port):
            bot = aiogram_bot(emu, info.token)
            try:
                await bot.set_webhook(f"http://127.0.0.1:{port}/tg/webhook/{KEY}", secret_token=SECRET)
            finally:
                await bot.session.close()
            bot_task = asyncio.create_task(run_bot(bot_settings, stop, handle_signals=False))
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {API_KEY}"}
            ) as api:
                try:
                    yield Stack(emu, info.token, api, db, backend)
                finally:
                    stop.set()
                    assert await bot_task == 0
    finally:
        await stop_processes([worker])
        await runner.cleanup()


# The matrix of issue 17: (event, initiator) -> what each role receives (None: nothing, the initiator).
MATRIX = [
    (
        "booking_created",
        "client",
        {
            "client": None,
            "specialist": "New booking: Haircut on 5 Dec 10:00.",
            "admin": "New booking: Haircut on 5 Dec 10:00.",
        },
    ),
    (
        "booking_created",
        "admin",
        {
            "client": "A booking was created for you: Haircut on 5 Dec 10:00.",
            "specialist": "New booking: Haircut on 5 Dec 10:00.",
            "admin": None,
        },
    ),
    (
        "booking_cancelled",
        "client",
        {
            "client": None,
            "specialist": "Booking cancelled: Haircut on 5 Dec 10:00.",
            "admin": "Booking cancelled: Haircut on 5 Dec 10:00.",
        },
    ),
    (
        "booking_cancelled",
        "admin",
        {
            "client": "Your booking for Haircut on 5 Dec 10:00 was cancelled.",
            "specialist": "Booking cancelled: Haircut on 5 Dec 10:00.",
            "admin": None,
        },
    ),
    (
        "booking_cancelled",
        "specialist",
        {
            "client": "Your booking for Haircut on 5 Dec 10:00 was cancelled.",
            "specialist": None,
            "admin": "Booking cancelled: Haircut on 5 Dec 10:00.",
        },
    ),
    (
        "booking_rescheduled",
        "admin",
        {
            "client": "Booking rescheduled: Haircut, now on 5 Dec 10:00.",
            "specialist": "Booking rescheduled: Haircut, now on 5 Dec 10:00.",
            "admin": None,
        },
    ),
]
FOOTER = "\n\nBook Haircut again at example.com"


async def test_each_event_of_the_matrix_notifies_exactly_whom_it_says_and_never_the_initiator(
    stack: Stack,
) -> None:
    expected: dict[int, list[str]] = {chat: [] for chat in CHATS.values()}
    for n, (type_, initiator, texts) in enumerate(MATRIX):
        everyone = {role: {"telegramChatId": chat} for role, chat in CHATS.items()}
        answer = await stack.post(f"evt-{n}", type_, initiator, everyone)
        assert answer.status_code == 202, answer.text
        outcomes = {o["role"]: o for o in answer.json()["recipients"]}
        assert set(outcomes) == set(CHATS)
        for role, text in texts.items():
            if text is None:
                assert outcomes[role]["reason"] == "initiator"
                assert "notification" not in outcomes[role]
            else:
                assert outcomes[role]["notification"]["channel"] == f"{NAMESPACE}/{NAME}"
                assert "reason" not in outcomes[role]
                footer = FOOTER if (type_, initiator) == ("booking_created", "client") else ""
                expected[CHATS[role]].append(text + footer)
    total = sum(len(v) for v in expected.values())
    await until(lambda: sum(len(stack.texts(chat)) for chat in CHATS.values()) >= total, what=f"{total} sent")
    for chat, wanted in expected.items():
        assert Counter(stack.texts(chat)) == Counter(wanted), chat


async def test_booking_done_sends_the_admin_a_card_whose_yes_becomes_booking_confirmed(stack: Stack) -> None:
    answer = await stack.post(
        "done-1",
        "booking_done",
        "system",
        {"client": {"telegramChatId": CLIENT}, "admin": {"telegramChatId": ADMIN}},
    )
    assert answer.status_code == 202, answer.text
    outcomes = {o["role"]: o for o in answer.json()["recipients"]}
    assert outcomes["client"]["reason"] == "no_route"
    assert outcomes["admin"]["route"] == "booking-done"
    [card] = await until(lambda: stack.emu.sent(stack.token, ADMIN), what="the card")
    assert card.text == "Did the client come to Haircut on 5 Dec 10:00?"
    [[yes, no]] = card.reply_markup["inline_keyboard"]
    assert (yes["text"], no["text"]) == ("Yes", "No")
    assert stack.emu.sent(stack.token, CLIENT) == []

    await stack.emu.press_button(stack.token, ADMIN, card.message_id, yes["callback_data"])

    async def follow_ups() -> list[Any]:
        page = await stack.api.get("/api/v1/events", params={"reference": "done-1"})
        assert page.status_code == 200, page.text
        return list(page.json()["items"])

    [follow_up] = await until(follow_ups, what="the follow-up event")
    # the callback: refused once (500), delivered again, signed with the route's secret
    await until(lambda: len(stack.backend.received) >= 2, what="the callback, retried after a 500")
    (first, _, _), (status, headers, body) = stack.backend.received[:2]
    assert (first, status) == (500, 204)
    secret = b"replace-with-a-long-random-string"
    assert headers["X-Clarion-Signature"] == "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    assert headers["X-Clarion-Event"] == "done-1:booking_confirmed"
    pushed = json.loads(body)
    assert (pushed["type"], pushed["reference"], pushed["initiator"]) == (
        "booking_confirmed",
        "done-1",
        {"role": "admin", "id": str(ADMIN)},
    )
    assert follow_up["type"] == "booking_confirmed"
    assert follow_up["id"] == "done-1:booking_confirmed"
    assert follow_up["reference"] == "done-1"
    assert follow_up["initiator"] == {"role": "admin", "id": str(ADMIN)}
    by_id = await stack.api.get("/api/v1/events/done-1:booking_confirmed")
    assert by_id.status_code == 200 and by_id.json()["type"] == "booking_confirmed"

    await stack.emu.press_button(stack.token, ADMIN, card.message_id, yes["callback_data"])  # again: no new
    await stack.emu.press_button(stack.token, ADMIN, card.message_id, no["callback_data"])
    later = await until(lambda: _when_two(follow_ups), what="the second answer")
    assert sorted(e["type"] for e in later) == ["booking_confirmed", "booking_no_show"]


async def _when_two(read: Callable[[], Any]) -> Any:
    found = await read()
    return found if len(found) == 2 else None


async def test_a_recipient_without_an_address_is_told_why_and_a_repeated_event_is_answered_once(
    stack: Stack,
) -> None:
    roles = {"client": {}, "specialist": {"telegramChatId": SPECIALIST}}
    first = await stack.post("evt-repeat", "booking_created", "admin", roles)
    assert first.status_code == 202, first.text
    outcomes = {o["role"]: o for o in first.json()["recipients"]}
    assert outcomes["client"] == {
        "role": "client",
        "id": str(CLIENT),
        "route": "booking-created-by-admin",
        "reason": "no_reachable_channel",
    }
    assert "notification" in outcomes["specialist"]

    again = await stack.post("evt-repeat", "booking_created", "admin", roles)
    assert again.status_code == 200
    assert again.headers["Idempotent-Replay"] == "true"
    assert again.json() == first.json()
    await until(lambda: stack.texts(SPECIALIST), what="the specialist's message")
    rows = await stack.db.fetchval("SELECT count(*) FROM notifications")
    assert rows == 1
    assert stack.texts(SPECIALIST) == ["New booking: Haircut on 5 Dec 10:00."]
