"""`POST /api/v1/push-subscriptions`: a browser's web push subscription (PushSubscription.toJSON()) for
one recipient of a webpush channel, and the API's answer (docs/notifications.md, "Web push")."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import Field, field_validator

from clarion import webpush
from clarion.models.base import CamelModel
from clarion.models.notification import ChannelRef

#: A push endpoint: an https URL of the push service (RFC 8030 §5).
PUSH_ENDPOINT = r"^https://[^\s/?#\x00]+/[^\s\x00]*$"


class PushSubscriptionKeys(CamelModel):
    """The subscription's keys, base64url (padding optional)."""

    p256dh: str = Field(min_length=1, max_length=90,
                        description="The browser's ECDH public key: a 65-byte uncompressed P-256 point.")
    auth: str = Field(min_length=1, max_length=24, description="The 16-byte authentication secret.")

    @field_validator("p256dh")
    @classmethod
    def _point(cls, value: str) -> str:
        try:
            webpush.p256_public_key(value)
        except webpush.KeyProblem as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("auth")
    @classmethod
    def _secret(cls, value: str) -> str:
        try:
            raw = webpush.b64url_decode(value)
        except webpush.KeyProblem as exc:
            raise ValueError(str(exc)) from None
        if len(raw) != 16:
            raise ValueError(f"must be a 16-byte secret, not {len(raw)} bytes")
        return value


class PushSubscriptionBody(CamelModel):
    """PushSubscription.toJSON() as the browser gives it."""

    endpoint: str = Field(max_length=2048, pattern=PUSH_ENDPOINT,
                          description="The push service's URL for this subscription (https).")
    expiration_time: float | None = Field(
        default=None, ge=0, le=8.64e15,
        description="When the subscription expires, in milliseconds since 1970 (null: no known expiry).")
    keys: PushSubscriptionKeys

    @property
    def expires_at(self) -> datetime | None:
        if self.expiration_time is None:
            return None
        return datetime.fromtimestamp(self.expiration_time / 1000, UTC)


class PushSubscriptionRequest(ChannelRef):
    """`POST /api/v1/push-subscriptions`: register a browser of `recipient` on a webpush channel."""

    recipient: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00]+$",
                           description="Your own id of the person (what events name as the recipient).")
    subscription: PushSubscriptionBody


class PushSubscriptionView(CamelModel):
    """A registered subscription: its id is the recipient of web push notifications
    (`pushSubscriptionId` of an event's recipient)."""

    id: str
    channel: str
    recipient: str
    endpoint: str
    expires_at: datetime | None = None
    created_at: datetime
    last_sent_at: datetime | None = None
