"""API keys in the webhook: a copy of the `api_keys` table, and the checks of the public API.

- `ApiKeyStore` holds the usable (not revoked) key rows by the SHA-256 of the key. It follows the
  table like the channel copy does (`follower.TableFollower`): LISTEN on `clarion_api_keys` (migration
  0009 notifies each changed row's id), a full reload at start, on reconnect and every
  `reload_seconds`, each notified row re-read by id. A revocation reaches every replica as soon as
  Postgres delivers the notification. While Postgres is down the copy is served as it was. A hash
  not in the copy is unknown: there is no lookup on a miss, so a stream of made-up keys costs no query.
- `ApiKeyGuard` runs the checks, each raising `Refused` (body `{"error": {"code", "message"}}`):
  `authenticate` (401 with `WWW-Authenticate: Bearer`; 503 while the copy was never loaded),
  `authorize` (403) and `check_rate` (429 with `Retry-After`, whole seconds, at least 1). The rate
  limit is `clarion.ratelimit.SharedRateLimit` in Redis, so all replicas share one budget per key;
  while Redis is unreachable requests are let through (and counted), since refusing them would turn a
  Redis outage into an outage of the API.

Wiring into FastAPI: docs/api-keys.md, "Using the keys in the API".
"""

from __future__ import annotations

import asyncio
import hashlib
import math

import asyncpg
from clarion.db.api_keys import API_KEYS_NOTIFY, ApiKeyRow, get_api_key, list_api_keys
from clarion.logging import get_logger
from clarion.metrics import counter, gauge
from clarion.models.api_key import BEARER_TOKEN, MAX_KEY_BYTES, burst_of
from clarion.outages import redis_unavailable
from clarion.ratelimit import SharedRateLimit
from clarion.streams import api_key_rate_key
from fastapi import Request

from clarion_webhook.errors import Refused
from clarion_webhook.follower import QUERY_TIMEOUT_SECONDS, TableFollower

CHECKS = counter("clarion_api_key_checks_total",
                 "API key checks of the public API by result: ok, missing, malformed, invalid, unavailable, "
                 "forbidden, rate_limited, limiter_unavailable.", ["result"])
STALE_SECONDS = gauge("clarion_api_key_cache_stale_seconds",
                      "Seconds since the API key copy was last known to be in sync with Postgres; 0 in sync.")
CACHED_KEYS = gauge("clarion_api_key_cache_keys", "Usable API keys in the webhook's copy.")

#: The challenge of every 401 (RFC 6750).
CHALLENGE = 'Bearer realm="clarion"'
UNAVAILABLE_RETRY_SECONDS = 5

log = get_logger("clarion.webhook.api_keys")


class ApiKeyStore:
    """Usable key rows by SHA-256, copied from Postgres and followed by LISTEN/NOTIFY; see the module doc."""

    def __init__(self, db: asyncpg.Pool, dsn: str, *, check_seconds: float = 5.0,
                 reload_seconds: float = 300.0) -> None:
        self._db = db
        self._by_hash: dict[str, ApiKeyRow] = {}
        self._by_id: dict[int, ApiKeyRow] = {}
        self._follower = TableFollower(
            dsn, API_KEYS_NOTIFY, what="api_key", count_name="keys", reload_all=self._reload_all,
            apply=self._apply_changes, size=self.__len__, check_seconds=check_seconds,
            reload_seconds=reload_seconds, log=log)

    def lookup(self, key_sha256: str) -> ApiKeyRow | None:
        """The usable key with this hash (lower-case hex), or None."""
        return self._by_hash.get(key_sha256)

    @property
    def loaded(self) -> bool:
        return self._follower.loaded

    @property
    def in_sync(self) -> bool:
        return self._follower.in_sync

    def stale_seconds(self) -> float:
        """0 while in sync; else the time since the copy was last in sync (or since start)."""
        return self._follower.stale_seconds()

    def __len__(self) -> int:
        return len(self._by_id)

    async def start(self, first_load_timeout: float = 10.0) -> None:
        """Start following Postgres; return once the first attempt loaded the copy or failed."""
        STALE_SECONDS.set_function(self.stale_seconds)
        CACHED_KEYS.set_function(lambda: float(len(self._by_id)))
        await self._follower.start(first_load_timeout)

    async def stop(self) -> None:
        await self._follower.stop()

    async def _reload_all(self) -> None:
        rows = await list_api_keys(self._db, usable_only=True)
        self._by_id = {row.id: row for row in rows}
        self._by_hash = {row.key_sha256: row for row in rows}

    async def _apply_changes(self, payloads: list[str]) -> None:
        for payload in payloads:
            try:
                key_id = int(payload)
            except ValueError:
                log.warning("api_key_notification_ignored", payload=payload[:32])
                continue
            async with asyncio.timeout(QUERY_TIMEOUT_SECONDS):
                row = await get_api_key(self._db, key_id)
            old = self._by_id.pop(key_id, None)
            if old is not None:
                self._by_hash.pop(old.key_sha256, None)
            if row is not None and not row.revoked:
                self._by_id[key_id] = row
                self._by_hash[row.key_sha256] = row
            log.info("api_key_changed", key_id=key_id, subject=None if row is None else row.subject,
                     usable=key_id in self._by_id)


def authorize(principal: ApiKeyRow, namespace: str, channel: str) -> None:
    """403 unless the key may use channel `channel` of `namespace` (its own namespace, a listed channel)."""
    if not principal.allows(namespace, channel):
        CHECKS.labels("forbidden").inc()
        raise Refused(403, "forbidden_channel",
                            f"this API key may not use channel {namespace}/{channel}")


class ApiKeyGuard:
    """The public API's key checks over one store and one shared limiter."""

    def __init__(self, store: ApiKeyStore, limiter: SharedRateLimit) -> None:
        self.store = store
        self.limiter = limiter

    async def authenticate(self, request: Request) -> ApiKeyRow:
        """The key of `Authorization: Bearer <key>`; 401 when missing, malformed, unknown or revoked."""
        header = request.headers.get("authorization")
        if header is None:
            CHECKS.labels("missing").inc()
            raise Refused(401, "missing_api_key", "send your API key as Authorization: Bearer <key>",
                                headers={"WWW-Authenticate": CHALLENGE})
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_KEY_BYTES \
                or not BEARER_TOKEN.fullmatch(token):
            CHECKS.labels("malformed").inc()
            raise Refused(401, "malformed_authorization",
                                "the Authorization header must be: Bearer <key>",
                                headers={"WWW-Authenticate": f'{CHALLENGE}, error="invalid_request"'})
        if not self.store.loaded:
            CHECKS.labels("unavailable").inc()
            raise Refused(503, "unavailable", "API keys cannot be checked right now; try again",
                                headers={"Retry-After": str(UNAVAILABLE_RETRY_SECONDS)})
        principal = self.store.lookup(hashlib.sha256(token.encode()).hexdigest())
        if principal is None:
            CHECKS.labels("invalid").inc()
            raise Refused(401, "invalid_api_key", "this API key is unknown or revoked",
                                headers={"WWW-Authenticate": f'{CHALLENGE}, error="invalid_token"'})
        CHECKS.labels("ok").inc()
        return principal

    def authorize(self, principal: ApiKeyRow, namespace: str, channel: str) -> None:
        """403 unless the key may use `namespace`/`channel` (see the module-level `authorize`)."""
        authorize(principal, namespace, channel)

    async def check_rate(self, principal: ApiKeyRow) -> None:
        """429 with Retry-After when the key is over its rate limit (shared by every replica)."""
        rate = principal.rate_per_minute
        if rate is None:
            return
        try:
            allowed, retry_after = await self.limiter.allow(api_key_rate_key(principal.id), rate,
                                                            burst_of(rate))
        except Exception as exc:
            if not redis_unavailable(exc):
                raise
            CHECKS.labels("limiter_unavailable").inc()
            log.warning("api_key_rate_limit_unavailable", key_id=principal.id, error=type(exc).__name__)
            return
        if not allowed:
            CHECKS.labels("rate_limited").inc()
            seconds = max(1, math.ceil(retry_after))
            raise Refused(429, "rate_limited",
                                f"this API key may make {rate} requests per minute; retry in {seconds} s",
                                headers={"Retry-After": str(seconds)})

    async def caller(self, request: Request) -> ApiKeyRow:
        """`authenticate`, then `check_rate`: the dependency of every route that takes an API key."""
        principal = await self.authenticate(request)
        await self.check_rate(principal)
        return principal
