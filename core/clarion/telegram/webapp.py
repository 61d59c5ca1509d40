"""Telegram Mini App initData: the check of its hash and the typed data (docs/support.md, ADR 0009).

Telegram's documented algorithm ("Validating data received via the Mini App"): the secret key is
HMAC-SHA256 with the key `WebAppData` over the bot token; the hash is the hex HMAC-SHA256 with that
key over the data-check string, every received field except `hash` (so `signature`, the Ed25519
signature for third parties, is one of them), sorted by name, `name=value` joined by a line feed.

The webhook holds only the derived key (`webapp_secret`, written by the operator into the channel
row), never the token. Parsing reuses aiogram's `WebAppInitData`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl

from aiogram.utils.web_app import parse_webapp_init_data
from pydantic import ValidationError

#: The HMAC key Telegram derives a bot's initData secret with.
WEBAPP_KEY = b"WebAppData"


class InitDataRefused(ValueError):
    """initData that is not to be trusted; `reason` says why (never the data itself)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class InitData:
    """What a checked initData says about who opened the Mini App, and with which start parameter."""

    user_id: int
    first_name: str
    last_name: str | None
    username: str | None
    language_code: str | None
    auth_date: datetime
    start_param: str | None

    @property
    def display_name(self) -> str:
        """The user's name as a chat shows it."""
        return " ".join(part for part in (self.first_name, self.last_name) if part)


def webapp_secret(token: str) -> bytes:
    """The key initData of this bot is signed with: HMAC-SHA256, key `WebAppData`, over the token."""
    return hmac.new(WEBAPP_KEY, token.encode(), hashlib.sha256).digest()


def sign_init_data(fields: dict[str, str], secret: bytes) -> str:
    """The hash Telegram puts beside these fields (tests and the dev tools make real-shaped initData)."""
    return hmac.new(secret, _check_string(fields).encode(), hashlib.sha256).hexdigest()


def _check_string(fields: dict[str, str]) -> str:
    return "\n".join(f"{name}={value}" for name, value in sorted(fields.items()))


def check_init_data(raw: str, secret: bytes, *, max_age: float, now: datetime) -> InitData:
    """The data of `raw` (the query string `Telegram.WebApp.initData`) once its hash is the one `secret`
    gives and its `auth_date` is at most `max_age` seconds before `now`; else `InitDataRefused`."""
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise InitDataRefused("not a query string") from None
    fields = dict(pairs)
    if len(fields) != len(pairs):
        raise InitDataRefused("a field appears twice")
    given = fields.pop("hash", None)
    if not given:
        raise InitDataRefused("missing hash")
    if not hmac.compare_digest(sign_init_data(fields, secret), given.lower()):
        raise InitDataRefused("bad hash")
    if "auth_date" not in fields or "user" not in fields:
        raise InitDataRefused("missing auth_date or user")
    try:
        data = parse_webapp_init_data(raw)
    except (ValidationError, ValueError, TypeError):
        raise InitDataRefused("malformed auth_date or user") from None
    if data.user is None:
        raise InitDataRefused("missing auth_date or user")
    auth_date = data.auth_date if data.auth_date.tzinfo else data.auth_date.replace(tzinfo=UTC)
    age = (now - auth_date).total_seconds()
    if age > max_age:
        raise InitDataRefused("stale auth_date")
    user = data.user
    return InitData(user_id=user.id, first_name=user.first_name or "", last_name=user.last_name,
                    username=user.username, language_code=user.language_code, auth_date=auth_date,
                    start_param=data.start_param)
