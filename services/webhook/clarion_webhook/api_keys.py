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
- `ApiKeyUsage` audits key use without a row per request: `KeyUseCounter` (ASGI, around the API) counts
  each answer given to a known key by status code, and every `flush_seconds` (and at shutdown) one
  `api_key.used` row per key is written to `audit_log` (requests, counts by status, the window, the
  replica), plus an `api_key.refused` row when the key was refused (403 channel, 429 limit).

Wiring into FastAPI: docs/api-keys.md, "Using the keys in the API".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
from clarion.db.api_keys import API_KEYS_NOTIFY, ApiKeyRow, get_api_key, list_api_keys
from clarion.db.notifications import audit_many
from clarion.logging import get_logger
from clarion.metrics import counter, gauge
from clarion.models.api_key import BEARER_TOKEN, MAX_KEY_BYTES, burst_of
from clarion.outages import redis_unavailable
from clarion.ratelimit import SharedRateLimit
from clarion.streams import api_key_rate_key
from fastapi import Request

from clarion_webhook.errors import Refused
from clarion_webhook.follower import QUERY_TIMEOUT_SECONDS, FollowedCopy, TableFollower

CHECKS = counter("clarion_api_key_checks_total",
                 "API key checks of the public API by result: ok, missing, malformed, invalid, unavailable, "
                 "forbidden, rate_limited, limiter_unavailable.", ["result"])
STALE_SECONDS = gauge("clarion_api_key_cache_stale_seconds",
                      "Seconds since the API key copy was last known to be in sync with Postgres; 0 in sync.")
CACHED_KEYS = gauge("clarion_api_key_cache_keys", "Usable API keys in the webhook's copy.")

USAGE_FLUSHES = counter("clarion_api_key_usage_flushes_total",
                        "Writes of the API key use audit rows, by result: ok, failed (kept for the next).",
                        ["result"])

#: Where `ApiKeyGuard.authenticate` leaves the caller's key in the request's state, for `KeyUseCounter`.
PRINCIPAL_STATE = "clarion_api_key"
#: Status codes that are a refusal of a known key, and the name the audit gives each.
REFUSALS = {403: "forbidden", 429: "rate_limited"}

#: The challenge of every 401 (RFC 6750).
CHALLENGE = 'Bearer realm="clarion"'
UNAVAILABLE_RETRY_SECONDS = 5

log = get_logger("clarion.webhook.api_keys")


class ApiKeyStore(FollowedCopy):
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

    def __len__(self) -> int:
        return len(self._by_id)

    async def start(self, first_load_timeout: float = 10.0) -> None:
        """Start following Postgres; return once the first attempt loaded the copy or failed."""
        STALE_SECONDS.set_function(self.stale_seconds)
        CACHED_KEYS.set_function(lambda: float(len(self._by_id)))
        await self._follower.start(first_load_timeout)

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
        setattr(request.state, PRINCIPAL_STATE, principal)
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


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def usage_rows(counts: dict[int, Counter[int]], keys: dict[int, ApiKeyRow], since: datetime, until: datetime,
               replica: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """The audit rows (actor, action, subject, details) of one window of key use: an `api_key.used` row
    per key, and an `api_key.refused` row per key that was refused."""
    window = {"from": since.isoformat(), "to": until.isoformat(), "replica": replica}
    rows: list[tuple[str, str, str, dict[str, Any]]] = []
    for key_id, statuses in sorted(counts.items()):
        actor, subject = f"api-key:{key_id}", keys[key_id].subject
        rows.append((actor, "api_key.used", subject, {
            "requests": sum(statuses.values()),
            "statuses": {str(code): n for code, n in sorted(statuses.items())}, **window}))
        refused = {name: statuses[code] for code, name in REFUSALS.items() if statuses[code]}
        if refused:
            rows.append((actor, "api_key.refused", subject, {**refused, **window}))
    return rows


class ApiKeyUsage:
    """Answers to known keys, counted in memory and written to `audit_log` per key per window (the API
    takes thousands of requests a second: a row each would outweigh the notifications themselves).

    A write that fails (Postgres away) keeps its counts for the next one; at most the last window is
    lost when the process dies without its shutdown.
    """

    def __init__(self, *, replica: str, flush_seconds: float = 60.0) -> None:
        self.replica, self.flush_seconds = replica, flush_seconds
        self._counts: dict[int, Counter[int]] = {}
        self._keys: dict[int, ApiKeyRow] = {}
        self._since = datetime.now(UTC)
        self._db: asyncpg.Pool | None = None
        self._task: asyncio.Task[None] | None = None

    def count(self, key: ApiKeyRow, status: int) -> None:
        statuses = self._counts.get(key.id)
        if statuses is None:
            statuses = self._counts[key.id] = Counter()
            self._keys[key.id] = key
        statuses[status] += 1

    async def flush(self) -> int:
        """Write the counts since the last flush; the number of rows written (0 on failure: kept)."""
        assert self._db is not None
        counts, keys, since = self._counts, self._keys, self._since
        self._counts, self._keys, self._since = {}, {}, datetime.now(UTC)
        if not counts:
            return 0
        rows = usage_rows(counts, keys, since, self._since, self.replica)
        try:
            async with asyncio.timeout(QUERY_TIMEOUT_SECONDS), self._db.acquire() as conn:
                await audit_many(conn, rows)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            USAGE_FLUSHES.labels("failed").inc()
            log.warning("api_key_usage_flush_failed", keys=len(counts), error=type(exc).__name__)
            for key_id, statuses in counts.items():  # keep them, with the window's start
                self._counts.setdefault(key_id, Counter()).update(statuses)
                self._keys.setdefault(key_id, keys[key_id])
            self._since = since
            return 0
        USAGE_FLUSHES.labels("ok").inc()
        return len(rows)

    async def start(self, db: asyncpg.Pool) -> None:
        self._db = db
        self._task = asyncio.create_task(self._loop(), name="api-key-usage")

    async def stop(self) -> None:
        """Stop the loop and write what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._db is not None:
            await self.flush()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            try:
                await self.flush()
            except Exception as exc:  # the loop outlives any one failure
                log.warning("api_key_usage_flush_failed", error=repr(exc)[:300])


class KeyUseCounter:
    """ASGI middleware around the API: counts each answer to a request whose key was recognised."""

    def __init__(self, app: Any, usage: ApiKeyUsage) -> None:
        self.app, self.usage = app, usage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def observe(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            key = scope.get("state", {}).get(PRINCIPAL_STATE)
            if key is not None:
                self.usage.count(key, status or 500)
