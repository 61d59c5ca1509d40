"""A support desk as it runs, for the Mini App's browser test and `bench/support_reply.py`.

    async with support_stack(emulator, sink, db, database_url, redis_url, logs) as desk:
        thread = await desk.request("mia@example.org", "Mia", "Where is my invoice?")
        ...

What it sets up on the Postgres and Redis it is given, the Telegram emulator and the SMTP sink (both
in the caller's process):

- a bot `@<BOT_USERNAME>` in the emulator, its admin (`ADMIN`), a user who writes to it (`DM_USER`),
  a non-admin (`STRANGER`) and, by default, a support group with the admin in it;
- the channels as the operator writes them (`clarion_operator.store.upsert_channel` with the stored
  config of the spec's section and the Mini App key `webapp_secret`): `shop/desk` (telegram,
  `supportChatId` the group or the admin's private chat, `support: {miniApp: {url, shortName},
  replyEmailChannel: mail}`) and `shop/mail` (email through the sink, no TLS);
- an API key for both; the bot's webhook registered with the emulator (as the operator does);
- real processes, their logs in `logs`: `clarion-webhook` (the API, the Mini App, the bot's updates),
  `clarion-worker` for each channel, and `clarion-bot` for the telegram one.

`MiniApp.url` must be https (the model), and only goes into `web_app` buttons; the browser opens the
page at the webhook's real address, `page_url()`, with initData in the fragment as Telegram launches
a Mini App.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import asyncpg
import httpx
from clarion.db import api_keys as keys
from clarion.keys import channel_key
from clarion.models import ApiKeySecret, EmailSettings
from clarion.models.channel import DEFAULT_ALLOWED_UPDATES, TelegramSettings
from clarion.telegram.webapp import sign_init_data, webapp_secret
from clarion_operator import store
from clarion_operator.channel_logic import stored_config

from clarion_dev.net import free_port
from clarion_dev.smtp_sink import SmtpSink
from clarion_dev.telegram import Emulator
from clarion_dev.telegram.world import SentMessage, StoredMessage
from clarion_dev.testing.processes import stop_processes
from clarion_dev.testing.telegram import aiogram_bot
from clarion_dev.testing.waiting import async_wait_for

BIN = Path(sys.executable).parent
NAMESPACE, DESK, MAIL = "shop", "desk", "mail"
DESK_KEY, MAIL_KEY = channel_key(NAMESPACE, DESK), channel_key(NAMESPACE, MAIL)
BOT_USERNAME = "shop_desk_bot"
SHORT_NAME = "desk"
#: Where the Mini App would be public (an https URL, as BotFather wants); only web_app buttons carry it.
APP_URL = "https://desk.clarion.test/app/"
SUPPORT_GROUP = -100_7001
API_KEY = "support-desk-" + "k" * 40
WEBHOOK_SECRET = "desk-webhook-Secret_0123456789"
SENDER = "Shop support <support@shop.example.org>"
#: What Telegram's clients put beside tgWebAppData when they open a Mini App.
LAUNCH_PARAMS = {"tgWebAppVersion": "8.0", "tgWebAppPlatform": "tdesktop",
                 "tgWebAppThemeParams": json.dumps({"bg_color": "#ffffff", "text_color": "#000000"})}


@dataclass(frozen=True)
class Person:
    """A Telegram user of the desk's world."""

    id: int
    first_name: str
    last_name: str | None
    username: str
    language: str

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}" if self.last_name else self.first_name

    def as_init_data_user(self) -> str:
        """The `user` field of initData, as Telegram writes it (compact JSON)."""
        user: dict[str, Any] = {"id": self.id, "first_name": self.first_name}
        if self.last_name:
            user["last_name"] = self.last_name
        user |= {"username": self.username, "language_code": self.language, "allows_write_to_pm": True}
        return json.dumps(user, separators=(",", ":"), ensure_ascii=False)


ADMIN = Person(5011, "Ada", "Lovelace", "ada_admin", "en")
STRANGER = Person(5012, "Mallory", None, "mallory", "en")
DM_USER = Person(5013, "Ivan", None, "ivan", "en")


@dataclass
class Processes:
    """The desk's server processes (as a Deployment's pods would run), each logging to `<logs>/<name>.log`."""

    env: dict[str, str]
    logs: Path
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    async def start(self, name: str, *argv: str) -> None:
        with (self.logs / f"{name}.log").open("ab") as log:
            self.procs[name] = await asyncio.create_subprocess_exec(
                *argv, env={**self.env, "CLARION_POD_NAME": name, "CLARION_REPLICA_ID": name},
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)

    def log(self, name: str, tail: int = 3000) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-tail:]

    def report(self) -> str:
        """Each process's state and the end of its log (for a failing assertion's message)."""
        return "\n".join(f"--- {name} (exit {proc.returncode}) ---\n{self.log(name)}"
                         for name, proc in self.procs.items())

    def assert_running(self) -> None:
        dead = [name for name, proc in self.procs.items() if proc.returncode is not None]
        assert not dead, f"{', '.join(dead)} exited\n{self.report()}"

    async def stop_all(self) -> None:
        await stop_processes(self.procs.values())


@dataclass
class SupportStack:
    emulator: Emulator
    sink: SmtpSink
    db: asyncpg.Pool
    token: str
    support_chat: int
    base_url: str
    """The webhook's real address, http://127.0.0.1:<port>."""
    http: httpx.AsyncClient
    processes: Processes

    # --- requests and answers, as a backend and the Mini App send them ------------------------------

    async def request(self, email: str, name: str | None, text: str) -> int:
        """`POST /api/v1/requests` (a contact form); the thread's id."""
        body: dict[str, Any] = {"channel": f"{NAMESPACE}/{DESK}", "email": email, "text": text}
        if name is not None:
            body["name"] = name
        answer = await self.http.post("/api/v1/requests", json=body,
                                      headers={"Authorization": f"Bearer {API_KEY}"})
        assert answer.status_code == 202, answer.text
        thread_id: int = answer.json()["id"]
        return thread_id

    async def reply(self, thread_id: int, text: str, user: Person = ADMIN) -> httpx.Response:
        """`POST /app/api/replies` as the page sends it."""
        return await self.http.post("/app/api/replies", json={"thread": thread_id, "text": text},
                                    headers={"Authorization": f"tma {self.init_data(user, thread_id)}"})

    async def notify_email(self, to: str, subject: str, text: str) -> str:
        """`POST /api/v1/notifications` of one email on the desk's email channel; the notification's id."""
        answer = await self.http.post(
            "/api/v1/notifications", headers={"Authorization": f"Bearer {API_KEY}"},
            json={"channel": f"{NAMESPACE}/{MAIL}", "recipient": {"email": to},
                  "content": {"subject": subject, "text": text}})
        assert answer.status_code == 202, answer.text
        notification_id: str = answer.json()["id"]
        return notification_id

    # --- the Mini App as Telegram opens it ---------------------------------------------------------

    def init_data(self, user: Person, thread_id: int | None = None) -> str:
        """initData as Telegram hands it to a Mini App opened from a group's startapp link: the user,
        the chat, `start_param` `t<id>`, `auth_date`, `signature`, and `hash` signed with the bot's token."""
        fields = {"user": user.as_init_data_user(), "chat_instance": "-4719825341924431771",
                  "chat_type": "supergroup" if self.support_chat < 0 else "sender",
                  "auth_date": str(int(time.time())),
                  "signature": secrets.token_urlsafe(64)}
        if thread_id is not None:
            fields["start_param"] = f"t{thread_id}"
        signed = {**fields, "hash": sign_init_data(fields, webapp_secret(self.token))}
        return urlencode(signed, quote_via=quote)

    def page_url(self, user: Person, thread_id: int | None = None) -> str:
        """The Mini App page with `#tgWebAppData=<urlencoded initData>&tgWebAppVersion=…` (Telegram's
        launch parameters)."""
        launch = {"tgWebAppData": self.init_data(user, thread_id), **LAUNCH_PARAMS}
        fragment = urlencode(launch, quote_via=quote)
        return f"{self.base_url}/app/#{fragment}"

    # --- what Telegram shows ------------------------------------------------------------------------

    def posts(self) -> list[SentMessage]:
        """The messages sent to the support chat, as sent (before any edit)."""
        return self.emulator.sent(self.token, self.support_chat)

    def post_of(self, thread_id: int) -> StoredMessage | None:
        """The admin post of a thread as it is now (edits applied), found by its Reply link."""
        link = re.compile(rf"[?&](startapp=t|thread=){thread_id}$")
        for sent in self.posts():
            for button in buttons(sent.reply_markup):
                target = button.get("url") or (button.get("web_app") or {}).get("url") or ""
                if link.search(target):
                    return self.emulator.message(self.token, self.support_chat, sent.message_id)
        return None

    async def wait_post(self, thread_id: int, predicate: Any = bool, *, what: str,
                        timeout: float = 30) -> StoredMessage:  # noqa: ASYNC109 - the wait's deadline
        """The thread's post once `predicate(post)` holds (processes checked alive while waiting)."""
        def check() -> StoredMessage | None:
            self.processes.assert_running()
            post = self.post_of(thread_id)
            return post if post is not None and predicate(post) else None

        try:
            found: StoredMessage = await async_wait_for(check, timeout=timeout, interval=0.02, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.processes.report()}") from None
        return found


def buttons(markup: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The inline buttons of a reply markup, row after row."""
    return [] if markup is None else [b for row in markup.get("inline_keyboard", []) for b in row]


def thread_of(post: SentMessage | StoredMessage) -> int | None:
    """The thread a post's Reply link names (`startapp=t<id>` or `thread=<id>`)."""
    for button in buttons(post.reply_markup):
        target = button.get("url") or (button.get("web_app") or {}).get("url") or ""
        match = re.search(r"[?&](?:startapp=t|thread=)(\d+)$", target)
        if match:
            return int(match.group(1))
    return None


def _world(emulator: Emulator, group: bool) -> tuple[str, int]:
    """The bot, the people and the support chat in the emulator; (token, support chat id)."""
    bot = emulator.add_bot(username=BOT_USERNAME, first_name="Shop desk")
    for person in (ADMIN, STRANGER, DM_USER):
        emulator.add_user(person.id, person.first_name, person.username, person.language)
    if not group:
        return bot.token, ADMIN.id
    emulator.add_group(SUPPORT_GROUP, "Shop support", members=[ADMIN.id, STRANGER.id], admins=[ADMIN.id])
    return bot.token, SUPPORT_GROUP


async def _channels(db: asyncpg.Pool, emulator: Emulator, sink: SmtpSink, token: str, support_chat: int,
                    webhook_url: str, rate_limits: dict[str, int]) -> None:
    """The two channel rows as the operator writes them once it has checked them (ready, bot facts from
    getMe, the webhook secret's digest, the Mini App key)."""
    telegram = TelegramSettings.model_validate({
        "botTokenSecretRef": {"name": "desk-bot", "key": "token"}, "apiBaseUrl": emulator.base_url,
        "webhook": {"url": webhook_url}, "rateLimits": rate_limits, "adminChatIds": [ADMIN.id],
        "supportChatId": support_chat, "defaultLanguage": "en",
        "support": {"miniApp": {"url": APP_URL, "shortName": SHORT_NAME}, "replyEmailChannel": MAIL}})
    email = EmailSettings.model_validate({"host": "127.0.0.1", "port": sink.port, "tls": "none",
                                          "from": SENDER, "ratePerSecond": 1000})
    await store.upsert_channel(
        db, namespace=NAMESPACE, name=DESK, type_="telegram", uid="uid-desk", bot_id=int(token.split(":")[0]),
        bot_username=BOT_USERNAME, api_base_url=emulator.base_url,
        webhook_secret_sha256=hashlib.sha256(WEBHOOK_SECRET.encode()).hexdigest(),
        config=stored_config(telegram), webapp_secret=webapp_secret(token), templates=[], ready=True)
    await store.upsert_channel(
        db, namespace=NAMESPACE, name=MAIL, type_="email", uid="uid-mail", bot_id=None, bot_username=None,
        api_base_url=None, webhook_secret_sha256=None, config=stored_config(email), templates=[], ready=True)
    await keys.sync_api_key(db, ApiKeySecret(
        namespace=NAMESPACE, name="website", uid="uid-website",
        key_sha256=hashlib.sha256(API_KEY.encode()).hexdigest(), channels=(DESK, MAIL), rate_per_minute=None))


@asynccontextmanager
async def support_stack(emulator: Emulator, sink: SmtpSink, db: asyncpg.Pool, database_url: str,
                        redis_url: str, logs: Path, *, group: bool = True, script_url: str = "",
                        rate_limits: dict[str, int] | None = None,
                        env: dict[str, str] | None = None) -> AsyncIterator[SupportStack]:
    """The desk running (module doc). `group=False`: the support chat is the admin's private chat (its
    posts carry web_app buttons). `script_url`: the webhook's CLARION_WEBAPP_SCRIPT_URL (empty: none).
    `rate_limits`: the telegram channel's `rateLimits`. `env`: more CLARION_* settings for every process."""
    token, support_chat = _world(emulator, group)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    await _channels(db, emulator, sink, token, support_chat, base_url, rate_limits or {})
    await asyncio.to_thread(logs.mkdir, parents=True, exist_ok=True)
    processes = Processes({**os.environ, "CLARION_DATABASE_URL": database_url, "CLARION_REDIS_URL": redis_url,
                           "CLARION_BOT_TOKEN": token, "CLARION_LOG_FORMAT": "json",
                           "CLARION_LOG_LEVEL": "INFO", "CLARION_METRICS_PORT": "0",
                           "CLARION_WEBAPP_SCRIPT_URL": script_url, **(env or {})}, logs)
    http = httpx.AsyncClient(base_url=base_url, timeout=30)
    try:
        await processes.start("webhook", sys.executable, "-m", "clarion_webhook.main", "--host", "127.0.0.1",
                              "--port", str(port))

        async def listening() -> bool | None:
            processes.assert_running()
            try:
                answer = await http.get("/healthz")
            except httpx.TransportError:
                return None
            return True if answer.status_code == 200 else None

        ready: bool = await async_wait_for(listening, timeout=60, interval=0.1,
                                           what="clarion-webhook listening")
        assert ready
        bot = aiogram_bot(emulator, token)
        try:  # what the operator does for a channel with spec.telegram.webhook
            await bot.set_webhook(f"{base_url}/tg/webhook/{DESK_KEY}", secret_token=WEBHOOK_SECRET,
                                  allowed_updates=list(DEFAULT_ALLOWED_UPDATES))
        finally:
            await bot.session.close()
        await processes.start("worker-desk", str(BIN / "clarion-worker"), "--channel", DESK_KEY)
        await processes.start("worker-mail", str(BIN / "clarion-worker"), "--channel", MAIL_KEY)
        await processes.start("bot", str(BIN / "clarion-bot"), "--channel", DESK_KEY)
        yield SupportStack(emulator, sink, db, token, support_chat, base_url, http, processes)
    finally:
        await http.aclose()
        await processes.stop_all()
