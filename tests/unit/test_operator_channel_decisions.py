"""NotificationChannel decisions: webhook URL, stored config, conditions, check schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from clarion.models import ChannelReason, NotificationChannelSpec, NotificationChannelStatus, TelegramSettings
from clarion_operator.channel_logic import (
    ChannelCheck,
    Verdict,
    autoscaler_verdict,
    channel_conditions,
    channel_status,
    check_due,
    stored_config,
    stored_templates,
    webhook_endpoint,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
OK = Verdict.passed(ChannelReason.TOKEN_ACCEPTED, "fine")


def test_webhook_url_is_the_base_url_plus_the_channel_path() -> None:
    assert webhook_endpoint("https://hooks.example.com/", "prod", "shop") == (
        "https://hooks.example.com/tg/webhook/prod.shop")
    assert webhook_endpoint("http://127.0.0.1:8080/base", "ns", "c") == "http://127.0.0.1:8080/base/tg/webhook/ns.c"


def test_stored_config_has_no_secret_references_and_every_default() -> None:
    telegram = TelegramSettings.model_validate({
        "botTokenSecretRef": {"name": "bot"}, "adminChatIds": [1],
        "webhook": {"url": "https://x.example", "secretTokenSecretRef": {"name": "hook"},
                    "maxConnections": 5}})
    config = stored_config(telegram)
    assert config["adminChatIds"] == [1]
    assert config["webhook"]["url"] == "https://x.example" and config["webhook"]["maxConnections"] == 5
    assert "SecretRef" not in str(config)
    assert config["rateLimits"]["globalPerSecond"] == 30 and config["apiBaseUrl"] == "https://api.telegram.org"


def test_secret_refs_cover_token_webhook_smtp_credentials_and_vapid_key() -> None:
    telegram = NotificationChannelSpec.model_validate({"type": "telegram", "telegram": {
        "botTokenSecretRef": {"name": "bot"},
        "webhook": {"url": "https://x.example", "secretTokenSecretRef": {"name": "hook"}}}})
    assert {ref.name for ref in telegram.secret_refs()} == {"bot", "hook"}
    email = NotificationChannelSpec.model_validate({"type": "email", "email": {
        "host": "smtp", "from": "a@b.example", "usernameSecretRef": {"name": "smtp", "key": "user"},
        "passwordSecretRef": {"name": "smtp", "key": "password"}}})
    assert {ref.name for ref in email.secret_refs()} == {"smtp"}
    webpush = NotificationChannelSpec.model_validate({"type": "webpush", "webpush": {
        "vapidPrivateKeySecretRef": {"name": "vapid"}, "subject": "mailto:ops@b.example"}})
    assert [ref.name for ref in webpush.secret_refs()] == ["vapid"]


def test_invalid_token_makes_the_channel_not_ready_with_the_reason() -> None:
    check = ChannelCheck(Verdict.failed(ChannelReason.INVALID_TOKEN, "Telegram rejected the bot token"))
    conds = {c.type: c for c in channel_conditions(check)}
    assert conds["CredentialsValid"].status == "False"
    assert (conds["Ready"].status, conds["Ready"].reason) == ("False", "InvalidToken")


def test_valid_token_and_webhook_make_the_channel_ready() -> None:
    check = ChannelCheck(OK, Verdict.passed(ChannelReason.WEBHOOK_SET, "set"), bot_id=1, bot_username="b")
    conds = {c.type: c for c in channel_conditions(check)}
    assert conds["WebhookRegistered"].status == "True"
    assert conds["Ready"].status == "True"


def test_rejected_webhook_keeps_the_channel_not_ready() -> None:
    check = ChannelCheck(OK, Verdict.failed(ChannelReason.WEBHOOK_REJECTED, "bad url"))
    conds = {c.type: c for c in channel_conditions(check)}
    assert (conds["Ready"].status, conds["Ready"].reason) == ("False", "WebhookRejected")


def test_channel_without_webhook_is_ready_for_sending_only() -> None:
    no_webhook = Verdict.failed(ChannelReason.WEBHOOK_NOT_CONFIGURED, "no webhook")
    check = ChannelCheck(OK, no_webhook, webhook_configured=False)
    conds = {c.type: c for c in channel_conditions(check)}
    assert conds["Ready"].status == "True"
    assert conds["WebhookRegistered"].reason == "WebhookNotConfigured"


def test_status_keeps_bot_facts_a_check_could_not_learn() -> None:
    known = NotificationChannelStatus(bot_id=7, bot_username="shop_bot")
    unreachable = ChannelCheck(Verdict.undecided(ChannelReason.TELEGRAM_UNREACHABLE, "timeout"))
    status = channel_status(known, unreachable, channel_conditions(unreachable), telegram=True,
                            webhook_secret_name="shop-webhook-secret", generation=4, now=NOW)
    assert (status.bot_id, status.bot_username, status.ready) == (7, "shop_bot", False)
    assert (status.observed_generation, status.last_checked_at) == (4, NOW)
    conds = {c.type: c for c in status.conditions}
    assert (conds["CredentialsValid"].status, conds["Ready"].status) == ("Unknown", "False")


def test_checks_run_on_the_interval_when_ready_and_sooner_when_not() -> None:
    last = NOW - timedelta(seconds=60)
    assert not check_due(last, ready=True, interval_seconds=300, retry_seconds=30, now=NOW)
    assert check_due(last, ready=False, interval_seconds=300, retry_seconds=30, now=NOW)
    assert check_due(None, ready=True, interval_seconds=300, retry_seconds=30, now=NOW)


def _spec_with_templates(*texts: str) -> NotificationChannelSpec:
    return NotificationChannelSpec.model_validate({
        "type": "telegram", "telegram": {"botTokenSecretRef": {"name": "bot"}},
        "templates": [{"name": f"t{i}", "variables": [{"name": "orderId"}],
                       "variants": [{"language": "en", "text": text}]} for i, text in enumerate(texts)]})


def test_a_broken_template_is_stored_with_its_error_and_reported_without_making_the_channel_unready() -> None:
    templates = stored_templates(_spec_with_templates("Order {{ orderId }}", "Order {{ orderId",
                                                      "{{ ''.__class__ }}"))

    assert [(t.name, t.error is None) for t in templates] == [("t0", True), ("t1", False), ("t2", False)]
    conds = {c.type: c for c in channel_conditions(ChannelCheck(OK), templates)}
    valid = conds["TemplatesValid"]
    assert (valid.status, valid.reason) == ("False", "TemplateInvalid")
    assert "template t1: language en text:" in valid.message and "template t2:" in valid.message
    assert "t0" not in valid.message
    assert conds["Ready"].status == "True"
    assert list(conds)[-1] == "Ready"


def test_templates_that_compile_are_reported_valid_and_stored_with_their_revision() -> None:
    spec = _spec_with_templates("Order {{ orderId }}")
    templates = stored_templates(spec)

    valid = {c.type: c for c in channel_conditions(ChannelCheck(OK), templates)}["TemplatesValid"]

    assert (valid.status, valid.message) == ("True", "1 template compiled")
    assert templates[0].to_json() == {"name": "t0", "revision": spec.templates[0].revision, "error": None,
                                      "template": spec.templates[0].to_k8s()}


def test_autoscaler_ready_names_the_keda_lanes_and_keda_missing_leaves_the_channel_ready() -> None:
    by_type = {c.type: c for c in channel_conditions(ChannelCheck(OK), autoscaler=autoscaler_verdict([]))}
    ready = by_type["AutoscalerReady"]
    assert (ready.status, ready.reason) == ("True", "OperatorScaling")
    keda = autoscaler_verdict(["bulk"])
    assert (keda.status, keda.reason) == ("True", "ScaledObjectsApplied") and "bulk" in keda.message
    missing = Verdict.failed(ChannelReason.KEDA_NOT_INSTALLED, "no KEDA")
    conds = channel_conditions(ChannelCheck(OK), autoscaler=missing)
    assert [c.type for c in conds][-2:] == ["AutoscalerReady", "Ready"]
    assert (conds[-2].status, conds[-2].reason) == ("False", "KedaNotInstalled")
    assert conds[-1].status == "True"
    # not reconciled (credentials not checked): no AutoscalerReady at all
    assert "AutoscalerReady" not in {c.type for c in channel_conditions(ChannelCheck(OK))}
