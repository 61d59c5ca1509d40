"""API keys: Secrets labelled `clarion.io/api-key: "true"`, synced into Postgres (docs/api-keys.md).

One handler sees every event of every Secret the operator watches (the listing at start, additions,
changes, deletions). For a Secret that is or was an API key it parses the body once
(`ApiKeySecret.parse`), decides with the pure `decide`, and acts through `clarion.db.api_keys` (each
write idempotent and audited) and `kopf.event`. Every other Secret costs a label and a set lookup.

                      labelled "true", valid               labelled "true", invalid
      (any Secret) ──────────────────────────► SYNC   ─────────────────────────────► REFUSE
                                               row = the Secret (revoked when         Warning Event;
                                               annotated clarion.io/revoked)          row revoked if usable
      deleted / label gone or "false" while its row is usable ─► REVOKE (row kept, revoked)

Why `on.event` and not `on.create`/`on.update`/`on.delete`: kopf's change handlers keep the last
handled body in an annotation of the object, which for a Secret would copy `data` (the key) into its
metadata, and `on.delete` would put a finalizer on users' Secrets (stuck in Terminating once the
operator is gone). The handler is level-based instead: any event carries the whole current state.

What no event reports: a Secret deleted while the operator was not running (or while its watch was
being re-established). The sweeper reads, at start and then every `SWEEP_SECONDS`, each usable key's
Secret from the API server and revokes the keys whose Secret no longer exists (compare-and-set on the
Secret's uid, so a re-created Secret keeps its key).

Postgres outages are ridden out (`clarion.outages.ride_out`) for up to `OUTAGE_TOLERANCE_SECONDS`; the
Secret's later events wait meanwhile, and the last one wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import kopf
from clarion.db import api_keys as queries
from clarion.db.api_keys import KeyInUse, fingerprint
from clarion.logging import get_logger
from clarion.metrics import counter
from clarion.models import API_KEY_LABEL, ApiKeySecret, InvalidApiKey, ResourceKey
from clarion.outages import ride_out

from clarion_operator.context import Context, context

SECRETS = ("", "v1", "secrets")
SWEEP_SECONDS = 600.0
OUTAGE_TOLERANCE_SECONDS = 3600.0
KEY_IN_USE = ("the same key is already in another API key Secret; put a new key in data.key "
              "(e.g. openssl rand -base64 32)")

ACTIONS = counter("clarion_operator_api_key_actions_total",
                  "API key Secrets acted on, by action (sync, revoke, refuse) and whether Postgres changed.",
                  ["action", "changed"])

log = get_logger("clarion.operator.api_keys")
T = TypeVar("T")


class ApiKeyReason(StrEnum):
    """Reasons of the Events posted on API key Secrets."""

    SYNCED = "ApiKeySynced"
    REVOKED = "ApiKeyRevoked"
    INVALID = "InvalidApiKey"


class Act(StrEnum):
    SYNC = "sync"
    """Make the row say what the Secret says (revoked too, when the Secret says so)."""
    REVOKE = "revoke"
    """The key is no longer declared: revoke its row, keep it."""
    REFUSE = "refuse"
    """Labelled as a key but not a valid one: Warning Event, audit, and revoke the row if usable."""
    IGNORE = "ignore"


@dataclass(frozen=True)
class Decision:
    act: Act
    reason: str = ""
    """Why (REVOKE, REFUSE): the audit entry's and the Event's message."""
    key: ApiKeySecret | None = None
    """SYNC: what the row must say."""
    secret_uid: str | None = None
    """REVOKE: only while the row belongs to this Secret (None: whichever Secret it belongs to)."""


def decide(*, deleted: bool, label: str | None, parsed: ApiKeySecret | InvalidApiKey | None, usable: bool,
           uid: str) -> Decision:
    """What one event of a Secret means for its API key; pure.

    `label` is the Secret's `clarion.io/api-key` label (None: absent); `parsed` is the body parsed as a
    key (only done when the label is "true" and the Secret is not deleted); `usable` says whether a
    usable row exists for the Secret's namespace/name; `uid` is the Secret's uid.

    | event                                   | decision                                              |
    | --------------------------------------- | ----------------------------------------------------- |
    | deleted, labelled "true" or usable      | REVOKE, only the row of this uid ("Secret deleted")   |
    | label absent or "false", usable         | REVOKE (label removed)                                |
    | label absent or "false", not usable     | IGNORE (not an API key: most Secrets)                 |
    | label another value                     | REFUSE (the label must be "true")                     |
    | labelled "true", body invalid           | REFUSE (the parser's message)                         |
    | labelled "true", valid                  | SYNC (usable, or revoked by its annotation)           |
    """
    if deleted:
        if label == "true" or usable:
            return Decision(Act.REVOKE, "the Secret was deleted", secret_uid=uid)
        return Decision(Act.IGNORE)
    if label is None or label == "false":
        if usable:
            return Decision(Act.REVOKE, f"the Secret is no longer labelled {API_KEY_LABEL}=true")
        return Decision(Act.IGNORE)
    if label != "true":
        return Decision(Act.REFUSE, f'label {API_KEY_LABEL} must be "true" on an API key Secret (or "false" '
                                    f'to make it none), not {label[:63]!r}')
    if isinstance(parsed, InvalidApiKey):
        return Decision(Act.REFUSE, parsed.message)
    if parsed is None:
        raise ValueError("a Secret labelled as an API key must be parsed before deciding")
    return Decision(Act.SYNC, key=parsed)


@dataclass
class ApiKeySync:
    """Shared by every Secret's handler (kept in the operator's memo): which Secrets have a usable row,
    and the sweeper. Only this process writes `api_keys`, so the set follows every write it makes."""

    usable: set[ResourceKey] = field(default_factory=set)
    sweeper: asyncio.Task[None] | None = None


def _watched(namespaces: Collection[str]) -> Callable[[str], bool]:
    """Whether a namespace is one the operator watches (kopf's namespace globs; empty: all)."""
    patterns = list(namespaces)
    return lambda namespace: not patterns or any(fnmatch.fnmatchcase(namespace, p) for p in patterns)


async def _ride_out(what: str, call: Callable[[], Awaitable[T]]) -> T:
    return await ride_out(what, call, tolerance=OUTAGE_TOLERANCE_SECONDS)


@kopf.on.startup()
async def start_api_key_sync(memo: Any, **_: Any) -> None:
    """Learn which keys are usable, then start the sweeper. Runs after `startup.configure` (the pools)."""
    if memo.get("ctx") is None:
        raise kopf.TemporaryError("waiting for the operator's clients (startup.configure)", delay=0.2)
    ctx = context(memo)
    watched = _watched(memo.namespaces)
    rows = await queries.list_api_keys(ctx.db, usable_only=True)
    sync = ApiKeySync(usable={ResourceKey(r.namespace, r.name) for r in rows if watched(r.namespace)})
    sync.sweeper = asyncio.create_task(_sweep_forever(ctx, sync, watched), name="api-key-sweeper")
    memo.api_keys = sync


@kopf.on.cleanup()
async def stop_api_key_sync(memo: Any, **_: Any) -> None:
    sync: ApiKeySync | None = memo.get("api_keys")
    if sync is not None and sync.sweeper is not None:
        sync.sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sync.sweeper


@kopf.on.event(*SECRETS)
async def api_key_secret_event(type: str | None, body: kopf.Body, memo: Any, logger: kopf.Logger,
                               **_: Any) -> None:
    """Any event of any Secret: sync, revoke or refuse the API key it declares (see `decide`)."""
    sync: ApiKeySync = memo.api_keys
    meta = body.get("metadata") or {}
    key = ResourceKey(str(meta.get("namespace") or ""), str(meta.get("name") or ""))
    label = (meta.get("labels") or {}).get(API_KEY_LABEL)
    if label is None and key not in sync.usable:
        return  # not an API key and never was one: the common case, decided without parsing
    deleted = type == "DELETED"
    parsed: ApiKeySecret | InvalidApiKey | None = None
    if label == "true" and not deleted:
        try:
            parsed = ApiKeySecret.parse(body)
        except InvalidApiKey as problem:
            parsed = problem
    decision = decide(deleted=deleted, label=label, parsed=parsed, usable=key in sync.usable,
                      uid=str(meta.get("uid") or ""))
    await act(context(memo), sync, key, decision, body, logger)


async def act(ctx: Context, sync: ApiKeySync, key: ResourceKey, decision: Decision, body: kopf.Body,
              logger: kopf.Logger) -> None:
    """Carry out a decision: Postgres (idempotent, audited), the usable set, Events and the log line."""
    match decision.act:
        case Act.IGNORE:
            return
        case Act.SYNC:
            assert decision.key is not None
            await _sync(ctx, sync, key, decision.key, body, logger)
        case Act.REVOKE:
            await _revoke(ctx, sync, key, decision, body, logger)
        case Act.REFUSE:
            await _refuse(ctx, sync, key, str(body.get("metadata", {}).get("uid") or ""), decision.reason,
                          body, logger)


async def _sync(ctx: Context, sync: ApiKeySync, key: ResourceKey, api_key: ApiKeySecret, body: kopf.Body,
                logger: kopf.Logger) -> None:
    try:
        row = await _ride_out(f"sync API key {key}", lambda: queries.sync_api_key(ctx.db, api_key))
    except KeyInUse:
        await _refuse(ctx, sync, key, api_key.uid, KEY_IN_USE, body, logger)
        return
    if api_key.revoked:
        sync.usable.discard(key)
    else:
        sync.usable.add(key)
    ACTIONS.labels(Act.SYNC, str(row is not None).lower()).inc()
    if row is None:
        return
    rate = "unlimited" if api_key.rate_per_minute is None else f"{api_key.rate_per_minute}/min"
    if api_key.revoked:
        message = "API key revoked: the Secret's clarion.io/revoked annotation is true"
        kopf.event(body, type="Normal", reason=ApiKeyReason.REVOKED, message=message)
    else:
        message = f"API key synced: channels {', '.join(api_key.channels)}; rate {rate}"
        kopf.event(body, type="Normal", reason=ApiKeyReason.SYNCED, message=message)
    logger.info("API key %s synced: fingerprint %s, channels %s, rate %s, revoked %s", key,
                fingerprint(api_key.key_sha256), ",".join(api_key.channels), rate, api_key.revoked)


async def _revoke(ctx: Context, sync: ApiKeySync, key: ResourceKey, decision: Decision, body: kopf.Body,
                  logger: kopf.Logger) -> None:
    row = await _ride_out(f"revoke API key {key}", lambda: queries.revoke_api_key(
        ctx.db, key.namespace, key.name, reason=decision.reason, secret_uid=decision.secret_uid))
    sync.usable.discard(key)
    ACTIONS.labels(Act.REVOKE, str(row is not None).lower()).inc()
    if row is None:
        return
    if decision.secret_uid is None:  # the Secret still exists: tell its readers
        kopf.event(body, type="Normal", reason=ApiKeyReason.REVOKED,
                   message=f"API key revoked: {decision.reason}")
    logger.info("API key %s revoked: %s", key, decision.reason)


async def _refuse(ctx: Context, sync: ApiKeySync, key: ResourceKey, uid: str, reason: str, body: kopf.Body,
                  logger: kopf.Logger) -> None:
    changed = await _ride_out(f"refuse API key {key}", lambda: queries.refuse_api_key(
        ctx.db, key.namespace, key.name, secret_uid=uid, reason=reason))
    sync.usable.discard(key)
    ACTIONS.labels(Act.REFUSE, str(changed).lower()).inc()
    kopf.event(body, type="Warning", reason=ApiKeyReason.INVALID, message=f"not a usable API key: {reason}")
    logger.warning("API key Secret %s refused: %s", key, reason)


async def sweep(ctx: Context, sync: ApiKeySync, watched: Callable[[str], bool]) -> int:
    """Revoke the usable keys whose Secret is gone (deleted while no event could tell); how many."""
    revoked = 0
    for row in await queries.list_api_keys(ctx.db, usable_only=True):
        if not watched(row.namespace):
            continue
        try:
            exists = await ctx.kube.read_secret(row.namespace, row.name) is not None
        except Exception as exc:  # one unreadable Secret must not stop the pass
            log.warning("api_key_sweep_read_failed", subject=row.subject, error=type(exc).__name__)
            continue
        if exists:
            continue
        gone = await queries.revoke_api_key(ctx.db, row.namespace, row.name,
                                            reason="the Secret no longer exists", secret_uid=row.secret_uid)
        if gone is not None:  # None: already revoked, or re-created meanwhile (another uid): left alone
            revoked += 1
            sync.usable.discard(ResourceKey(row.namespace, row.name))
            log.info("api_key_revoked_by_sweep", subject=row.subject)
    return revoked


async def _sweep_forever(ctx: Context, sync: ApiKeySync, watched: Callable[[str], bool]) -> None:
    while True:
        try:
            await sweep(ctx, sync, watched)
        except Exception as exc:  # Postgres or the API server away: the next pass tries again
            log.warning("api_key_sweep_failed", error=type(exc).__name__)
        await asyncio.sleep(SWEEP_SECONDS)
