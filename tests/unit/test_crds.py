"""The committed crds/ are exactly what the models render, and what they render is a valid, bounded CRD."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from clarion.models import BROADCAST_CAMPAIGN, MANAGED_GROUP, RESOURCES, STARTED_PHASES, Resource
from clarion.models.timezones import TIME_ZONES
from clarion_dev import crdgen

pytestmark = pytest.mark.unit

CRDS = Path(__file__).resolve().parents[2] / "crds"


def _version(resource: Resource) -> dict[str, Any]:
    doc = yaml.safe_load((CRDS / f"clarion.io_{resource.plural}.yaml").read_text())
    version: dict[str, Any] = doc["spec"]["versions"][0]
    return version


def _schema(resource: Resource) -> dict[str, Any]:
    schema: dict[str, Any] = _version(resource)["schema"]["openAPIV3Schema"]
    return schema


def test_committed_crds_match_the_models() -> None:
    assert crdgen.drift(CRDS) == "", "crds/ is out of date: run `make crds`"


def test_rendering_twice_gives_identical_files() -> None:
    assert crdgen.render() == crdgen.render()


def test_check_passes_on_fresh_output_and_fails_with_a_diff_after_an_edit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert crdgen.main(["--output-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(crdgen.render())
    assert crdgen.main(["--check", "--output-dir", str(tmp_path)]) == 0
    capsys.readouterr()

    edited = tmp_path / "clarion.io_broadcastcampaigns.yaml"
    edited.write_text(edited.read_text().replace("maxItems: 10000", "maxItems: 5"))
    assert crdgen.main(["--check", "--output-dir", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "-                    maxItems: 5" in out.out
    assert "+                    maxItems: 10000" in out.out
    assert "out of date" in out.err


def test_check_fails_when_a_file_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crdgen.main(["--output-dir", str(tmp_path)])
    (tmp_path / "clarion.io_policies.yaml").unlink()
    assert crdgen.main(["--check", "--output-dir", str(tmp_path)]) == 1
    assert "ValidatingAdmissionPolicy" in capsys.readouterr().out


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_every_string_list_and_number_is_bounded_and_described(resource: Resource) -> None:
    schema = _schema(resource)
    for part in ("spec", "status"):
        assert crdgen.schema_problems(schema["properties"][part], part) == []


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_schema_has_no_constructs_a_structural_schema_forbids(resource: Resource) -> None:
    text = (CRDS / f"clarion.io_{resource.plural}.yaml").read_text()
    # (a `title` key inside a schema node is caught by schema_problems; `title` is also a field name)
    for forbidden in ("$ref", "anyOf", "allOf", "oneOf", "nullable", "additionalProperties", "&id"):
        assert forbidden not in text


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_crd_is_namespaced_with_short_name_category_and_status_subresource(resource: Resource) -> None:
    doc = yaml.safe_load((CRDS / f"clarion.io_{resource.plural}.yaml").read_text())
    assert doc["metadata"]["name"] == f"{resource.plural}.clarion.io"
    assert doc["spec"]["scope"] == "Namespaced"
    assert doc["spec"]["names"]["shortNames"] == list(resource.short_names)
    assert doc["spec"]["names"]["categories"] == ["clarion"]
    version = _version(resource)
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][-1] == "Age"
    conditions = _schema(resource)["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions["items"]["required"] == ["type", "status"]


def test_short_names_are_nc_bc_mg_nr() -> None:
    assert [r.short_names for r in RESOURCES] == [("nc",), ("bc",), ("mg",), ("nr",)]


def test_campaign_printer_columns_show_phase_channel_counts_and_progress() -> None:
    names = [c["name"] for c in _version(BROADCAST_CAMPAIGN)["additionalPrinterColumns"]]
    assert names[:6] == ["Phase", "Channel", "Total", "Sent", "Failed", "Progress"]


def test_time_zone_is_a_cel_rule_over_every_iana_zone_sorted_not_an_enum() -> None:
    # An enum would be answered with all ~600 names; the rule names only the value it refuses.
    campaign = _schema(BROADCAST_CAMPAIGN)["properties"]["spec"]["properties"]["schedule"]["properties"]
    group = _schema(MANAGED_GROUP)["properties"]["spec"]["properties"]["scheduledPosts"]["items"]
    for zone in (campaign["timeZone"], group["properties"]["timeZone"]):
        assert "enum" not in zone
        assert zone["default"] == "UTC"
        assert zone["maxLength"] == 64
        (rule,) = zone["x-kubernetes-validations"]
        assert rule["rule"].startswith("self in [")
        listed = re.findall(r'"([^"]+)"', rule["rule"])
        assert listed == sorted(TIME_ZONES)
        assert {"Europe/Berlin", "America/New_York", "UTC", "Asia/Kolkata"} <= set(listed)
        assert rule["messageExpression"] == (
            '"unknown time zone \'" + self + "\': use an IANA name such as Europe/Berlin"'
        )
        assert rule["reason"] == "FieldValueInvalid"
        assert "\n" not in rule["message"]


def test_every_zone_in_the_snapshot_resolves() -> None:
    for name in TIME_ZONES:
        ZoneInfo(name)


def test_cross_field_rules_are_rendered_as_cel() -> None:
    text = (CRDS / "clarion.io_broadcastcampaigns.yaml").read_text()
    for message in (
        "exactly one of url, callbackData or webAppUrl must be set",
        "audience is empty",
        "each language may have only one variant",
        "cancel cannot be undone",
        "retryFailed can only increase",
    ):
        assert message in text
    assert (
        "telegram is required when type is telegram"
        in (CRDS / "clarion.io_notificationchannels.yaml").read_text()
    )
    assert (
        "removeAfterDays must be greater than warnAfterDays"
        in (CRDS / "clarion.io_managedgroups.yaml").read_text()
    )


def test_admission_policy_freezes_message_and_audience_of_started_campaigns_only() -> None:
    policy, binding = yaml.safe_load_all((CRDS / "clarion.io_policies.yaml").read_text())
    assert policy["kind"] == "ValidatingAdmissionPolicy"
    assert binding["kind"] == "ValidatingAdmissionPolicyBinding"
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    # The main resource only: status writes go to broadcastcampaigns/status and are not matched.
    assert rule["resources"] == ["broadcastcampaigns"]
    assert rule["operations"] == ["UPDATE"]
    started = policy["spec"]["variables"][0]["expression"]
    for phase in STARTED_PHASES:
        assert f"'{phase}'" in started
    assert "'Draft'" not in started
    assert "'Scheduled'" not in started
    fields = [v["expression"] for v in policy["spec"]["validations"]]
    assert any("object.spec.message == oldObject.spec.message" in e for e in fields)
    assert any("object.spec.audience == oldObject.spec.audience" in e for e in fields)
