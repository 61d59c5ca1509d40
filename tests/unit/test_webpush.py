"""Web push cryptography (clarion.webpush, ADR 0011): the RFC 8291 example byte for byte through the
call the worker's transport makes, VAPID tokens that verify, the checks of keys, and what a push
service's answers mean."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from clarion import webpush
from clarion.models import ChannelReason, NotificationChannelSpec, WebPushDelivery
from clarion_operator.channel_logic import stored_config
from clarion_operator.credential_checks import check_vapid_key
from clarion_senders.transports import push_outcome, retry_after_seconds
from clarion_senders.worker import Outcome
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from py_vapid import Vapid02

pytestmark = pytest.mark.unit

# RFC 8291 Appendix A ("Intermediate Values for Encryption"), as published.
PLAINTEXT = b"When I grow up, I want to be a watermelon"
AS_PRIVATE = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"
AS_PUBLIC = "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"
UA_PRIVATE = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"
UA_PUBLIC = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
AUTH_SECRET = "BTBZMqHH6r4Tts7J_aSIgg"
SALT = "DGv6ra1nlYgDCS1FRnbzlw"
MESSAGE = ("DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml"
           "mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT"
           "pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN")


def test_rfc8291_example_encrypts_byte_for_byte() -> None:
    keys = webpush.subscription_keys(UA_PUBLIC, AUTH_SECRET)
    sender = webpush.p256_private_key(webpush.b64url_decode(AS_PRIVATE))
    assert webpush.b64url_encode(webpush.public_point(sender.public_key())) == AS_PUBLIC

    body = webpush.encrypt(PLAINTEXT, keys, sender=sender, salt=webpush.b64url_decode(SALT))

    assert body == webpush.b64url_decode(MESSAGE)


def test_rfc8291_example_decrypts_with_the_user_agent_key() -> None:
    receiver = webpush.p256_private_key(webpush.b64url_decode(UA_PRIVATE))
    plain = webpush.decrypt(webpush.b64url_decode(MESSAGE), receiver, webpush.b64url_decode(AUTH_SECRET))
    assert plain == PLAINTEXT


def test_random_sends_decrypt_and_differ() -> None:
    receiver = ec.generate_private_key(ec.SECP256R1())
    keys = webpush.subscription_keys(webpush.b64url_encode(webpush.public_point(receiver.public_key())),
                                     AUTH_SECRET)
    first, second = webpush.encrypt(PLAINTEXT, keys), webpush.encrypt(PLAINTEXT, keys)
    assert first != second
    assert webpush.decrypt(first, receiver, keys.auth) == PLAINTEXT
    assert webpush.decrypt(second, receiver, keys.auth) == PLAINTEXT


def _claims(header: str) -> tuple[dict[str, object], str, str]:
    scheme, _, rest = header.partition(" ")
    assert scheme == "vapid"
    parts = dict(p.split("=", 1) for p in rest.split(","))
    return json.loads(webpush.b64url_decode(parts["t"].split(".")[1])), parts["t"], parts["k"]


def test_vapid_token_verifies_with_audience_expiry_and_subject() -> None:
    key = webpush.vapid_key(AS_PRIVATE)
    now = time.time()
    header = key.authorization("https://push.example.net:8443/wpush/v2/abc?x=1", "mailto:ops@shop.example",
                               now=now)
    claims, token, k = _claims(header)

    assert k == key.public_key == AS_PUBLIC
    assert claims["aud"] == "https://push.example.net:8443"
    assert claims["sub"] == "mailto:ops@shop.example"
    assert now < float(claims["exp"]) <= now + 24 * 3600  # type: ignore[arg-type]
    assert Vapid02.verify(header)
    # the ES256 signature checked with cryptography alone: r ‖ s over header.payload
    signing_input, _, signature = token.rpartition(".")
    raw = webpush.b64url_decode(signature)
    public = webpush.p256_public_key(k)
    public.verify(encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")),
                  signing_input.encode(), ec.ECDSA(hashes.SHA256()))


def test_vapid_token_of_another_key_does_not_verify() -> None:
    header = webpush.vapid_key(AS_PRIVATE).authorization("https://push.example.net/x", "mailto:a@b.example")
    other = webpush.vapid_key(UA_PRIVATE).public_key
    forged = header.rsplit("k=", 1)[0] + "k=" + other
    assert not Vapid02.verify(forged)


def test_vapid_validity_is_capped_at_24_hours() -> None:
    now = time.time()
    header = webpush.vapid_key(AS_PRIVATE).authorization("https://p.example/x", "https://shop.example/contact",
                                                         now=now, valid_seconds=7 * 86400)
    claims, _, _ = _claims(header)
    assert float(claims["exp"]) <= now + 24 * 3600  # type: ignore[arg-type]


@pytest.mark.parametrize(("p256dh", "auth", "why"), [
    (UA_PUBLIC[:-4], AUTH_SECRET, "p256dh: must be a 65-byte uncompressed P-256 point"),
    ("B" + "A" * 86, AUTH_SECRET, "p256dh: is not a point on the P-256 curve"),
    (UA_PUBLIC, AUTH_SECRET + "AA", "auth: must be a 16-byte secret"),
    (UA_PUBLIC, "not base64!", "auth: not base64url"),
    ("+/+/", AUTH_SECRET, "p256dh: not base64url"),
])
def test_bad_subscription_keys_are_refused_naming_the_field(p256dh: str, auth: str, why: str) -> None:
    with pytest.raises(webpush.KeyProblem, match=why):
        webpush.subscription_keys(p256dh, auth)


def test_operator_accepts_a_p256_key_and_shows_its_public_key() -> None:
    check = check_vapid_key(AS_PRIVATE, "shop/vapid key 'private'")
    assert check.ready and check.credentials.reason == ChannelReason.VAPID_KEY_VALID
    assert check.vapid_public_key == AS_PUBLIC


@pytest.mark.parametrize(("value", "why"), [
    ("c2hvcnQ", "must be a 32-byte P-256 private key, not 5 bytes"),
    ("_" * 43, "is not a P-256 private key"),
    ("-----BEGIN EC PRIVATE KEY-----", "not base64url"),
])
def test_operator_refuses_what_is_not_a_vapid_key_with_the_reason(value: str, why: str) -> None:
    check = check_vapid_key(value, "shop/vapid key 'private'")
    assert not check.ready
    assert check.credentials.status == "False" and check.credentials.reason == ChannelReason.INVALID_VAPID_KEY
    assert why in check.credentials.message and "shop/vapid" in check.credentials.message
    assert value not in check.credentials.message
    assert check.vapid_public_key is None


def test_channel_row_holds_subject_defaults_and_public_key_never_the_secret() -> None:
    spec = NotificationChannelSpec.model_validate({"type": "webpush", "webpush": {
        "vapidPrivateKeySecretRef": {"name": "vapid", "key": "private"}, "subject": "mailto:ops@b.example",
        "urgency": "high"}})
    assert spec.webpush is not None
    config = stored_config(spec.webpush, AS_PUBLIC)
    assert config == {"subject": "mailto:ops@b.example", "ttlSeconds": 86400, "urgency": "high",
                      "vapidPublicKey": AS_PUBLIC}
    assert WebPushDelivery.from_config(config) == WebPushDelivery(subject="mailto:ops@b.example",
                                                                  urgency="high")


@pytest.mark.parametrize(("status", "retry_after", "outcome"), [
    (201, None, Outcome.SENT), (202, None, Outcome.SENT), (413, None, Outcome.FAILED),
    (429, "7", Outcome.RATE_LIMITED), (500, None, Outcome.RETRY), (503, None, Outcome.RETRY),
    (400, None, Outcome.FAILED), (403, None, Outcome.FAILED),
])
def test_push_service_answers_map_to_outcomes(status: int, retry_after: str | None, outcome: str) -> None:
    result = push_outcome(status, "", retry_after, size=5000)
    assert result.outcome == outcome
    if status == 429:
        assert result.retry_after == 7
    if status == 413:
        assert result.error is not None and "too large (5000 bytes encrypted" in result.error


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 12, 5, 7, 0, tzinfo=UTC)
    assert retry_after_seconds("30", now=now) == 30
    assert retry_after_seconds("Sat, 05 Dec 2026 07:01:30 GMT", now=now) == 90
    assert retry_after_seconds("soon", now=now) == 60
    assert retry_after_seconds(None, now=now) == 60
    assert retry_after_seconds("999999", now=now) == 3600
