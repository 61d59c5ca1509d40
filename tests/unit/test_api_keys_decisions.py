"""What one event of a Secret means for its API key (`clarion_operator.api_keys.decide`), and who a key row
lets in (`ApiKeyRow.allows`)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from clarion.db.api_keys import ApiKeyRow
from clarion.models import ApiKeySecret, InvalidApiKey
from clarion_operator.api_keys import Act, decide

pytestmark = pytest.mark.unit

UID = "uid-1"
KEY = ApiKeySecret(namespace="shop", name="backend", uid=UID, channels=("orders",),
                   key_sha256=hashlib.sha256(b"k" * 32).hexdigest())


def test_a_valid_labelled_secret_is_synced() -> None:
    for usable in (False, True):
        decision = decide(deleted=False, label="true", parsed=KEY, usable=usable, uid=UID)
        assert decision.act == Act.SYNC and decision.key == KEY


def test_a_revoked_annotation_is_still_a_sync_of_a_revoked_row() -> None:
    revoked = KEY.model_copy(update={"revoked": True})
    decision = decide(deleted=False, label="true", parsed=revoked, usable=True, uid=UID)
    assert decision.act == Act.SYNC and decision.key is not None and decision.key.revoked


def test_an_invalid_labelled_secret_is_refused_with_the_parsers_message() -> None:
    for usable in (False, True):
        decision = decide(deleted=False, label="true", parsed=InvalidApiKey("data.key is missing"),
                          usable=usable, uid=UID)
        assert decision.act == Act.REFUSE and decision.reason == "data.key is missing"


def test_a_label_that_is_neither_true_nor_false_is_refused() -> None:
    decision = decide(deleted=False, label="yes", parsed=None, usable=False, uid=UID)
    assert decision.act == Act.REFUSE and 'must be "true"' in decision.reason


def test_an_unlabelled_secret_that_never_was_a_key_is_ignored() -> None:
    for label in (None, "false"):
        assert decide(deleted=False, label=label, parsed=None, usable=False, uid=UID).act == Act.IGNORE
        assert decide(deleted=True, label=label, parsed=None, usable=False, uid=UID).act == Act.IGNORE


def test_removing_the_label_of_a_usable_key_revokes_it_whatever_secret_holds_the_row() -> None:
    for label in (None, "false"):
        decision = decide(deleted=False, label=label, parsed=None, usable=True, uid=UID)
        assert decision.act == Act.REVOKE and decision.secret_uid is None
        assert "no longer labelled" in decision.reason


def test_deleting_a_key_secret_revokes_only_that_secrets_row() -> None:
    for label, usable in (("true", False), ("true", True), (None, True)):
        decision = decide(deleted=True, label=label, parsed=None, usable=usable, uid=UID)
        assert decision.act == Act.REVOKE and decision.secret_uid == UID
        assert decision.reason == "the Secret was deleted"


def test_deciding_on_an_unparsed_key_secret_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="must be parsed"):
        decide(deleted=False, label="true", parsed=None, usable=False, uid=UID)


def _row(channels: tuple[str, ...]) -> ApiKeyRow:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    return ApiKeyRow(id=7, namespace="shop", name="backend", secret_uid=UID, key_sha256="0" * 64,
                     channels=channels, rate_per_minute=None, revoked=False, created_at=now, updated_at=now)


def test_a_key_allows_its_listed_channels_of_its_own_namespace_only() -> None:
    row = _row(("alerts", "orders"))
    assert row.allows("shop", "orders") and row.allows("shop", "alerts")
    assert not row.allows("shop", "billing")
    assert not row.allows("other", "orders")
    assert row.key_id == 7 and row.may_use("orders") and not row.may_use("billing")


def test_a_wildcard_key_allows_every_channel_of_its_namespace_only() -> None:
    row = _row(("*",))
    assert row.allows("shop", "orders") and row.allows("shop", "anything")
    assert not row.allows("other", "orders")
