"""NotificationChannel decisions: webhook URL, stored config, conditions, check schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from clarion_operator.channel_logic import (
    ChannelCheck,
    Verdict,
    channel_conditions,
    check_due,
    referenced_secrets,
    stored_config,
    webhook_endpoint,
)
from clarion_operator.conditions import merge_conditions, transitions

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
OK = Verdict(True, "TokenAccepted", "fine")


def test_webhook_url_is_the_base_url_plus_the_channel_path() -> None:
    assert webhook_endpoint("https://hooks.example.com/", "prod", "shop") == (
        "https://hooks.example.com/tg/webhook/prod.shop")
    assert webhook_endpoint("http://127.0.0.1:8080/base", "ns", "c") == "http://127.0.0.1:8080/base/tg/webhook/ns.c"


def test_stored_config_has_no_secret_references() -> None:
    telegram = {"botTokenSecretRef": {"name": "bot"}, "adminChatIds": [1],
                "webhook": {"url": "https://x", "secretTokenSecretRef": {"name": "hook"},
                            "maxConnections": 5}}
    config = stored_config(telegram)
    assert config == {"adminChatIds": [1], "webhook": {"url": "https://x", "maxConnections": 5}}
    assert telegram["botTokenSecretRef"] == {"name": "bot"}


def test_referenced_secrets_cover_token_webhook_and_smtp_credentials() -> None:
    telegram = {"botTokenSecretRef": {"name": "bot"}, "webhook": {"secretTokenSecretRef": {"name": "hook"}}}
    assert referenced_secrets({"telegram": telegram}) == {"bot", "hook"}
    assert referenced_secrets({"email": {"usernameSecretRef": {"name": "smtp"},
                                         "passwordSecretRef": {"name": "smtp"}}}) == {"smtp"}


def test_invalid_token_makes_the_channel_not_ready_with_the_reason() -> None:
    check = ChannelCheck(Verdict(False, "InvalidToken", "Telegram rejected the bot token"))
    conds = {c["type"]: c for c in channel_conditions(check)}
    assert conds["CredentialsValid"]["status"] == "False"
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("False", "InvalidToken")


def test_valid_token_and_webhook_make_the_channel_ready() -> None:
    check = ChannelCheck(OK, Verdict(True, "WebhookSet", "set"), bot_id=1, bot_username="b")
    conds = {c["type"]: c for c in channel_conditions(check)}
    assert conds["WebhookRegistered"]["status"] == "True"
    assert conds["Ready"]["status"] == "True"


def test_rejected_webhook_keeps_the_channel_not_ready() -> None:
    check = ChannelCheck(OK, Verdict(False, "WebhookRejected", "bad url"))
    conds = {c["type"]: c for c in channel_conditions(check)}
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("False", "WebhookRejected")


def test_channel_without_webhook_is_ready_for_sending_only() -> None:
    check = ChannelCheck(OK, Verdict(False, "WebhookNotConfigured", "no webhook"), webhook_configured=False)
    conds = {c["type"]: c for c in channel_conditions(check)}
    assert conds["Ready"]["status"] == "True"
    assert conds["WebhookRegistered"]["reason"] == "WebhookNotConfigured"


def test_transition_time_moves_only_when_the_status_changes() -> None:
    first = merge_conditions([], [{"type": "Ready", "status": "False", "reason": "A", "message": ""}],
                             generation=1, now=NOW)
    later = NOW + timedelta(minutes=1)
    same = merge_conditions(first, [{"type": "Ready", "status": "False", "reason": "B", "message": "x"}],
                            generation=2, now=later)
    assert same[0]["lastTransitionTime"] == "2026-11-23T12:00:00Z"
    assert (same[0]["reason"], same[0]["observedGeneration"]) == ("B", 2)
    flipped = merge_conditions(same, [{"type": "Ready", "status": "True", "reason": "C", "message": ""}],
                               generation=2, now=later)
    assert flipped[0]["lastTransitionTime"] == "2026-11-23T12:01:00Z"
    assert transitions(same, flipped) == [flipped[0]] and transitions(flipped, flipped) == []


def test_checks_run_on_the_interval_when_ready_and_sooner_when_not() -> None:
    last = NOW - timedelta(seconds=60)
    assert not check_due(last, ready=True, interval_seconds=300, retry_seconds=30, now=NOW)
    assert check_due(last, ready=False, interval_seconds=300, retry_seconds=30, now=NOW)
    assert check_due(None, ready=True, interval_seconds=300, retry_seconds=30, now=NOW)
