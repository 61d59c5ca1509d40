"""API keys: Secrets labelled `clarion.io/api-key: "true"`, parsed once into `ApiKeySecret`.

The format (docs/api-keys.md), checked here and nowhere else:

- `data.key`: the key clients send as `Authorization: Bearer <key>`. Surrounding whitespace is dropped;
  what remains must be 32 to 512 bytes of bearer-token characters (`A-Z a-z 0-9 - . _ ~ + /`, then
  optional `=` padding: RFC 6750's b64token), e.g. `openssl rand -base64 32`. Only its SHA-256 leaves
  the parser.
- annotation `clarion.io/channels` (required): comma-separated names of channels in the Secret's
  namespace, or `*` for all of them.
- annotation `clarion.io/rate-limit` (optional): `<n>/min` or `<n>/s`, kept as requests per minute;
  absent: unlimited.
- annotation `clarion.io/revoked` (optional): `"true"` revokes the key, `"false"` (or absent) does not.

`ApiKeySecret.parse(body)` is pure: it returns the typed key or raises `InvalidApiKey`, whose message
names the field at fault and never contains the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clarion.models.base import DNS_SUBDOMAIN

API_KEY_LABEL = "clarion.io/api-key"
CHANNELS_ANNOTATION = "clarion.io/channels"
RATE_LIMIT_ANNOTATION = "clarion.io/rate-limit"
REVOKED_ANNOTATION = "clarion.io/revoked"
KEY_FIELD = "key"
#: Every channel of the key's namespace.
ALL_CHANNELS = "*"

MIN_KEY_BYTES = 32
MAX_KEY_BYTES = 512
MAX_CHANNELS = 256
MAX_RATE_PER_MINUTE = 1_000_000
#: A key may send this many seconds' worth of its rate at once before it is held to the rate.
BURST_SECONDS = 10

#: What a bearer token may hold (RFC 6750 b64token): the key in a Secret and in the Authorization header.
BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_RATE = re.compile(r"^(\d{1,9})\s*/\s*(s|sec|second|m|min|minute)$")
_PER_MINUTE = {"s": 60, "sec": 60, "second": 60, "m": 1, "min": 1, "minute": 1}

#: A channel name of the key's namespace, or `*`.
ChannelEntry = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^\*$|" + DNS_SUBDOMAIN)]


class InvalidApiKey(ValueError):
    """A Secret labelled as an API key that cannot be one; `message` says why (never the key)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def burst_of(rate_per_minute: int) -> int:
    """How many requests a key with this rate may make at once: BURST_SECONDS of its rate, at least 1."""
    return max(1, math.ceil(rate_per_minute * BURST_SECONDS / 60))


def parse_channels(value: str | None) -> tuple[str, ...]:
    """`a, b,c` → ('a', 'b', 'c') sorted and without repeats; `*` → ('*',)."""
    if value is None:
        raise InvalidApiKey(f"annotation {CHANNELS_ANNOTATION} is required: the channel names this key may "
                            f"use, comma-separated, or {ALL_CHANNELS!r} for every channel of the namespace")
    names = {part.strip() for part in value.split(",")} - {""}
    if not names:
        raise InvalidApiKey(f"annotation {CHANNELS_ANNOTATION} names no channel")
    if ALL_CHANNELS in names:
        if len(names) > 1:
            raise InvalidApiKey(f"annotation {CHANNELS_ANNOTATION}: {ALL_CHANNELS!r} stands alone "
                                "(it already means every channel of the namespace)")
        return (ALL_CHANNELS,)
    if len(names) > MAX_CHANNELS:
        raise InvalidApiKey(f"annotation {CHANNELS_ANNOTATION} names {len(names)} channels; at most "
                            f"{MAX_CHANNELS}")
    bad = sorted(n for n in names if len(n) > 253 or not re.match(DNS_SUBDOMAIN, n))
    if bad:
        shown = ", ".join(repr(n[:64]) for n in bad[:3])
        raise InvalidApiKey(f"annotation {CHANNELS_ANNOTATION}: {shown} is not a channel name "
                            "(lower-case letters, digits, '-' and '.')")
    return tuple(sorted(names))


def parse_rate(value: str | None) -> int | None:
    """`600/min` → 600, `20/s` → 1200 (requests per minute); None (absent) → None, unlimited."""
    if value is None:
        return None
    match = _RATE.match(value.strip().lower())
    if match is None:
        raise InvalidApiKey(f"annotation {RATE_LIMIT_ANNOTATION}: {value[:64]!r} is not a rate; "
                            "write it like 600/min or 20/s, or remove the annotation for no limit")
    per_minute = int(match.group(1)) * _PER_MINUTE[match.group(2)]
    if not 1 <= per_minute <= MAX_RATE_PER_MINUTE:
        raise InvalidApiKey(f"annotation {RATE_LIMIT_ANNOTATION}: {value[:64]!r} must be between 1/min and "
                            f"{MAX_RATE_PER_MINUTE}/min")
    return per_minute


def parse_revoked(value: str | None) -> bool:
    if value is None or value.strip().lower() == "false":
        return False
    if value.strip().lower() == "true":
        return True
    raise InvalidApiKey(f'annotation {REVOKED_ANNOTATION} must be "true" or "false", not {value[:64]!r}')


def key_digest(data: Mapping[str, Any]) -> str:
    """The hex SHA-256 of the key in a Secret's (base64) `data`; raises InvalidApiKey when it is no key."""
    encoded = data.get(KEY_FIELD)
    if not isinstance(encoded, str) or not encoded:
        raise InvalidApiKey(f"data.{KEY_FIELD} is missing: put the key there "
                            "(e.g. kubectl create secret generic NAME --from-literal=key=$(openssl rand "
                            "-base64 32))")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidApiKey(f"data.{KEY_FIELD} is not base64") from exc
    key = raw.strip()
    if len(key) < MIN_KEY_BYTES:
        raise InvalidApiKey(f"data.{KEY_FIELD} holds {len(key)} bytes; an API key needs at least "
                            f"{MIN_KEY_BYTES} (e.g. openssl rand -base64 32)")
    if len(key) > MAX_KEY_BYTES:
        raise InvalidApiKey(f"data.{KEY_FIELD} holds {len(key)} bytes; at most {MAX_KEY_BYTES}")
    if not BEARER_TOKEN.fullmatch(key.decode("latin-1")):
        raise InvalidApiKey(f"data.{KEY_FIELD} may only hold the characters of a bearer token: "
                            "A-Z a-z 0-9 - . _ ~ + / and trailing '='")
    return hashlib.sha256(key).hexdigest()


class ApiKeySecret(BaseModel):
    """One API key as its Secret declares it; the key itself appears only as its SHA-256."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespace: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=253)
    uid: str = Field(min_length=1, max_length=128)
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    channels: tuple[ChannelEntry, ...] = Field(min_length=1, max_length=MAX_CHANNELS)
    """Channel names of the namespace, sorted; `('*',)`: every channel of the namespace."""
    rate_per_minute: int | None = Field(default=None, ge=1, le=MAX_RATE_PER_MINUTE)
    """None: unlimited."""
    revoked: bool = False

    @property
    def subject(self) -> str:
        """`namespace/name`: the Secret, as audit entries and logs name it."""
        return f"{self.namespace}/{self.name}"

    @property
    def burst(self) -> int | None:
        return None if self.rate_per_minute is None else burst_of(self.rate_per_minute)

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Self:
        """The API key a Secret body (a kopf Body or the dict the API server sends) declares.

        Raises InvalidApiKey naming the first problem. The label is not looked at: whether a Secret
        is meant as an API key at all is the caller's decision.
        """
        meta = body.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        key_sha256 = key_digest(body.get("data") or {})
        try:
            return cls(
                namespace=meta.get("namespace") or "", name=meta.get("name") or "", uid=meta.get("uid") or "",
                key_sha256=key_sha256,
                channels=parse_channels(annotations.get(CHANNELS_ANNOTATION)),
                rate_per_minute=parse_rate(annotations.get(RATE_LIMIT_ANNOTATION)),
                revoked=parse_revoked(annotations.get(REVOKED_ANNOTATION)),
            )
        except ValidationError as exc:  # metadata the API server would never send
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise InvalidApiKey(f"metadata: {problems}") from None
