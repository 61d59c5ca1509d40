"""A real kube-apiserver accepts the examples and refuses bad specs with a message naming the field.

Objects are written with kubectl, as a cluster admin would, and the assertions read what kubectl prints.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from clarion.models import (
    GROUP,
    VERSION,
    BroadcastCampaignSpec,
    ManagedGroupSpec,
    NotificationChannelSpec,
    NotificationRouteSpec,
)
from clarion.models.base import unknown_time_zone
from clarion.models.timezones import TIME_ZONES
from clarion_dev.cluster import ControlPlane
from clarion_dev.testing.waiting import wait_for
from pydantic import BaseModel, ValidationError

pytestmark = pytest.mark.cluster

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"
SPECS: dict[str, type[BaseModel]] = {
    "NotificationChannel": NotificationChannelSpec,
    "BroadcastCampaign": BroadcastCampaignSpec,
    "ManagedGroup": ManagedGroupSpec,
    "NotificationRoute": NotificationRouteSpec,
}
STARTED_ERROR = (
    "spec.{field} cannot change after the campaign started (phase {phase}); create a new BroadcastCampaign"
)


def _examples() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def _example(kind: str, name: str) -> dict[str, Any]:
    for doc in _examples():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return copy.deepcopy(doc)
    raise LookupError(name)


class Cluster:
    """kubectl in one namespace."""

    def __init__(self, control_plane: ControlPlane, namespace: str) -> None:
        self.control_plane = control_plane
        self.namespace = namespace

    def run(self, *args: str, input_text: str | None = None) -> tuple[int, str]:
        result = self.control_plane.kubectl("-n", self.namespace, *args, check=False, input_text=input_text)
        return result.returncode, (result.stdout + result.stderr).strip()

    def create(self, obj: dict[str, Any]) -> tuple[int, str]:
        return self.run("create", "-f", "-", input_text=json.dumps(obj))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        code, out = self.run("get", f"{kind.lower()}s.{GROUP}", name, "-o", "json", "--ignore-not-found")
        assert code == 0, out
        return json.loads(out) if out else None

    def patch(self, kind: str, name: str, patch: dict[str, Any], *extra: str) -> tuple[int, str]:
        return self.run(
            "patch", f"{kind.lower()}s.{GROUP}", name, "--type=merge", "-p", json.dumps(patch), *extra
        )

    def set_phase(self, name: str, phase: str) -> None:
        code, out = self.patch(
            "BroadcastCampaign", name, {"status": {"phase": phase}}, "--subresource=status"
        )
        assert code == 0, out


@pytest.fixture
def cluster(control_plane: ControlPlane, kube_namespace: str) -> Cluster:
    return Cluster(control_plane, kube_namespace)


def _subset_problems(served: Any, model: Any, path: str = "spec") -> list[str]:
    """Where a value the API server holds differs from the model's view of the same object."""
    if isinstance(served, dict) and isinstance(model, dict):
        problems = []
        for key, value in served.items():
            if key not in model:
                problems.append(f"{path}.{key}: set by the API server, unknown to the model")
            else:
                problems.extend(_subset_problems(value, model[key], f"{path}.{key}"))
        return problems
    return [] if served == model else [f"{path}: API server has {served!r}, model has {model!r}"]


def test_every_example_is_accepted_and_server_defaults_agree_with_the_models(cluster: Cluster) -> None:
    code, out = cluster.run("apply", "-f", str(EXAMPLES))
    assert code == 0, out
    for doc in _examples():
        if doc["apiVersion"] != f"{GROUP}/{VERSION}":
            continue
        served = cluster.get(doc["kind"], doc["metadata"]["name"])
        assert served is not None
        model = SPECS[doc["kind"]].model_validate(served["spec"])
        dumped = model.model_dump(mode="json", by_alias=True, exclude_none=True)
        assert _subset_problems(served["spec"], dumped) == []


def test_kubectl_get_clarion_lists_every_kind_with_printer_columns(cluster: Cluster) -> None:
    code, out = cluster.run("apply", "-f", str(EXAMPLES))
    assert code == 0, out
    code, out = cluster.run("get", "clarion", "-o", "name")
    assert code == 0, out
    assert {
        "notificationchannel.clarion.io/clarion-bot",
        "notificationchannel.clarion.io/clarion-mail",
        "notificationchannel.clarion.io/clarion-push",
        "broadcastcampaign.clarion.io/winter-release",
        "broadcastcampaign.clarion.io/maintenance-notice",
        "managedgroup.clarion.io/community",
        *(f"notificationroute.clarion.io/{name}" for name in (
            "booking-created-by-client", "booking-created-by-admin", "booking-cancelled-by-client",
            "booking-cancelled-by-admin", "booking-cancelled-by-specialist", "booking-rescheduled-by-admin",
            "booking-done")),
    } == set(out.split())
    columns = {
        "nc": ["NAME", "TYPE", "READY", "BOT", "INSTANT", "BULK", "LAG", "AGE"],
        "bc": ["NAME", "PHASE", "CHANNEL", "TOTAL", "SENT", "FAILED", "PROGRESS", "AGE"],
        "mg": ["NAME", "CHAT", "PHASE", "MEMBERS", "PENDING", "AGE"],
        "nr": ["NAME", "EVENT", "INITIATOR", "ENABLED", "READY", "AGE"],
    }
    for short_name, header in columns.items():
        code, out = cluster.run("get", short_name)
        assert code == 0, out
        assert out.splitlines()[0].split() == header
    code, out = cluster.run("get", "mg", "community", "--no-headers")
    assert out.split()[:2] == ["community", "-1001234567890"]


REJECTED = [
    ("missing channelRef", "BroadcastCampaign", "winter-release", "spec.channelRef: Required value"),
    (
        "unknown time zone",
        "BroadcastCampaign",
        "winter-release",
        "spec.schedule.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone 'Mars/Olympus'",
    ),
    (
        "global rate 31",
        "NotificationChannel",
        "clarion-bot",
        "spec.telegram.rateLimits.globalPerSecond: Invalid value: 31",
    ),
    (
        "campaign rate 1001",
        "BroadcastCampaign",
        "winter-release",
        "spec.delivery.ratePerSecond: Invalid value: 1001",
    ),
    ("text of 4097 characters", "BroadcastCampaign", "winter-release", "spec.message.text: Too long"),
    (
        "type telegram without telegram",
        "NotificationChannel",
        "clarion-bot",
        "spec.telegram: Required value: telegram is required when type is telegram",
    ),
    (
        "button with url and callbackData",
        "BroadcastCampaign",
        "winter-release",
        "spec.message.buttons[0][0]: Invalid value: "
        "exactly one of url, callbackData or webAppUrl must be set",
    ),
    (
        "empty audience",
        "BroadcastCampaign",
        "winter-release",
        "spec.audience: Required value: audience is empty: set allSubscribers, tags, chatIds or groupRefs",
    ),
    (
        "remove not after warn",
        "ManagedGroup",
        "community",
        "spec.inactivity.removeAfterDays: Invalid value: removeAfterDays must be greater than warnAfterDays",
    ),
    (
        "two variants in one language",
        "BroadcastCampaign",
        "winter-release",
        "spec.message.variants: Invalid value: each language may have only one variant",
    ),
    (
        "email template without a subject",
        "NotificationChannel",
        "clarion-mail",
        "spec.templates: Invalid value: templates of an email channel need a subject and have no parseMode "
        "or buttons",
    ),
    (
        "template default language without a variant",
        "NotificationChannel",
        "clarion-bot",
        "spec.templates[0].defaultLanguage: Invalid value: defaultLanguage must be the language of one of "
        "the variants",
    ),
    (
        "lane minReplicas above its maxReplicas",
        "NotificationChannel",
        "clarion-bot",
        "spec.workers.autoscaling.lanes.bulk.minReplicas: Invalid value: minReplicas must not exceed "
        "maxReplicas",
    ),
    (
        "web push urgency urgent",
        "NotificationChannel",
        "clarion-push",
        'spec.webpush.urgency: Unsupported value: "urgent"',
    ),
    (
        "web push TTL over 28 days",
        "NotificationChannel",
        "clarion-push",
        "spec.webpush.ttlSeconds: Invalid value: 2419201",
    ),
    (
        "web push subject not mailto or https",
        "NotificationChannel",
        "clarion-push",
        "spec.webpush.subject: Invalid value: \"http://example.com\"",
    ),
]
MUTATIONS: dict[str, Callable[[dict[str, Any]], object]] = {
    "missing channelRef": lambda s: s.pop("channelRef"),
    "unknown time zone": lambda s: s["schedule"].update(timeZone="Mars/Olympus"),
    "global rate 31": lambda s: s["telegram"]["rateLimits"].update(globalPerSecond=31),
    "campaign rate 1001": lambda s: s["delivery"].update(ratePerSecond=1001),
    "text of 4097 characters": lambda s: s["message"].update(text="x" * 4097),
    "type telegram without telegram": lambda s: s.pop("telegram"),
    "button with url and callbackData": lambda s: s["message"]["buttons"][0][0].update(callbackData="x"),
    "empty audience": lambda s: s.update(audience={"excludeTags": ["staff"]}),
    "remove not after warn": lambda s: s["inactivity"].update(removeAfterDays=30),
    "two variants in one language": lambda s: s["message"]["variants"].append(
        {"language": "ru", "text": "y"}
    ),
    "email template without a subject": lambda s: s["templates"][0]["variants"][0].pop("subject"),
    "template default language without a variant": lambda s: s["templates"][0].update(defaultLanguage="fr"),
    "lane minReplicas above its maxReplicas": lambda s: s.setdefault("workers", {}).update(
        autoscaling={"lanes": {"bulk": {"minReplicas": 3, "maxReplicas": 2}}}),
    "web push urgency urgent": lambda s: s["webpush"].update(urgency="urgent"),
    "web push TTL over 28 days": lambda s: s["webpush"].update(ttlSeconds=2_419_201),
    "web push subject not mailto or https": lambda s: s["webpush"].update(subject="http://example.com"),
}


@pytest.mark.parametrize(("case", "kind", "name", "expected"), REJECTED, ids=[r[0] for r in REJECTED])
def test_invalid_spec_is_refused_naming_the_field_and_nothing_is_created(
    cluster: Cluster, case: str, kind: str, name: str, expected: str
) -> None:
    obj = _example(kind, name)
    MUTATIONS[case](obj["spec"])
    code, out = cluster.create(obj)
    assert code != 0
    assert expected in out
    assert cluster.get(kind, name) is None


# kind -> (example, path of the time zone field, the object in the spec that holds it)
ZONE_FIELDS: dict[str, tuple[str, str, Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "BroadcastCampaign": ("winter-release", "spec.schedule.timeZone", lambda s: s["schedule"]),
    "ManagedGroup": ("community", "spec.scheduledPosts[0].timeZone", lambda s: s["scheduledPosts"][0]),
}


@pytest.mark.parametrize("kind", list(ZONE_FIELDS))
def test_unknown_time_zone_is_refused_in_one_line_naming_it_and_a_known_zone_is_accepted(
    cluster: Cluster, kind: str
) -> None:
    name, field, holder = ZONE_FIELDS[kind]
    obj = _example(kind, name)
    holder(obj["spec"])["timeZone"] = "Mars/Base"

    code, out = cluster.create(obj)
    assert code != 0
    message = unknown_time_zone("Mars/Base")
    assert out == f'The {kind} "{name}" is invalid: {field}: Invalid value: "Mars/Base": {message}'
    # Europe/Berlin is the example the message gives; no other zone is listed.
    assert [zone for zone in TIME_ZONES if "/" in zone and zone in out] == ["Europe/Berlin"]
    assert cluster.get(kind, name) is None
    with pytest.raises(ValidationError) as refused:
        SPECS[kind].model_validate(obj["spec"])
    assert [str(error["ctx"]["error"]) for error in refused.value.errors()] == [message]

    holder(obj["spec"])["timeZone"] = "Europe/Berlin"
    code, out = cluster.create(obj)
    assert code == 0, out
    served = cluster.get(kind, name)
    assert served is not None
    assert holder(served["spec"])["timeZone"] == "Europe/Berlin"


def test_cancel_cannot_be_undone_and_retry_failed_only_grows(cluster: Cluster) -> None:
    code, out = cluster.create(_example("BroadcastCampaign", "maintenance-notice"))
    assert code == 0, out
    assert (
        cluster.patch(
            "BroadcastCampaign", "maintenance-notice", {"spec": {"cancel": True, "retryFailed": 2}}
        )[0]
        == 0
    )
    code, out = cluster.patch("BroadcastCampaign", "maintenance-notice", {"spec": {"cancel": False}})
    assert code != 0
    assert "spec.cancel: Forbidden: cancel cannot be undone" in out
    code, out = cluster.patch("BroadcastCampaign", "maintenance-notice", {"spec": {"retryFailed": 1}})
    assert code != 0
    assert "spec.retryFailed: Invalid value: 1: retryFailed can only increase" in out
    served = cluster.get("BroadcastCampaign", "maintenance-notice")
    assert served is not None
    assert (served["spec"]["cancel"], served["spec"]["retryFailed"]) == (True, 2)


def _wait_until_policy_denies(cluster: Cluster, name: str) -> str:
    """The policy is active once a server-side dry run of a message edit is refused."""

    def refused() -> str:
        code, out = cluster.patch(
            "BroadcastCampaign", name, {"spec": {"message": {"text": "probe"}}}, "--dry-run=server"
        )
        return out if code != 0 else ""

    return wait_for(refused, timeout=30, what="the frozen-after-start admission policy to take effect")


def test_message_and_audience_are_frozen_once_sending_but_status_and_suspend_stay_writable(
    cluster: Cluster,
) -> None:
    code, out = cluster.create(_example("BroadcastCampaign", "winter-release"))
    assert code == 0, out
    cluster.set_phase("winter-release", "Sending")

    assert STARTED_ERROR.format(field="message", phase="Sending") in _wait_until_policy_denies(
        cluster, "winter-release"
    )
    code, out = cluster.patch(
        "BroadcastCampaign", "winter-release", {"spec": {"message": {"text": "changed"}}}
    )
    assert code != 0
    assert STARTED_ERROR.format(field="message", phase="Sending") in out
    code, out = cluster.patch(
        "BroadcastCampaign", "winter-release", {"spec": {"audience": {"tags": ["everyone"]}}}
    )
    assert code != 0
    assert STARTED_ERROR.format(field="audience", phase="Sending") in out

    code, out = cluster.patch("BroadcastCampaign", "winter-release", {"spec": {"suspend": True}})
    assert code == 0, out
    code, out = cluster.patch(
        "BroadcastCampaign", "winter-release", {"status": {"sent": 3, "progress": 50}}, "--subresource=status"
    )
    assert code == 0, out

    served = cluster.get("BroadcastCampaign", "winter-release")
    assert served is not None
    assert served["spec"]["message"]["text"].startswith("<b>Clarion 1.0 is out.</b>")
    assert served["spec"]["audience"]["tags"] == ["news", "beta"]
    assert served["spec"]["suspend"] is True
    assert (served["status"]["phase"], served["status"]["sent"]) == ("Sending", 3)


@pytest.mark.parametrize("phase", ["Draft", "Scheduled"])
def test_message_can_be_edited_before_the_campaign_starts(cluster: Cluster, phase: str) -> None:
    started = _example("BroadcastCampaign", "winter-release")
    code, out = cluster.create(started)
    assert code == 0, out
    cluster.set_phase("winter-release", "Completed")
    _wait_until_policy_denies(cluster, "winter-release")

    code, out = cluster.create(_example("BroadcastCampaign", "maintenance-notice"))
    assert code == 0, out
    cluster.set_phase("maintenance-notice", phase)
    code, out = cluster.patch(
        "BroadcastCampaign",
        "maintenance-notice",
        {
            "spec": {
                "message": {"text": "Maintenance moved to Monday."},
                "audience": {"languages": ["en", "ru"]},
            }
        },
    )
    assert code == 0, out
    served = cluster.get("BroadcastCampaign", "maintenance-notice")
    assert served is not None
    assert served["spec"]["message"]["text"] == "Maintenance moved to Monday."
    assert served["spec"]["audience"]["languages"] == ["en", "ru"]


def test_kubectl_explain_shows_the_model_descriptions(cluster: Cluster) -> None:
    def explain(field: str) -> str:
        # The API server publishes a new CRD's OpenAPI document a little after it is Established.
        code, out = cluster.run("explain", field)
        return out if code == 0 else ""

    out = wait_for(
        lambda: explain("bc.spec.delivery.parallelism"), what="kubectl explain to know BroadcastCampaign"
    )
    assert "Sender pods (indexed Job completions)." in out
    out = wait_for(
        lambda: explain("nc.spec.telegram.rateLimits"), what="kubectl explain to know NotificationChannel"
    )
    assert "globalPerSecond" in out
    assert "Messages per second, all chats." in out
