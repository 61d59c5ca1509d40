"""Web push's cryptography, through maintained libraries (ADR 0011): message encryption per RFC 8291
(aes128gcm, RFC 8188) with `http_ece`, VAPID (RFC 8292) with `py_vapid`.

One module for the three users: the operator checks a channel's VAPID key (`vapid_key`), the API checks
a browser's subscription keys (`subscription_keys`), the worker encrypts (`encrypt`) and signs
(`vapid_authorization`); the devtools push-service stand-in uses the same decoding to check them.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import http_ece
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

#: The content coding of every message (RFC 8291 §4).
CONTENT_ENCODING = "aes128gcm"
#: The record size of the one record a message is (RFC 8291 §4: at most 4096).
RECORD_SIZE = 4096
#: A push message's largest encrypted body that push services must accept (RFC 8030 §7.2).
MAX_ENCRYPTED_BYTES = 4096
#: The largest plaintext that fits (RFC 8291 §4: 3993 octets): MAX_ENCRYPTED_BYTES less the header
#: (86: salt, record size, key id length, the 65-byte key), the padding delimiter (1) and the tag (16).
MAX_PAYLOAD_BYTES = MAX_ENCRYPTED_BYTES - 86 - 1 - 16
#: The longest a VAPID token may be valid (RFC 8292 §2: at most 24 hours from the request).
MAX_VAPID_SECONDS = 24 * 3600
#: How long the tokens this module signs are valid.
VAPID_SECONDS = 12 * 3600
_P256_POINT_BYTES = 65
_AUTH_BYTES = 16


class KeyProblem(ValueError):
    """A key that cannot be used; the message says why (safe to show: it never holds the key)."""


def b64url_decode(value: str) -> bytes:
    """Base64url with or without padding (browsers send it without); `KeyProblem` if it is not."""
    text = value.strip()
    if not text or any(c not in _B64URL for c in text.rstrip("=")):
        raise KeyProblem("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise KeyProblem("not base64url") from exc


def b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def public_point(key: ec.EllipticCurvePublicKey) -> bytes:
    """The uncompressed P-256 point (65 bytes, 0x04 ‖ x ‖ y) of `key`."""
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def p256_public_key(value: str) -> ec.EllipticCurvePublicKey:
    """A base64url uncompressed P-256 point (a subscription's p256dh) as a key; `KeyProblem` if it is
    not one."""
    raw = b64url_decode(value)
    if len(raw) != _P256_POINT_BYTES or raw[0] != 4:
        raise KeyProblem(f"must be a 65-byte uncompressed P-256 point (0x04 ‖ x ‖ y), not {len(raw)} bytes")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError as exc:
        raise KeyProblem("is not a point on the P-256 curve") from exc


def p256_private_key(raw: bytes) -> ec.EllipticCurvePrivateKey:
    """The P-256 private key of a 32-byte scalar; `KeyProblem` if it is not one."""
    if len(raw) != 32:
        raise KeyProblem(f"must be a 32-byte P-256 private key, not {len(raw)} bytes")
    try:
        return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
    except ValueError as exc:
        raise KeyProblem("is not a P-256 private key (0 or not below the group order)") from exc


@dataclass(frozen=True)
class SubscriptionKeys:
    """A browser's subscription keys (PushSubscription.toJSON().keys), decoded and checked."""

    p256dh: bytes
    auth: bytes


def subscription_keys(p256dh: str, auth: str) -> SubscriptionKeys:
    """The keys of a subscription; `KeyProblem` naming the field ("p256dh: …", "auth: …") if one is bad."""
    try:
        point = public_point(p256_public_key(p256dh))
    except KeyProblem as exc:
        raise KeyProblem(f"p256dh: {exc}") from None
    try:
        secret = b64url_decode(auth)
    except KeyProblem as exc:
        raise KeyProblem(f"auth: {exc}") from None
    if len(secret) != _AUTH_BYTES:
        raise KeyProblem(f"auth: must be a 16-byte secret, not {len(secret)} bytes")
    return SubscriptionKeys(point, secret)


def encrypt(payload: bytes, keys: SubscriptionKeys, *, sender: ec.EllipticCurvePrivateKey | None = None,
            salt: bytes | None = None) -> bytes:
    """The aes128gcm body of `payload` for the subscription (RFC 8291 §4: one record, the sender's
    ephemeral public key as the key id). `sender` and `salt` are new random ones unless given (the
    RFC's example fixes both)."""
    key = sender or ec.generate_private_key(ec.SECP256R1())
    body: bytes = http_ece.encrypt(payload, salt=salt, private_key=key, dh=keys.p256dh,
                                   auth_secret=keys.auth, rs=RECORD_SIZE, version=CONTENT_ENCODING)
    return body


def decrypt(body: bytes, receiver: ec.EllipticCurvePrivateKey, auth: bytes) -> bytes:
    """What a browser does with a push message: the plaintext of an aes128gcm body (the stand-in)."""
    plain: bytes = http_ece.decrypt(body, private_key=receiver, auth_secret=auth, version=CONTENT_ENCODING)
    return plain


@dataclass(frozen=True)
class VapidKey:
    """A channel's VAPID key pair (RFC 8292 §3.2)."""

    vapid: Any  # py_vapid.Vapid02, untyped

    @property
    def public_key(self) -> str:
        """The applicationServerKey a browser subscribes with: the public point, base64url."""
        return b64url_encode(public_point(self.vapid.public_key))

    def authorization(self, endpoint: str, subject: str, *, now: float | None = None,
                      valid_seconds: int = VAPID_SECONDS) -> str:
        """The `Authorization: vapid t=<JWT>,k=<public key>` header for a request to `endpoint`: an
        ES256 JWT with aud the endpoint's origin, exp `valid_seconds` ahead (at most 24 h), sub."""
        issued = time.time() if now is None else now
        claims = {"aud": origin(endpoint), "exp": int(issued) + min(valid_seconds, MAX_VAPID_SECONDS),
                  "sub": subject}
        header: str = self.vapid.sign(claims)["Authorization"]
        return header


def vapid_key(value: str) -> VapidKey:
    """The VAPID key of a Secret's value: the 32-byte P-256 private scalar, base64url; `KeyProblem`
    (never showing the value) if it is not one."""
    private = p256_private_key(b64url_decode(value))
    # py_vapid checks `sub` against its own mailto/https-host pattern; the channel model checks it
    vapid = Vapid02(conf={"no-strict": True})
    vapid.private_key = private
    return VapidKey(vapid)


def origin(endpoint: str) -> str:
    """The origin (scheme://host[:port]) of a push endpoint: a VAPID token's `aud`."""
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


def notification_content(text: str, subject: str | None = None, url: str | None = None) -> dict[str, str]:
    """The outbox content of a web push notification from a message's text and subject: the subject is
    the title and the text its body; without a subject the text is the title (a push shows a title
    first, and may show no body at all). `url`: the page opened when it is clicked."""
    content = {"title": subject, "body": text} if subject else {"title": text, "body": ""}
    if url is not None:
        content["url"] = url
    return content


def payload(content: dict[str, Any], notification_id: str) -> bytes:
    """What the service worker's push event reads (`event.data.json()`): title, body, url and the
    notification's id, as compact JSON."""
    fields: dict[str, Any] = {k: content[k] for k in ("title", "body", "url") if k in content}
    fields["id"] = notification_id
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()


def payload_problem(content: dict[str, Any]) -> str | None:
    """Why this content cannot be one push message (too long once encoded), or None."""
    size = len(payload(content, "00000000-0000-0000-0000-000000000000"))
    if size > MAX_PAYLOAD_BYTES:
        return (f"a web push message holds at most {MAX_PAYLOAD_BYTES} bytes of title, body and url "
                f"(as JSON); this one has {size}")
    return None
