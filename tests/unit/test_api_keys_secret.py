"""The API key Secret format: what `ApiKeySecret.parse` accepts, what it refuses and how it says so."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from clarion.models import ApiKeySecret, InvalidApiKey
from clarion.models.api_key import burst_of

pytestmark = pytest.mark.unit

KEY = "k7Qm3x9VZr1T0bYc8pLwE2sN5aHdJ6uF4gKiOyXv+/A="  # 44 characters, as `openssl rand -base64 32` prints


def secret(key: str | None = KEY, *, annotations: dict[str, str] | None = None,
           raw_data: dict[str, str] | None = None) -> dict[str, Any]:
    data = raw_data if raw_data is not None else (
        {} if key is None else {"key": base64.b64encode(key.encode()).decode()})
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"namespace": "shop", "name": "backend-key", "uid": "0b8f-uid",
                     "labels": {"clarion.io/api-key": "true"},
                     "annotations": {"clarion.io/channels": "orders", **(annotations or {})}},
        "data": data,
    }


def refusal(body: dict[str, Any]) -> str:
    with pytest.raises(InvalidApiKey) as caught:
        ApiKeySecret.parse(body)
    return caught.value.message


def test_a_minimal_secret_parses_into_the_hash_the_channels_and_no_limit() -> None:
    key = ApiKeySecret.parse(secret())
    assert key.namespace == "shop" and key.name == "backend-key" and key.uid == "0b8f-uid"
    assert key.key_sha256 == hashlib.sha256(KEY.encode()).hexdigest()
    assert key.channels == ("orders",)
    assert key.rate_per_minute is None and key.burst is None and key.revoked is False
    assert key.subject == "shop/backend-key"


def test_the_key_never_appears_in_the_parsed_model() -> None:
    dumped = ApiKeySecret.parse(secret()).model_dump_json()
    assert KEY not in dumped and base64.b64encode(KEY.encode()).decode() not in dumped


def test_surrounding_whitespace_of_the_key_is_dropped() -> None:
    assert ApiKeySecret.parse(secret(KEY + "\n")).key_sha256 == hashlib.sha256(KEY.encode()).hexdigest()


@pytest.mark.parametrize(("value", "expected"), [
    ("orders", ("orders",)),
    ("orders, alerts ,orders,", ("alerts", "orders")),
    ("*", ("*",)),
    (" * ", ("*",)),
    ("team.alerts", ("team.alerts",)),
])
def test_channels_are_a_sorted_list_of_names_or_the_wildcard(value: str, expected: tuple[str, ...]) -> None:
    assert ApiKeySecret.parse(secret(annotations={"clarion.io/channels": value})).channels == expected


@pytest.mark.parametrize(("value", "per_minute"), [
    ("600/min", 600), ("600 / min", 600), ("20/s", 1200), ("1/minute", 1), ("3/sec", 180), ("7/M", 7),
])
def test_rate_limits_are_kept_per_minute(value: str, per_minute: int) -> None:
    key = ApiKeySecret.parse(secret(annotations={"clarion.io/rate-limit": value}))
    assert key.rate_per_minute == per_minute
    assert key.burst == burst_of(per_minute)


def test_burst_is_ten_seconds_of_the_rate_and_at_least_one() -> None:
    assert burst_of(600) == 100
    assert burst_of(6) == 1
    assert burst_of(1) == 1
    assert burst_of(7) == 2


@pytest.mark.parametrize(("value", "revoked"), [("true", True), ("True", True), ("false", False)])
def test_the_revoked_annotation_revokes(value: str, revoked: bool) -> None:
    assert ApiKeySecret.parse(secret(annotations={"clarion.io/revoked": value})).revoked is revoked


@pytest.mark.parametrize(("body", "words"), [
    (secret(None), "data.key is missing"),
    (secret(raw_data={"key": "not base64!"}), "data.key is not base64"),
    (secret("a" * 31), "holds 31 bytes; an API key needs at least 32"),
    (secret("  " + "a" * 31 + "\n"), "holds 31 bytes"),
    (secret("a" * 513), "at most 512"),
    (secret("a" * 31 + " b"), "characters of a bearer token"),
    (secret("ä" * 20), "characters of a bearer token"),
])
def test_a_bad_key_is_refused_with_a_message_naming_data_key(body: dict[str, Any], words: str) -> None:
    assert words in refusal(body)


def test_a_short_key_is_refused_without_showing_it() -> None:
    short = "s3cr3t-but-short"
    message = refusal(secret(short))
    assert short not in message and "at least 32" in message


@pytest.mark.parametrize(("annotations", "words"), [
    ({"clarion.io/channels": ""}, "names no channel"),
    ({"clarion.io/channels": " , "}, "names no channel"),
    ({"clarion.io/channels": "*, orders"}, "stands alone"),
    ({"clarion.io/channels": "Orders"}, "'Orders' is not a channel name"),
    ({"clarion.io/channels": "ns/orders"}, "is not a channel name"),
    ({"clarion.io/rate-limit": "600"}, "clarion.io/rate-limit: '600' is not a rate"),
    ({"clarion.io/rate-limit": "10/h"}, "write it like 600/min or 20/s"),
    ({"clarion.io/rate-limit": "0/min"}, "between 1/min and"),
    ({"clarion.io/rate-limit": "20000/s"}, "between 1/min and"),
    ({"clarion.io/rate-limit": ""}, "is not a rate"),
    ({"clarion.io/revoked": "yes"}, 'clarion.io/revoked must be "true" or "false"'),
])
def test_bad_annotations_are_refused_with_a_message_naming_the_annotation(
        annotations: dict[str, str], words: str) -> None:
    assert words in refusal(secret(annotations=annotations))


def test_the_channels_annotation_is_required() -> None:
    body = secret()
    del body["metadata"]["annotations"]["clarion.io/channels"]
    assert "annotation clarion.io/channels is required" in refusal(body)


def test_too_many_channels_are_refused() -> None:
    names = ",".join(f"c{i}" for i in range(257))
    assert "at most 256" in refusal(secret(annotations={"clarion.io/channels": names}))
