"""Issue 17's acceptance on a cluster: the booking examples applied as a person applies them, and the
routing matrix, web push and the booking_done card run by Clarion's own processes.

- `manifests/examples/telegram-channel.yaml`, `webpush-channel.yaml` and `booking-routes.yaml` are
  applied with kubectl to a real kube-apiserver, changed only where a local run must differ (the
  emulator's URL and bot token, this API's URL, a fresh VAPID key, the backend's callback URL, no
  support chat, one worker pod per lane);
- `clarion-operator` reconciles them: channels and routes Ready, the API key Secret synced, worker and
  bot Deployments created, the bot's webhook registered with the Telegram emulator;
- the pod runner runs those Deployments as `clarion-worker` and `clarion-bot` processes under the
  namespace's own Postgres role and Redis user;
- the webhook app (uvicorn) serves the API; the push-service stand-in serves https, as push services do.

What is asserted is what each person received (the emulator's and the push stand-in's records), the
API's answers and the callback the backend received.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from aiohttp import web
from clarion import webpush
from clarion_dev.cluster import ControlPlane
from clarion_dev.net import free_port
from clarion_dev.podrunner import PodRunner
from clarion_dev.push_service import PushService
from clarion_dev.smtp_sink import self_signed_cert
from clarion_dev.telegram import Emulator
from clarion_dev.testing.cluster import Kubectl
from clarion_dev.testing.operator import Operator
from clarion_dev.testing.servers import serve_asgi
from clarion_dev.testing.waiting import async_wait_for
from clarion_webhook.app import create_app
from clarion_webhook.settings import WebhookSettings
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.test_events_end_to_end import DATA, FOOTER, MATRIX, Backend

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"
CLIENT, SPECIALIST, ADMIN = 701, 702, 703
CHATS = {"client": CLIENT, "specialist": SPECIALIST, "admin": ADMIN}
API_KEY = "booking-backend-" + "b" * 32
ONE_POD = {"minReplicas": 1, "maxReplicas": 1,
           "lanes": {lane: {"minReplicas": 0, "maxReplicas": 0}
                     for lane in ("groupPosts", "groupMaintenance")}}


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path)


@pytest.fixture
async def push_service(tls: tuple[Path, Path]) -> AsyncIterator[PushService]:
    service = PushService(tls=tls)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
def pod_runner(control_plane: ControlPlane, kube_namespace: str, tmp_path: Path,
               tls: tuple[Path, Path]) -> Iterator[PodRunner]:
    """The namespace's pods as processes that trust the push stand-in's certificate (and only it)."""
    runner = PodRunner(control_plane.kubeconfig, [kube_namespace], logs_dir=tmp_path / "pod-logs",
                       extra_env={"SSL_CERT_FILE": str(tls[0])})
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()


def _examples(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((EXAMPLES / name).read_text()) if doc]


def _vapid_private_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return webpush.b64url_encode(key.private_numbers().private_value.to_bytes(32, "big"))


def _local(docs: list[dict[str, Any]], emulator: Emulator, token: str, api_port: int,
           backend_port: int) -> list[dict[str, Any]]:
    """The examples with what a local run must change; everything else as written."""
    for doc in docs:
        kind, spec = doc["kind"], doc.get("spec") or {}
        if kind == "Secret" and doc["metadata"]["name"] == "clarion-bot-token":
            doc["stringData"]["token"] = token
        elif kind == "Secret" and doc["metadata"]["name"] == "clarion-vapid":
            doc["stringData"]["private"] = _vapid_private_key()
        elif kind == "NotificationChannel" and spec["type"] == "telegram":
            telegram = spec["telegram"]
            telegram["apiBaseUrl"] = emulator.base_url
            telegram["webhook"]["url"] = f"http://127.0.0.1:{api_port}"
            telegram["adminChatIds"] = [ADMIN]
            telegram.pop("supportChatId", None)
            telegram["bot"]["replicas"] = 1
            spec["workers"] = {"autoscaling": ONE_POD}
        elif kind == "NotificationChannel":
            spec["workers"] = {"autoscaling": ONE_POD}
        elif kind == "NotificationRoute" and "callback" in spec:
            spec["callback"]["url"] = f"http://127.0.0.1:{backend_port}/follow-ups"
    return docs


async def _until(what: str, check: Any, operator: Operator, timeout: float = 90) -> Any:
    try:
        return await async_wait_for(check, timeout=timeout, interval=0.2, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- operator log ---\n{operator.log()}") from None


def _ready(kubectl: Kubectl, resource: str, name: str) -> bool:
    obj = kubectl.get(resource, name) or {}
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (obj.get("status") or {}).get("conditions") or ())


async def test_the_booking_examples_route_events_to_telegram_and_web_push_and_the_card_calls_back(
    telegram_emulator: Emulator, push_service: PushService, operator: Operator, pod_runner: PodRunner,
    control_plane: ControlPlane, kube_namespace: str, db: asyncpg.Pool, database_url: str, redis_url: str,
) -> None:
    emu = telegram_emulator
    bot = emu.add_bot(username="salon_bot")
    for user, name in ((CLIENT, "Cleo"), (SPECIALIST, "Sam"), (ADMIN, "Ada")):
        emu.add_user(user, name, None, "en")
    backend = Backend()
    receiver = web.Application()
    receiver.router.add_post("/follow-ups", backend.handle)
    runner = web.AppRunner(receiver)
    await runner.setup()
    backend_port, api_port = free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", backend_port).start()
    kubectl = Kubectl(control_plane, kube_namespace)
    try:
        docs = [*_examples("telegram-channel.yaml"), *_examples("webpush-channel.yaml"),
                *_examples("booking-routes.yaml")]
        kubectl.run("apply", "-f", "-", input_text="\n---\n".join(
            json.dumps(doc) for doc in _local(docs, emu, bot.token, api_port, backend_port)))
        kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {
            "name": "booking-backend", "labels": {"clarion.io/api-key": "true"},
            "annotations": {"clarion.io/channels": "*"}},
            "data": {"key": base64.b64encode(API_KEY.encode()).decode()}})

        routes = [d["metadata"]["name"] for d in docs if d["kind"] == "NotificationRoute"]
        for name in ("clarion-bot", "clarion-push"):
            await _until(f"channel {name} Ready", lambda n=name: _ready(kubectl, "notificationchannels", n),
                         operator)
        for name in routes:
            await _until(f"route {name} Ready", lambda n=name: _ready(kubectl, "notificationroutes", n),
                         operator)
        await _until("the API key synced", lambda: db.fetchval(
            "SELECT true FROM api_keys WHERE namespace = $1 AND name = 'booking-backend'", kube_namespace),
            operator)
        await _until("the bot's webhook registered", lambda: emu.webhook(bot.token)["url"], operator)

        settings = WebhookSettings(database_url=database_url, redis_url=redis_url, webhook_port=api_port,
                                   channel_cache_seconds=0, callback_poll_seconds=0.2)
        async with serve_asgi(create_app(settings), port=api_port), httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{api_port}",
                headers={"Authorization": f"Bearer {API_KEY}"}) as api:
            await _matrix(api, emu, bot.token, kube_namespace, operator)
            await _web_push(api, db, push_service, kube_namespace, operator)
            await _card(api, emu, bot.token, backend, operator)
    finally:
        await runner.cleanup()
    assert "Traceback" not in operator.log(100_000)


async def _post(api: httpx.AsyncClient, event_id: str, type_: str, initiator: str,
                recipients: list[dict[str, Any]]) -> dict[str, Any]:
    answer = await api.post("/api/v1/events", json={
        "type": type_, "id": event_id, "initiator": {"role": initiator, "id": str(CHATS.get(initiator, 0))},
        "recipients": recipients, "data": DATA})
    assert answer.status_code == 202, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def _matrix(api: httpx.AsyncClient, emu: Emulator, token: str, namespace: str,
                  operator: Operator) -> None:
    """Every row of the matrix: exactly what it says reaches each person on Telegram, never the
    initiator."""
    expected: dict[int, list[str]] = {chat: [] for chat in CHATS.values()}
    for n, (type_, initiator, texts) in enumerate(MATRIX):
        everyone = [{"role": role, "id": str(chat), "telegramChatId": chat} for role, chat in CHATS.items()]
        answer = await _post(api, f"m-{n}", type_, initiator, everyone)
        outcomes = {o["role"]: o for o in answer["recipients"]}
        for role, text in texts.items():
            if text is None:
                assert outcomes[role]["reason"] == "initiator", outcomes[role]
            else:
                assert outcomes[role]["notification"]["channel"] == f"{namespace}/clarion-bot"
                footer = FOOTER if (type_, initiator) == ("booking_created", "client") else ""
                expected[CHATS[role]].append(text + footer)

    def received(chat: int) -> list[str]:
        return [m.text for m in emu.sent(token, chat)]

    total = sum(len(v) for v in expected.values())
    await _until(f"{total} messages in Telegram",
                 lambda: sum(len(received(c)) for c in CHATS.values()) >= total, operator)
    await asyncio.sleep(1)  # nothing more arrives
    for chat, wanted in expected.items():
        assert Counter(received(chat)) == Counter(wanted), chat


async def _web_push(api: httpx.AsyncClient, db: asyncpg.Pool, push: PushService, namespace: str,
                    operator: Operator) -> None:
    """A client without a Telegram id but with a browser subscribed gets web push; one with neither is
    told why; a subscription the push service answers 410 for is removed."""
    browser = push.subscribe()
    registered = await api.post("/api/v1/push-subscriptions", json={
        "channel": f"{namespace}/clarion-push", "recipient": "client-web", "subscription": browser.to_json()})
    assert registered.status_code == 201, registered.text
    subscription = registered.json()["id"]
    body = await _post(api, "web-1", "booking_created", "admin", [
        {"role": "client", "id": "client-web", "pushSubscriptionId": subscription, "language": "ru"},
        {"role": "client", "id": "client-none"},
    ])
    pushed, unreachable = body["recipients"]
    assert pushed["notification"]["channel"] == f"{namespace}/clarion-push"
    assert unreachable["reason"] == "no_reachable_channel" and "notification" not in unreachable
    [message] = await _until("the event's web push", lambda: push.received(browser), operator)
    assert message.json()["title"] == "Для вас создана запись: Haircut 5 Dec 10:00."
    assert message.urgency == "normal" and message.ttl == 86400
    assert message.vapid_subject == "mailto:ops@example.com"

    # the backend's own web push, through the notifications API
    direct = await api.post("/api/v1/notifications", json={
        "channel": f"{namespace}/clarion-push", "recipient": {"pushSubscriptionId": subscription},
        "content": {"subject": "Salon", "text": "We open at 9 tomorrow", "url": "https://salon.example/"}})
    assert direct.status_code == 202, direct.text
    await _until("the direct web push", lambda: len(push.received(browser)) == 2, operator)
    assert push.received(browser)[1].json() == {"title": "Salon", "body": "We open at 9 tomorrow",
                                                "url": "https://salon.example/", "id": direct.json()["id"]}

    browser.answer(410)  # the browser unsubscribed: the push service says Gone
    await _post(api, "web-2", "booking_rescheduled", "admin", [
        {"role": "client", "id": "client-web", "pushSubscriptionId": subscription}])
    await _until("the subscription removed after 410", lambda: db.fetchval(
        "SELECT count(*) = 0 FROM push_subscriptions WHERE id = $1::uuid", subscription), operator)
    body = await _post(api, "web-3", "booking_cancelled", "admin", [
        {"role": "client", "id": "client-web", "pushSubscriptionId": subscription}])
    assert body["recipients"][0]["reason"] == "no_reachable_channel"
    assert len(push.received(browser)) == 2


async def _card(api: httpx.AsyncClient, emu: Emulator, token: str, backend: Backend,
                operator: Operator) -> None:
    """booking_done: the admin's card; Yes, pressed in Telegram, reaches the bot pod through the
    webhook and becomes booking_confirmed, readable by reference and POSTed, signed, to the backend."""
    before = len(emu.sent(token, ADMIN))
    await _post(api, "done-1", "booking_done", "system", [
        {"role": "client", "id": str(CLIENT), "telegramChatId": CLIENT},
        {"role": "admin", "id": str(ADMIN), "telegramChatId": ADMIN}])
    card = (await _until("the card", lambda: emu.sent(token, ADMIN)[before:], operator))[0]
    assert card.text == "Did the client come to Haircut on 5 Dec 10:00?"
    [[yes, _]] = card.reply_markup["inline_keyboard"]
    await emu.press_button(token, ADMIN, card.message_id, yes["callback_data"])

    async def follow_ups() -> list[Any] | None:
        page = await api.get("/api/v1/events", params={"reference": "done-1"})
        assert page.status_code == 200, page.text
        return list(page.json()["items"]) or None

    [follow_up] = await _until("the follow-up event", follow_ups, operator)
    assert follow_up["type"] == "booking_confirmed"
    assert follow_up["initiator"] == {"role": "admin", "id": str(ADMIN)}
    await _until("the callback, retried after a 500", lambda: len(backend.received) >= 2, operator)
    (first, _, _), (status, headers, body) = backend.received[:2]
    assert (first, status) == (500, 204)
    secret = b"replace-with-a-long-random-string"
    assert headers["X-Clarion-Signature"] == "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    assert json.loads(body)["type"] == "booking_confirmed"
