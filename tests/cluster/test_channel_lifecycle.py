"""A NotificationChannel applied to a real kube-apiserver, reconciled by the `clarion-operator` process.

The emulator stands in for Telegram; the operator runs as a subprocess with the control plane's
kubeconfig, a fresh Postgres database and Redis, watching only the test's namespace.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from clarion.telegram.webapp import webapp_secret
from clarion_dev.cluster import ControlPlane
from clarion_dev.smtp_sink import SmtpSink
from clarion_dev.telegram import Emulator
from clarion_dev.testing.cluster import Kubectl
from clarion_dev.testing.operator import Operator, OperatorFactory
from clarion_dev.testing.waiting import async_wait_for, wait_for

pytestmark = pytest.mark.cluster

GROUP = "clarion.io"
HOOK_BASE = "https://hooks.clarion.test/"


@pytest.fixture
def kubectl(control_plane: ControlPlane, kube_namespace: str) -> Kubectl:
    return Kubectl(control_plane, kube_namespace)


def _secret(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}


def _channel(name: str, emulator: Emulator, token_secret: str = "bot-token") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "NotificationChannel",
        "metadata": {"name": name},
        "spec": {
            "type": "telegram",
            "telegram": {
                "botTokenSecretRef": {"name": token_secret, "key": "token"},
                "apiBaseUrl": emulator.base_url,
                "webhook": {"url": HOOK_BASE, "maxConnections": 7},
                "bot": {"replicas": 1},
            },
        },
    }


def _condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or ():
        if cond["type"] == kind:
            return dict(cond)
    return {}


async def _wait_condition(kubectl: Kubectl, operator: Operator, name: str, kind: str, status: str,
                          reason: str | None = None) -> dict[str, Any]:
    def matches() -> Any:
        obj = kubectl.get(f"notificationchannels.{GROUP}", name)
        cond = _condition(obj, kind)
        if cond.get("status") == status and (reason is None or cond.get("reason") == reason):
            return obj
        return None

    try:
        found: dict[str, Any] = await async_wait_for(matches, timeout=60, interval=0.5,
                                                     what=f"{name} {kind}={status}")
        return found
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- operator log ---\n{operator.log()}") from None


async def test_applied_channel_registers_its_webhook_and_becomes_ready_then_deletion_removes_it(
    telegram_emulator: Emulator, operator: Operator, kubectl: Kubectl, kube_namespace: str, db: asyncpg.Pool,
) -> None:
    bot = telegram_emulator.add_bot(username="shop_news_bot")
    kubectl.apply(_secret("bot-token", token=bot.token))
    kubectl.apply(_channel("shop", telegram_emulator))

    obj = await _wait_condition(kubectl, operator, "shop", "Ready", "True")

    expected_url = f"https://hooks.clarion.test/tg/webhook/{kube_namespace}.shop"
    status = obj["status"]
    assert status["botUsername"] == "shop_news_bot"
    assert status["botId"] == bot.id
    assert status["webhookUrl"] == expected_url
    assert _condition(obj, "CredentialsValid")["status"] == "True"
    assert _condition(obj, "WebhookRegistered")["status"] == "True"
    hook = telegram_emulator.bot(bot.token).webhook
    assert hook is not None and hook.url == expected_url and hook.max_connections == 7
    generated = kubectl.get("secret", "shop-webhook-secret")
    assert generated is not None
    assert generated["metadata"]["ownerReferences"][0]["name"] == "shop"
    secret_token = base64.b64decode(generated["data"]["token"]).decode()
    assert hook.secret_token == secret_token and len(secret_token) == 64
    row = await db.fetchrow("SELECT * FROM channels WHERE namespace = $1 AND name = 'shop'", kube_namespace)
    assert row["ready"] and row["bot_username"] == "shop_news_bot" and row["type"] == "telegram"
    assert row["webhook_secret_sha256"] == hashlib.sha256(secret_token.encode()).hexdigest()
    assert row["api_base_url"] == telegram_emulator.base_url
    assert "botTokenSecretRef" not in row["config"]
    assert row["webapp_secret"] == webapp_secret(bot.token)  # the Mini App's key; never the token
    deployment = kubectl.get("deployment", "shop-bot")
    assert deployment is not None
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["clarion-bot", "--channel", f"{kube_namespace}.shop"]
    assert kubectl.get("secret", "clarion-runtime") is not None

    kubectl.run("delete", f"notificationchannels.{GROUP}", "shop", "--wait=false")
    await async_wait_for(lambda: kubectl.get(f"notificationchannels.{GROUP}", "shop") is None,
                         timeout=60, interval=0.5, what="the channel to go away")
    assert telegram_emulator.webhook(bot.token)["url"] == ""
    deleted = await db.fetchrow(
        "SELECT ready, deleted_at FROM channels WHERE namespace = $1 AND name = 'shop'", kube_namespace)
    assert deleted["deleted_at"] is not None and not deleted["ready"]


async def test_bad_token_gives_invalid_token_and_fixing_the_secret_makes_the_channel_ready(
    telegram_emulator: Emulator, operator: Operator, kubectl: Kubectl,
) -> None:
    kubectl.apply(_secret("bot-token", token="123456:not-a-token-telegram-knows-about-xyz"))
    kubectl.apply(_channel("broken", telegram_emulator))

    obj = await _wait_condition(kubectl, operator, "broken", "Ready", "False", "InvalidToken")

    cond = _condition(obj, "CredentialsValid")
    assert (cond["status"], cond["reason"]) == ("False", "InvalidToken")
    assert "401" in cond["message"]
    assert kubectl.get("deployment", "broken-bot") is None
    assert operator.proc is not None and operator.proc.poll() is None

    bot = telegram_emulator.add_bot(username="fixed_bot")
    kubectl.apply(_secret("bot-token", token=bot.token))
    fixed = await _wait_condition(kubectl, operator, "broken", "Ready", "True")
    assert fixed["status"]["botUsername"] == "fixed_bot"


CHANNEL_CRD = Path(__file__).resolve().parents[2] / "crds" / f"{GROUP}_notificationchannels.yaml"


@pytest.fixture
def crd_without_type_rules(control_plane: ControlPlane, kubectl: Kubectl) -> Iterator[None]:
    """The NotificationChannel CRD without the spec's CEL rules, as on a cluster whose API server
    does not evaluate them: a spec the models refuse then reaches the operator. Restored afterwards."""
    probe = {"apiVersion": f"{GROUP}/v1alpha1", "kind": "NotificationChannel", "metadata": {"name": "probe"},
             "spec": {"type": "email"}}

    def accepted() -> bool:
        dry = control_plane.kubectl("-n", kubectl.namespace, "apply", "--dry-run=server", "-f", "-",
                                    check=False, input_text=json.dumps(probe))
        return dry.returncode == 0

    path = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/x-kubernetes-validations"
    control_plane.kubectl("patch", "crd", f"notificationchannels.{GROUP}", "--type=json",
                          "-p", json.dumps([{"op": "remove", "path": path}]))
    try:
        wait_for(accepted, timeout=30, interval=0.2, what="the CRD without its rules")
        yield
    finally:
        control_plane.apply_manifests([CHANNEL_CRD])
        wait_for(lambda: not accepted(), timeout=30, interval=0.2, what="the CRD with its rules again")


@pytest.mark.usefixtures("crd_without_type_rules")
async def test_spec_the_models_refuse_is_reported_as_invalid_and_fixing_it_recovers_the_channel(
    telegram_emulator: Emulator, operator: Operator, kubectl: Kubectl, kube_namespace: str, db: asyncpg.Pool,
) -> None:
    bot = telegram_emulator.add_bot(username="typed_bot")
    kubectl.apply(_secret("bot-token", token=bot.token))
    wrong = _channel("typed", telegram_emulator)
    wrong["spec"]["email"] = {"host": "smtp.example.com", "from": "news@example.com"}
    kubectl.apply(wrong)

    obj = await _wait_condition(kubectl, operator, "typed", "Ready", "False", "InvalidSpec")

    message = _condition(obj, "Ready")["message"]
    assert message.startswith("spec: ") and "email may only be set when type is email" in message
    assert kubectl.get("deployment", "typed-bot") is None
    assert await db.fetchval("SELECT count(*) FROM channels WHERE namespace = $1", kube_namespace) == 0
    assert telegram_emulator.bot(bot.token).webhook is None
    assert operator.proc is not None and operator.proc.poll() is None
    events = kubectl.run("get", "events", "--field-selector", "involvedObject.name=typed", "-o", "json")
    assert "InvalidSpec" in {e["reason"] for e in json.loads(events)["items"]}

    kubectl.apply(_channel("typed", telegram_emulator))
    fixed = await _wait_condition(kubectl, operator, "typed", "Ready", "True")
    assert fixed["status"]["botUsername"] == "typed_bot"
    assert fixed["status"]["observedGeneration"] == fixed["metadata"]["generation"]


async def test_missing_token_secret_is_reported_and_retried(
    telegram_emulator: Emulator, operator: Operator, kubectl: Kubectl,
) -> None:
    kubectl.apply(_channel("early", telegram_emulator, token_secret="later"))

    obj = await _wait_condition(kubectl, operator, "early", "Ready", "False", "SecretNotFound")
    assert "later" in _condition(obj, "Ready")["message"]

    bot = telegram_emulator.add_bot()
    kubectl.apply(_secret("later", token=bot.token))
    await _wait_condition(kubectl, operator, "early", "Ready", "True")



async def test_referenced_webhook_secret_is_registered_with_telegram(
    telegram_emulator: Emulator, operator: Operator, kubectl: Kubectl, kube_namespace: str, db: asyncpg.Pool,
) -> None:
    bot = telegram_emulator.add_bot()
    kubectl.apply(_secret("bot-token", token=bot.token))
    kubectl.apply(_secret("hook", value="my-own_secret-token-123"))
    channel = _channel("own", telegram_emulator)
    channel["spec"]["telegram"]["webhook"]["secretTokenSecretRef"] = {"name": "hook", "key": "value"}
    kubectl.apply(channel)

    await _wait_condition(kubectl, operator, "own", "WebhookRegistered", "True")

    hook = telegram_emulator.bot(bot.token).webhook
    assert hook is not None and hook.secret_token == "my-own_secret-token-123"
    assert kubectl.get("secret", "own-webhook-secret") is None
    digest = await db.fetchval(
        "SELECT webhook_secret_sha256 FROM channels WHERE namespace = $1 AND name = 'own'", kube_namespace)
    assert digest == hashlib.sha256(b"my-own_secret-token-123").hexdigest()


@pytest.mark.smtp_sink(starttls=True, require_auth=True, users={"mailer": "s3cret"})
async def test_email_channel_is_checked_with_an_smtp_handshake(
    smtp_sink: SmtpSink, operator_factory: OperatorFactory, kube_namespace: str, kubectl: Kubectl,
    db: asyncpg.Pool,
) -> None:
    assert smtp_sink.cert_path is not None
    op = operator_factory({"CLARION_SMTP_CA_FILE": str(smtp_sink.cert_path)})
    try:
        kubectl.apply(_secret("smtp-good", username="mailer", password="s3cret"))
        kubectl.apply(_secret("smtp-bad", username="mailer", password="wrong"))
        channels = (("mail", "smtp-good", smtp_sink.port), ("mail-bad", "smtp-bad", smtp_sink.port),
                    ("mail-down", "smtp-good", 1))
        for name, secret, port in channels:
            kubectl.apply({
                "apiVersion": f"{GROUP}/v1alpha1", "kind": "NotificationChannel", "metadata": {"name": name},
                "spec": {"type": "email", "email": {
                    "host": "localhost", "port": port, "tls": "starttls",
                    "from": "Clarion <news@clarion.test>",
                    "usernameSecretRef": {"name": secret, "key": "username"},
                    "passwordSecretRef": {"name": secret, "key": "password"}}},
            })

        good = await _wait_condition(kubectl, op, "mail", "Ready", "True")
        bad = await _wait_condition(kubectl, op, "mail-bad", "Ready", "False", "AuthenticationFailed")
        down = await _wait_condition(kubectl, op, "mail-down", "Ready", "False", "SmtpUnreachable")
    finally:
        op.stop()

    assert _condition(good, "CredentialsValid")["reason"] == "HandshakeSucceeded"
    assert "535" in _condition(bad, "CredentialsValid")["message"]
    assert _condition(down, "CredentialsValid")["status"] == "Unknown"
    rows = await db.fetch("SELECT name, type, ready, config FROM channels WHERE namespace = $1 ORDER BY name",
                          kube_namespace)
    assert [(r["name"], r["type"], r["ready"]) for r in rows] == [
        ("mail", "email", True), ("mail-bad", "email", False), ("mail-down", "email", False)]
    assert rows[0]["config"]["host"] == "localhost" and "passwordSecretRef" not in rows[0]["config"]


async def test_a_broken_template_is_reported_on_the_channel_and_stored_as_broken_until_it_is_fixed(
    telegram_emulator: Emulator, operator: Operator, kubectl: Kubectl, kube_namespace: str, db: asyncpg.Pool,
) -> None:
    bot = telegram_emulator.add_bot(username="templated_bot")
    kubectl.apply(_secret("bot-token", token=bot.token))
    channel = _channel("shop", telegram_emulator)
    good = {"name": "shipped", "variables": [{"name": "orderId"}],
            "variants": [{"language": "en", "text": "Order {{ orderId }} shipped"}]}
    broken = {"name": "broken", "variables": [{"name": "orderId"}],
              "variants": [{"language": "en", "text": "Order\n{{ orderId.__class__ }}"}]}
    channel["spec"]["templates"] = [good, broken]
    kubectl.apply(channel)

    obj = await _wait_condition(kubectl, operator, "shop", "TemplatesValid", "False", "TemplateInvalid")

    assert _condition(obj, "TemplatesValid")["message"] == (
        "template broken: language en text, line 2: Getattr is not allowed in a template")
    assert _condition(obj, "Ready")["status"] == "True"  # everything else still goes
    stored = await db.fetchval("SELECT templates FROM channels WHERE namespace = $1 AND name = 'shop'",
                               kube_namespace)
    assert [(t["name"], t["error"] is None) for t in stored] == [("shipped", True), ("broken", False)]
    events = kubectl.run("get", "events", "--field-selector", "involvedObject.name=shop", "-o", "json")
    assert "TemplateInvalid" in {e["reason"] for e in json.loads(events)["items"]}

    broken["variants"] = [{"language": "en", "text": "Order {{ orderId }} is late"}]
    kubectl.apply(channel)
    await _wait_condition(kubectl, operator, "shop", "TemplatesValid", "True", "TemplatesCompiled")
    stored = await db.fetchval("SELECT templates FROM channels WHERE namespace = $1 AND name = 'shop'",
                               kube_namespace)
    assert [t["error"] for t in stored] == [None, None]
    assert stored[1]["template"]["variants"][0]["text"] == "Order {{ orderId }} is late"


# RFC 8291's example application server key: a valid P-256 private key and its public point.
VAPID_PRIVATE = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"
VAPID_PUBLIC = "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"


def _webpush_channel(name: str, secret: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "NotificationChannel", "metadata": {"name": name},
            "spec": {"type": "webpush", "webpush": {
                "vapidPrivateKeySecretRef": {"name": secret, "key": "private"},
                "subject": "mailto:ops@clarion.test", "urgency": "high"}}}


async def test_webpush_channel_with_a_valid_key_is_ready_shows_its_public_key_and_runs_workers(
    operator: Operator, kubectl: Kubectl, kube_namespace: str, db: asyncpg.Pool,
) -> None:
    kubectl.apply(_secret("vapid", private=VAPID_PRIVATE))
    kubectl.apply(_webpush_channel("push", "vapid"))

    ready = await _wait_condition(kubectl, operator, "push", "Ready", "True")

    assert _condition(ready, "CredentialsValid")["reason"] == "VapidKeyValid"
    assert ready["status"]["vapidPublicKey"] == VAPID_PUBLIC
    row = await db.fetchrow("SELECT type, ready, config FROM channels WHERE namespace = $1 AND name = 'push'",
                            kube_namespace)
    assert (row["type"], row["ready"]) == ("webpush", True)
    assert row["config"] == {"subject": "mailto:ops@clarion.test", "ttlSeconds": 86400, "urgency": "high",
                             "vapidPublicKey": VAPID_PUBLIC}
    for lane in ("instant", "bulk"):
        name = f"push-workers-{lane}"
        deployment = wait_for(functools.partial(kubectl.get, "deployments.apps", name), timeout=30, what=name)
        env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "CLARION_VAPID_PRIVATE_KEY",
                "valueFrom": {"secretKeyRef": {"name": "vapid", "key": "private"}}} in env
        assert VAPID_PRIVATE not in json.dumps(deployment)


async def test_webpush_channel_with_a_bad_key_says_why_and_recovers_once_the_secret_is_fixed(
    operator: Operator, kubectl: Kubectl, kube_namespace: str, db: asyncpg.Pool,
) -> None:
    kubectl.apply(_secret("vapid-bad", private="not-a-key"))
    kubectl.apply(_webpush_channel("push-bad", "vapid-bad"))

    bad = await _wait_condition(kubectl, operator, "push-bad", "CredentialsValid", "False", "InvalidVapidKey")

    message = _condition(bad, "CredentialsValid")["message"]
    assert "vapid-bad" in message and "32-byte P-256 private key" in message and "not-a-key" not in message
    assert _condition(bad, "Ready")["reason"] == "InvalidVapidKey"
    assert not (bad.get("status") or {}).get("vapidPublicKey")
    assert kubectl.get("deployments.apps", "push-bad-workers-instant") is None

    kubectl.apply(_secret("vapid-bad", private=VAPID_PRIVATE))
    fixed = await _wait_condition(kubectl, operator, "push-bad", "Ready", "True")
    assert fixed["status"]["vapidPublicKey"] == VAPID_PUBLIC
