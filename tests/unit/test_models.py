"""The CRD models accept the examples and refuse bad values with a message naming the problem."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from clarion.models import (
    GROUP,
    PLURALS,
    VERSION,
    BroadcastCampaignSpec,
    BroadcastCampaignStatus,
    Condition,
    ManagedGroupSpec,
    Message,
    NotificationChannelSpec,
    NotificationRouteSpec,
    Schedule,
    changed_conditions,
    merge_conditions,
)
from pydantic import BaseModel, ValidationError

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"
SPECS: dict[str, type[BaseModel]] = {
    "NotificationChannel": NotificationChannelSpec,
    "BroadcastCampaign": BroadcastCampaignSpec,
    "ManagedGroup": ManagedGroupSpec,
    "NotificationRoute": NotificationRouteSpec,
}


def _custom_resources() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["apiVersion"] == f"{GROUP}/{VERSION}":
                found.append((f"{path.name}:{doc['metadata']['name']}", doc))
    return found


def _example(kind: str, name: str) -> dict[str, Any]:
    for _, doc in _custom_resources():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return copy.deepcopy(doc["spec"])
    raise LookupError(name)


def test_examples_cover_every_kind_a_draft_and_an_email_channel() -> None:
    docs = [doc for _, doc in _custom_resources()]
    assert {doc["kind"] for doc in docs} == set(SPECS)
    assert any(doc["spec"].get("suspend") for doc in docs if doc["kind"] == "BroadcastCampaign")
    assert any(doc["spec"]["type"] == "email" for doc in docs if doc["kind"] == "NotificationChannel")


@pytest.mark.parametrize(("name", "doc"), _custom_resources(), ids=[n for n, _ in _custom_resources()])
def test_example_validates_and_survives_a_round_trip(name: str, doc: dict[str, Any]) -> None:
    model = SPECS[doc["kind"]].model_validate(doc["spec"])
    dumped = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert SPECS[doc["kind"]].model_validate(dumped) == model


def test_example_secret_refs_point_at_secrets_in_the_same_file() -> None:
    docs = list(yaml.safe_load_all((EXAMPLES / "telegram-channel.yaml").read_text()))
    secret = next(d for d in docs if d["kind"] == "Secret")
    spec = NotificationChannelSpec.model_validate(next(d for d in docs if d["kind"] != "Secret")["spec"])
    assert spec.telegram is not None
    ref = spec.telegram.bot_token_secret_ref
    assert ref.name == secret["metadata"]["name"]
    assert ref.key in secret["stringData"]


Mutation = Callable[[dict[str, Any]], object]

REJECTIONS: list[tuple[str, str, str, Mutation, str]] = [
    (
        "missing channelRef",
        "BroadcastCampaign",
        "winter-release",
        lambda s: s.pop("channelRef"),
        "channelRef",
    ),
    (
        "unknown time zone",
        "BroadcastCampaign",
        "winter-release",
        lambda s: s["schedule"].update(timeZone="Mars/Olympus"),
        "unknown time zone 'Mars/Olympus'",
    ),
    (
        "impossible date",
        "BroadcastCampaign",
        "winter-release",
        lambda s: s["schedule"].update(at="2026-02-30T09:00:00"),
        "is not a valid time",
    ),
    (
        "campaign rate above 1000",
        "BroadcastCampaign",
        "winter-release",
        lambda s: s["delivery"].update(ratePerSecond=1001),
        "less than or equal to 1000",
    ),
    (
        "text over 4096",
        "BroadcastCampaign",
        "winter-release",
        lambda s: s["message"].update(text="x" * 4097),
        "at most 4096 characters",
    ),
    (
        "caption over 1024",
        "BroadcastCampaign",
        "winter-release",
        lambda s: s["message"].update(mediaUrl="https://example.com/a.png", text="x" * 1025),
        "caption of at most 1024",
    ),
    (
        "button with url and callbackData",
        "BroadcastCampaign",
        "winter-release",
        lambda s: s["message"]["buttons"][0][0].update(callbackData="x"),
        "exactly one of url, callbackData or webAppUrl",
    ),
    (
        "button with url and webAppUrl",
        "BroadcastCampaign",
        "winter-release",
        lambda s: s["message"]["buttons"][0][0].update(webAppUrl="https://shop.example.org/app/"),
        "exactly one of url, callbackData or webAppUrl",
    ),
    (
        "button with neither",
        "BroadcastCampaign",
        "winter-release",
        lambda s: s["message"]["buttons"][0][0].pop("url"),
        "exactly one of url, callbackData or webAppUrl",
    ),
    (
        "nine buttons in a row",
        "BroadcastCampaign",
        "winter-release",
        lambda s: s["message"]["buttons"][0].extend([{"text": "b", "callbackData": "b"}] * 7),
        "at most 8 items",
    ),
    (
        "empty audience",
        "BroadcastCampaign",
        "winter-release",
        lambda s: s.update(audience={"excludeTags": ["staff"]}),
        "audience is empty",
    ),
    (
        "two variants in one language",
        "BroadcastCampaign",
        "winter-release",
        lambda s: s["message"]["variants"].append({"language": "ru", "text": "again"}),
        "only one variant",
    ),
    (
        "variant in an unlisted language",
        "BroadcastCampaign",
        "winter-release",
        lambda s: s["message"]["variants"][0].update(language="xx"),
        "Input should be 'en', 'ru'",
    ),
    (
        "misspelt field",
        "BroadcastCampaign",
        "winter-release",
        lambda s: s.update(supend=True),
        "Extra inputs are not permitted",
    ),
    (
        "global rate above 30",
        "NotificationChannel",
        "clarion-bot",
        lambda s: s["telegram"]["rateLimits"].update(globalPerSecond=31),
        "less than or equal to 30",
    ),
    (
        "telegram type without telegram",
        "NotificationChannel",
        "clarion-bot",
        lambda s: s.pop("telegram"),
        "telegram is required when type is telegram",
    ),
    (
        "telegram type with email",
        "NotificationChannel",
        "clarion-bot",
        lambda s: s.update(email={"host": "smtp.example.com", "from": "a@example.com"}),
        "email may only be set when type is email",
    ),
    (
        "webhook max connections 0",
        "NotificationChannel",
        "clarion-bot",
        lambda s: s["telegram"]["webhook"].update(maxConnections=0),
        "greater than or equal to 1",
    ),
    (
        "unknown update type",
        "NotificationChannel",
        "clarion-bot",
        lambda s: s["telegram"]["webhook"].update(allowedUpdates=["messages"]),
        "allowedUpdates",
    ),
    (
        "smtp user without password",
        "NotificationChannel",
        "clarion-mail",
        lambda s: s["email"].pop("passwordSecretRef"),
        "must be set together",
    ),
    (
        "remove not after warn",
        "ManagedGroup",
        "community",
        lambda s: s["inactivity"].update(removeAfterDays=30),
        "removeAfterDays must be greater than warnAfterDays",
    ),
    (
        "rules policy without rules",
        "ManagedGroup",
        "community",
        lambda s: s["joinRequests"].pop("rules"),
        "rules is required when policy is rules",
    ),
    (
        "post with at and cron",
        "ManagedGroup",
        "community",
        lambda s: s["scheduledPosts"][0].update(at="2026-12-01T09:00:00"),
        "exactly one of at or cron",
    ),
    (
        "two posts with one name",
        "ManagedGroup",
        "community",
        lambda s: s["scheduledPosts"].append(dict(s["scheduledPosts"][0])),
        "names must be unique",
    ),
]


@pytest.mark.parametrize(
    ("case", "kind", "name", "mutate", "expected"), REJECTIONS, ids=[r[0] for r in REJECTIONS]
)
def test_bad_spec_is_rejected_with_a_message_naming_the_problem(
    case: str, kind: str, name: str, mutate: Mutation, expected: str
) -> None:
    spec = _example(kind, name)
    mutate(spec)
    with pytest.raises(ValidationError) as caught:
        SPECS[kind].model_validate(spec)
    assert expected in str(caught.value)


def test_fields_default_like_the_api_server_does() -> None:
    spec = NotificationChannelSpec.model_validate(
        {"type": "telegram", "telegram": {"botTokenSecretRef": {"name": "bot"}}}
    )
    assert spec.telegram is not None
    assert spec.telegram.bot_token_secret_ref.key == "token"
    assert spec.telegram.api_base_url == "https://api.telegram.org"
    assert spec.telegram.rate_limits.global_per_second == 30
    assert spec.telegram.rate_limits.per_group_per_minute == 20
    assert spec.telegram.bot.replicas == 2
    assert spec.health_check_interval_seconds == 300
    campaign = BroadcastCampaignSpec.model_validate(
        {"channelRef": {"name": "bot"}, "message": {"text": "hi"}, "audience": {"allSubscribers": True}}
    )
    assert campaign.delivery.parallelism == 2
    assert campaign.delivery.max_attempts == 5
    assert campaign.delivery.rate_per_second is None
    assert campaign.message.parse_mode == "None"
    assert campaign.schedule is None
    assert campaign.retention.keep_deliveries is True


def test_local_schedule_time_is_read_in_its_time_zone() -> None:
    berlin_winter = Schedule.model_validate({"at": "2026-12-01T09:00:00", "timeZone": "Europe/Berlin"})
    assert berlin_winter.start_time() == datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    berlin_summer = Schedule.model_validate({"at": "2026-07-01T09:00:00", "timeZone": "Europe/Berlin"})
    assert berlin_summer.start_time() == datetime(2026, 7, 1, 7, 0, tzinfo=UTC)


def test_schedule_time_with_an_offset_ignores_the_time_zone() -> None:
    schedule = Schedule.model_validate({"at": "2026-12-01T09:00:00+03:00", "timeZone": "Europe/Berlin"})
    assert schedule.start_time() == datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
    assert Schedule.model_validate({"at": "2026-12-01T09:00:00Z"}).start_time().hour == 9


def test_schedule_rejects_a_date_only_time() -> None:
    with pytest.raises(ValidationError, match="at"):
        Schedule.model_validate({"at": "2026-12-01"})


def test_message_picks_the_variant_of_the_subscriber_language() -> None:
    message = Message.model_validate(
        {
            "text": "hello",
            "buttons": [[{"text": "open", "url": "https://example.com"}]],
            "variants": [
                {"language": "ru", "text": "привет"},
                {"language": "de", "text": "hallo", "buttons": []},
            ],
        }
    )
    text, buttons = message.for_language("ru-RU")
    assert text == "привет"
    assert buttons == message.buttons
    assert message.for_language("de") == ("hallo", [])
    assert message.for_language("fr")[0] == "hello"
    assert message.for_language(None)[0] == "hello"


def test_status_ignores_fields_written_by_other_tools_and_dumps_only_what_is_set() -> None:
    status = BroadcastCampaignStatus.model_validate(
        {"phase": "Sending", "total": 10, "kopf": {"progress": {}}, "eta": "2026-12-01T08:00:00Z"}
    )
    assert status.phase == "Sending"
    assert status.to_k8s() == {
        "phase": "Sending",
        "total": 10,
        "eta": "2026-12-01T08:00:00Z",
        "conditions": [],
    }


def test_status_rejects_an_unknown_phase() -> None:
    with pytest.raises(ValidationError, match="phase"):
        BroadcastCampaignStatus.model_validate({"phase": "Done"})


def test_condition_transition_time_moves_only_when_the_status_changes() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    t1 = datetime(2026, 1, 2, tzinfo=UTC)
    ready = Condition(type="Ready", status="False", reason="Pending", message="checking")
    first = merge_conditions([], [ready], generation=1, now=t0)
    assert (first[0].last_transition_time, first[0].observed_generation) == (t0, 1)

    again = ready.model_copy(update={"message": "still checking"})
    same = merge_conditions(first, [again], generation=2, now=t1)
    assert same[0].last_transition_time == t0
    assert (same[0].message, same[0].observed_generation) == ("still checking", 2)
    assert changed_conditions(first, same) == []

    flipped = merge_conditions(same, [Condition(type="Ready", status="True", reason="Verified")],
                               generation=2, now=t1)
    assert [c.type for c in flipped] == ["Ready"]
    assert flipped[0].last_transition_time == t1
    assert changed_conditions(same, flipped) == [flipped[0]]

    more = merge_conditions(flipped, [Condition(type="WebhookRegistered", status="True", reason="Set")],
                            generation=2, now=t1)
    assert [c.type for c in more] == ["Ready", "WebhookRegistered"]


def test_condition_dumps_in_kubernetes_shape() -> None:
    condition = Condition(
        type="Ready",
        status="True",
        reason="Verified",
        message="ok",
        last_transition_time=datetime(2026, 1, 1, tzinfo=UTC),
        observed_generation=3,
    )
    assert condition.to_k8s() == {
        "type": "Ready",
        "status": "True",
        "reason": "Verified",
        "message": "ok",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": 3,
    }


def test_condition_reason_must_be_one_camel_case_word() -> None:
    with pytest.raises(ValidationError, match="reason"):
        Condition(type="Ready", status="True", reason="not ok")


def test_api_constants() -> None:
    assert (GROUP, VERSION) == ("clarion.io", "v1alpha1")
    assert PLURALS == {
        "NotificationChannel": "notificationchannels",
        "BroadcastCampaign": "broadcastcampaigns",
        "ManagedGroup": "managedgroups",
        "NotificationRoute": "notificationroutes",
    }


def test_a_campaign_spec_stored_by_release_0_1_0_still_parses() -> None:
    """Rows of `campaigns` keep the spec of the release that started them; senders of later releases
    parse it with the current model (this one is the API server's copy of winter-release, as 0.1.0
    stored it: every CRD default applied)."""
    stored = json.loads((Path(__file__).parent / "data" / "campaign-spec-0.1.0.json").read_text())
    spec = BroadcastCampaignSpec.model_validate(stored)
    assert spec.delivery.parallelism == 2 and spec.message.parse_mode == "HTML"
    assert spec.message.for_language("ru-RU")[0].startswith("<b>Вышел")
    assert spec.start_at == datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    assert BroadcastCampaignSpec.model_validate(spec.to_k8s()) == spec


def test_a_web_app_button_renders_as_the_bot_apis_web_app_button() -> None:
    from clarion.models import Message
    from clarion_senders.render import MessageRenderer

    message = Message.model_validate({"text": "A request", "buttons": [[
        {"text": "Reply", "webAppUrl": "https://hooks.example.org/app/?thread=7"},
        {"text": "Site", "url": "https://example.org"}, {"text": "Ok", "callbackData": "ok"}]]})

    fields = MessageRenderer(message).for_language(None).fields
    assert fields["reply_markup"] == {"inline_keyboard": [[
        {"text": "Reply", "web_app": {"url": "https://hooks.example.org/app/?thread=7"}},
        {"text": "Site", "url": "https://example.org"}, {"text": "Ok", "callback_data": "ok"}]]}
