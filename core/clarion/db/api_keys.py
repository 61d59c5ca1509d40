"""API key rows: written by the operator from labelled Secrets, read by the webhook (docs/api-keys.md).

One row per Secret, keyed by (namespace, name); the key itself is never stored, only its SHA-256.
A row is never deleted (notifications and idempotency records refer to it): a deleted, revoked or
invalid Secret leaves its row with `revoked = true`. Migration 0009 announces every changed row's id on
`clarion_api_keys`, which the webhook's copy follows.

Every write is idempotent, so a handler that runs twice (a repeated event, a restart, the sweep
racing an event) changes nothing the second time and writes no second audit row:

- `sync_api_key` compares the row with the Secret first and writes (and audits) only a difference;
- `revoke_api_key` only turns `revoked` from false to true (`WHERE NOT revoked`), optionally only
  while the row still belongs to the Secret with a given uid (compare-and-set: a Secret re-created
  under the same name is not revoked by its predecessor's deletion);
- `refuse_api_key` audits a refusal only when it is news: when the subject's latest API-key audit
  entry is not the same refusal.

Writes of one Secret are serialised by a transaction-scoped advisory lock on its `namespace/name`.
Audit entries (`audit_log`): actor `operator`, subject `namespace/name`, action `api_key.synced`,
`api_key.revoked` or `api_key.invalid`; details hold the Secret's uid, channels, rate and reason and
a 12-character fingerprint of the hash, never the key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from clarion.db.pool import Db
from clarion.models.api_key import ALL_CHANNELS, ApiKeySecret

#: The notification channel on which Postgres announces each changed key row (migration 0009).
#: Payload: the row's id, or '' when every row may have changed (TRUNCATE).
API_KEYS_NOTIFY = "clarion_api_keys"
AUDIT_ACTOR = "operator"
_LOCK_PREFIX = "clarion-api-key:"


class AuditAction(StrEnum):
    SYNCED = "api_key.synced"
    REVOKED = "api_key.revoked"
    INVALID = "api_key.invalid"


class KeyInUse(Exception):
    """Another API key row already holds this key's hash: the same key in two Secrets."""


@dataclass(frozen=True)
class ApiKeyRow:
    """One `api_keys` row; as the webhook's principal, `key_id`, `namespace` and `may_use` answer."""

    id: int
    namespace: str
    name: str
    secret_uid: str
    key_sha256: str
    channels: tuple[str, ...]
    rate_per_minute: int | None
    revoked: bool
    created_at: datetime
    updated_at: datetime

    @property
    def key_id(self) -> int:
        return self.id

    @property
    def subject(self) -> str:
        return f"{self.namespace}/{self.name}"

    def may_use(self, channel: str) -> bool:
        """May this key send through `channel` (a channel name of its own namespace)?"""
        return channel in self.channels or ALL_CHANNELS in self.channels

    def allows(self, namespace: str, channel: str) -> bool:
        """May this key use channel `namespace`/`channel`?"""
        return namespace == self.namespace and self.may_use(channel)

    def holds(self, key: ApiKeySecret) -> bool:
        """Does the row already say what the Secret says?"""
        return (self.secret_uid, self.key_sha256, self.channels, self.rate_per_minute, self.revoked) == (
            key.uid, key.key_sha256, key.channels, key.rate_per_minute, key.revoked)


def _row(record: Any) -> ApiKeyRow:
    return ApiKeyRow(
        id=record["id"], namespace=record["namespace"], name=record["name"], secret_uid=record["secret_uid"],
        key_sha256=record["key_sha256"], channels=tuple(record["channels"]),
        rate_per_minute=record["rate_per_minute"], revoked=record["revoked"],
        created_at=record["created_at"], updated_at=record["updated_at"],
    )


def _maybe_row(record: Any) -> ApiKeyRow | None:
    return None if record is None else _row(record)


def fingerprint(key_sha256: str) -> str:
    """What audit entries and logs show of a key: the first 12 hex digits of its hash."""
    return key_sha256[:12]


@asynccontextmanager
async def _locked(db: Db, namespace: str, name: str) -> AsyncIterator[Any]:
    """A transaction holding the advisory lock of one Secret's row."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn, conn.transaction():
            await _lock(conn, namespace, name)
            yield conn
    else:
        async with db.transaction():
            await _lock(db, namespace, name)
            yield db


async def _lock(conn: Any, namespace: str, name: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                       f"{_LOCK_PREFIX}{namespace}/{name}")


async def _audit(conn: Any, action: AuditAction, subject: str, details: dict[str, Any]) -> None:
    await conn.execute("INSERT INTO audit_log (actor, action, subject, details) VALUES ($1, $2, $3, $4)",
                       AUDIT_ACTOR, action.value, subject, details)


async def _select(conn: Any, namespace: str, name: str) -> ApiKeyRow | None:
    return _maybe_row(await conn.fetchrow("SELECT * FROM api_keys WHERE namespace = $1 AND name = $2",
                                          namespace, name))


async def sync_api_key(db: Db, key: ApiKeySecret) -> ApiKeyRow | None:
    """Make the row of the key's Secret say what the Secret says; the row when it changed, else None.

    Idempotent: when the row already holds these values nothing is written (no NOTIFY, no audit).
    A change is audited as `api_key.revoked` when it revokes the key (the `clarion.io/revoked`
    annotation), else as `api_key.synced`. Raises KeyInUse, writing nothing, when another row holds
    the same hash.
    """
    async with _locked(db, key.namespace, key.name) as conn:
        before = await _select(conn, key.namespace, key.name)
        if before is not None and before.holds(key):
            return None
        try:
            after = _row(await conn.fetchrow(
                """INSERT INTO api_keys (namespace, name, secret_uid, key_sha256, channels, rate_per_minute,
                                         revoked)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)
                   ON CONFLICT (namespace, name) DO UPDATE SET
                       secret_uid = EXCLUDED.secret_uid, key_sha256 = EXCLUDED.key_sha256,
                       channels = EXCLUDED.channels, rate_per_minute = EXCLUDED.rate_per_minute,
                       revoked = EXCLUDED.revoked, updated_at = now()
                   RETURNING *""",
                key.namespace, key.name, key.uid, key.key_sha256, list(key.channels), key.rate_per_minute,
                key.revoked))
        except asyncpg.UniqueViolationError as exc:
            raise KeyInUse(key.subject) from exc
        revoking = after.revoked and (before is None or not before.revoked)
        details: dict[str, Any] = {
            "secret_uid": key.uid, "fingerprint": fingerprint(key.key_sha256), "channels": list(key.channels),
            "rate_per_minute": key.rate_per_minute, "revoked": key.revoked,
        }
        if revoking:
            details["reason"] = "the Secret's clarion.io/revoked annotation is true"
        await _audit(conn, AuditAction.REVOKED if revoking else AuditAction.SYNCED, key.subject, details)
        return after


async def revoke_api_key(db: Db, namespace: str, name: str, *, reason: str,
                         secret_uid: str | None = None) -> ApiKeyRow | None:
    """Revoke the row of Secret `namespace/name`; the row when this call revoked it, else None.

    With `secret_uid`, only while the row belongs to that Secret (compare-and-set). Idempotent: a
    revoked row (or none) is left as it is and nothing is audited.
    """
    async with _locked(db, namespace, name) as conn:
        row = await _revoke(conn, namespace, name, secret_uid)
        if row is not None:
            await _audit(conn, AuditAction.REVOKED, row.subject,
                         {"secret_uid": row.secret_uid, "fingerprint": fingerprint(row.key_sha256),
                          "reason": reason})
        return row


async def _revoke(conn: Any, namespace: str, name: str, secret_uid: str | None) -> ApiKeyRow | None:
    return _maybe_row(await conn.fetchrow(
        """UPDATE api_keys SET revoked = true, updated_at = now()
           WHERE namespace = $1 AND name = $2 AND NOT revoked AND ($3::text IS NULL OR secret_uid = $3)
           RETURNING *""",
        namespace, name, secret_uid))


async def refuse_api_key(db: Db, namespace: str, name: str, *, secret_uid: str, reason: str) -> bool:
    """An invalid Secret: revoke its row if it had a usable one, and audit `api_key.invalid`.

    Idempotent: the refusal is audited only when the row was revoked now or when the subject's
    latest API-key audit entry is not this same refusal. True when anything was written.
    """
    subject = f"{namespace}/{name}"
    async with _locked(db, namespace, name) as conn:
        revoked = await _revoke(conn, namespace, name, None)
        if revoked is None:
            latest = await conn.fetchrow(
                """SELECT action, details FROM audit_log
                   WHERE subject = $1 AND action LIKE 'api_key.%' ORDER BY id DESC LIMIT 1""",
                subject)
            if (latest is not None and latest["action"] == AuditAction.INVALID
                    and (latest["details"] or {}).get("reason") == reason
                    and (latest["details"] or {}).get("secret_uid") == secret_uid):
                return False
        details: dict[str, Any] = {"secret_uid": secret_uid, "reason": reason, "revoked": revoked is not None}
        await _audit(conn, AuditAction.INVALID, subject, details)
        return True


async def list_api_keys(db: Db, *, usable_only: bool = False) -> list[ApiKeyRow]:
    """Every key row, or with `usable_only` those not revoked; in id order."""
    records = await db.fetch("SELECT * FROM api_keys WHERE NOT (revoked AND $1) ORDER BY id", usable_only)
    return [_row(record) for record in records]


async def get_api_key(db: Db, key_id: int) -> ApiKeyRow | None:
    """The row with this id (revoked or not), or None."""
    return _maybe_row(await db.fetchrow("SELECT * FROM api_keys WHERE id = $1", key_id))


async def find_api_key(db: Db, key_sha256: str) -> ApiKeyRow | None:
    """The row holding this hash (revoked or not), or None."""
    return _maybe_row(await db.fetchrow("SELECT * FROM api_keys WHERE key_sha256 = $1", key_sha256))
