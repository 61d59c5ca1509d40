"""Per-namespace credentials: the Postgres role and Redis ACL user whose URLs the runtime Secret holds.

No pod in a tenant namespace gets the operator's own credentials (docs/tenancy.md, ADR 0005):

- `ensure_runtime_secret` (a channel check, a campaign's first Job in the namespace): the namespace's
  role and ACL user exist, and the runtime Secret holds their URLs; a Secret that was lost, edited or
  lacks a key, or whose credentials are older than `credential_rotation_hours`, gets new ones (a
  rotation).
- A rotation gives the namespace's other role (slot a/b) a new password and the ACL user a second
  password; the previous ones keep working for `credential_grace_minutes`, so pods started before the
  rotation go on. The namespace's channels are annotated, so their bot Deployments roll to pods that
  read the new Secret; sender pods read it when they are (re)started.
- `sweep` (every `tenancy_sweep_seconds`): retires previous credentials whose grace is over, rotates
  what is due, and deletes role, ACL user and mapping of namespaces without live Clarion resources
  (the delete handlers call `release_if_unused` at once, too).
- `restore_lost_acl_users` (every `acl_check_seconds`): a Redis that lost its data (restarted without
  persistence, failed over to an empty replica) lost the ACL users with it, and every tenant pod is
  refused until they exist again; they are defined again from the `tenants` rows (which keep only
  password hashes, all Redis needs), so running pods reconnect with the passwords they have.

Every change of one namespace runs in a transaction holding its advisory lock (several operator
processes, the sweep and the handlers serialise); the Secret is written inside it, so a Secret and a
`tenants` row never disagree for long: a failure after the Secret write leaves a Secret whose hash the
row does not know, and the next call rotates again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import kopf
from clarion import tenancy_redis
from clarion.db import tenancy as q
from clarion.logging import get_logger
from clarion.models import NOTIFICATION_CHANNEL

from clarion_operator import builders
from clarion_operator.context import Context

log = get_logger("clarion.operator.tenancy")

#: Pod-template annotation of bot Deployments, and channel annotation that makes the channel re-apply
#: its Deployment: the credentials' revision (a rotation restarts the bots on the new Secret).
CREDENTIALS_REVISION = builders.CREDENTIALS_REVISION
SHARED = "shared"
PER_NAMESPACE = "per-namespace"


def with_credentials(url: str, user: str, password: str) -> str:
    """`url` with its user and password replaced (host, port, database, query kept)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def secret_digest(data: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def revision(tenant: q.Tenant | None) -> str:
    """What bot pod templates carry: changes with every rotation."""
    return SHARED if tenant is None else tenant.rotated_at.strftime("%Y%m%dT%H%M%S.%fZ")


def _per_namespace_database(ctx: Context) -> bool:
    return ctx.settings.tenant_database_credentials == PER_NAMESPACE


def _per_namespace_redis(ctx: Context) -> bool:
    return ctx.settings.tenant_redis_credentials == PER_NAMESPACE


def _isolated(ctx: Context) -> bool:
    return _per_namespace_database(ctx) or _per_namespace_redis(ctx)


async def ensure_runtime_secret(ctx: Context, namespace: str, conn: Any = None) -> str:
    """Make sure the namespace's credentials exist and its runtime Secret holds them; return their
    revision (for the bot Deployment's pod template). `conn`: the caller's connection, if it holds one."""
    if not _isolated(ctx):
        database_url, redis_url = ctx.runtime_urls()
        await ctx.kube.apply_secret(builders.runtime_secret(
            namespace, ctx.settings.runtime_secret_name, database_url, redis_url))
        ctx.runtime_secret_namespaces.add(namespace)
        return SHARED
    if conn is None:
        async with ctx.db.acquire() as own:
            return await ensure_runtime_secret(ctx, namespace, own)
    async with conn.transaction():
        await q.lock_namespace(conn, namespace)
        tenant = await _converge(ctx, conn, namespace, await q.get_tenant(conn, namespace), refresh_acl=True)
    ctx.runtime_secret_namespaces.add(namespace)
    return revision(tenant)


async def release_if_unused(ctx: Context, namespace: str) -> bool:
    """Delete the namespace's role, ACL user and mapping when it has no live Clarion resource left.

    The runtime Secret stays (its URLs no longer authenticate); True when credentials were deleted.
    """
    if not _isolated(ctx):
        return False
    async with ctx.db.acquire() as conn, conn.transaction():
        await q.lock_namespace(conn, namespace)
        tenant = await q.get_tenant(conn, namespace)
        if tenant is None or await q.namespace_in_use(conn, namespace):
            return False
        for role in (tenant.role_a, tenant.role_b):
            if role is not None:
                await q.drop_role(conn, role)
        if tenant.redis_user is not None:
            await tenancy_redis.delete_acl_user(ctx.redis, tenant.redis_user)
        await q.delete_tenant(conn, namespace)
    ctx.runtime_secret_namespaces.discard(namespace)
    log.info("tenant_credentials_deleted", namespace=namespace)
    return True


async def sweep(ctx: Context) -> None:
    """One pass over every namespace with credentials: delete unused, retire after grace, rotate due."""
    async with ctx.db.acquire() as conn:
        tenants = await q.list_tenants(conn)
    for tenant in tenants:
        if await release_if_unused(ctx, tenant.namespace):
            continue
        async with ctx.db.acquire() as conn, conn.transaction():
            await q.lock_namespace(conn, tenant.namespace)
            current = await q.get_tenant(conn, tenant.namespace)
            if current is not None:
                await _converge(ctx, conn, tenant.namespace, current, refresh_acl=False)


async def restore_lost_acl_users(ctx: Context) -> list[str]:
    """Define again the ACL users Redis no longer has; return their namespaces."""
    if not _per_namespace_redis(ctx):
        return []
    async with ctx.db.acquire() as conn:
        tenants = await q.list_tenants(conn)
    wanted = [t for t in tenants if t.redis_user is not None]
    if not wanted:
        return []
    present = {u.decode() if isinstance(u, bytes) else u for u in await ctx.redis.acl_users()}
    restored = []
    for tenant in wanted:
        if tenant.redis_user in present:
            continue
        async with ctx.db.acquire() as conn, conn.transaction():
            await q.lock_namespace(conn, tenant.namespace)
            current = await q.get_tenant(conn, tenant.namespace)
            if current is not None:
                await _apply_acl(ctx, conn, current)
                restored.append(tenant.namespace)
    if restored:
        log.warning("tenant_acl_users_restored", namespaces=restored,
                    reason="Redis no longer had them (it lost its data)")
    return restored


async def sweep_forever(ctx: Context) -> None:
    """`restore_lost_acl_users` every `acl_check_seconds` and `sweep` every `tenancy_sweep_seconds`;
    a failed pass is logged and tried again next time."""
    settings = ctx.settings
    next_sweep = asyncio.get_running_loop().time() + settings.tenancy_sweep_seconds
    while True:
        await asyncio.sleep(min(settings.acl_check_seconds, settings.tenancy_sweep_seconds))
        try:
            await restore_lost_acl_users(ctx)
        except Exception as exc:  # the loop must outlive any one failure (Redis or Postgres away)
            log.warning("tenant_acl_check_failed", error=repr(exc))
        if asyncio.get_running_loop().time() < next_sweep:
            continue
        next_sweep = asyncio.get_running_loop().time() + settings.tenancy_sweep_seconds
        try:
            await sweep(ctx)
        except Exception as exc:
            log.warning("tenancy_sweep_failed", error=repr(exc))


async def _converge(ctx: Context, conn: Any, namespace: str, tenant: q.Tenant | None, *,
                    refresh_acl: bool) -> q.Tenant:
    """Bring the namespace's credentials and Secret to what they should be now (lock held)."""
    now = datetime.now(UTC)
    if tenant is not None and tenant.retiring_until is not None and tenant.retiring_until <= now:
        tenant = await _retire(ctx, conn, tenant)
        refresh_acl = False
    secret = await ctx.kube.read_secret(namespace, ctx.settings.runtime_secret_name)
    rotation = timedelta(hours=ctx.settings.credential_rotation_hours)
    # A Secret written before it had every key (redis-username, redis-password) matches its digest but
    # lacks them; the operator keeps no password to add them, so it rotates.
    if (tenant is None or secret is None or secret_digest(secret) != tenant.secret_sha256
            or secret.keys() != builders.RUNTIME_SECRET_KEYS
            or (rotation and now - tenant.rotated_at >= rotation)):
        return await _rotate(ctx, conn, namespace, tenant, now)
    if refresh_acl:  # a channel may have a new bot id
        await _apply_acl(ctx, conn, tenant)
    return tenant


async def _rotate(ctx: Context, conn: Any, namespace: str, old: q.Tenant | None, now: datetime) -> q.Tenant:
    """New credentials in the other slot; the previous ones stay valid for the grace period."""
    database = await q.database_name(conn)
    digest = q.tenant_digest(database, namespace)
    grace = timedelta(minutes=ctx.settings.credential_grace_minutes)
    database_url, redis_url = ctx.runtime_urls()
    slot = "a" if old is None or old.active_slot == "b" else "b"
    role_a = role_b = None
    if _per_namespace_database(ctx):
        role_a, role_b = q.role_names(database, namespace)
        role = role_a if slot == "a" else role_b
        password = q.new_password()
        await q.set_login_password(conn, role, password)
        database_url = with_credentials(database_url, role, password)
    redis_user = redis_sha = redis_previous = None
    if _per_namespace_redis(ctx):
        redis_user = tenancy_redis.acl_user_name(digest, namespace)
        redis_password = q.new_password()
        redis_sha = tenancy_redis.password_sha256(redis_password)
        redis_previous = old.redis_password_sha256 if old is not None and grace else None
        redis_url = with_credentials(redis_url, redis_user, redis_password)
    body = builders.runtime_secret(namespace, ctx.settings.runtime_secret_name, database_url, redis_url)
    tenant = q.Tenant(
        namespace=namespace, role_a=role_a, role_b=role_b, active_slot=slot,
        retiring_until=now + grace if old is not None and grace else None,
        redis_user=redis_user, redis_password_sha256=redis_sha, redis_previous_sha256=redis_previous,
        secret_sha256=secret_digest(body["stringData"]), rotated_at=now)
    if old is not None and not grace and old.active_role is not None:
        await q.retire_role(conn, old.active_role)
    await _apply_acl(ctx, conn, tenant)
    await q.save_tenant(conn, tenant)
    await ctx.kube.apply_secret(body)
    log.info("tenant_credentials_rotated" if old is not None else "tenant_credentials_created",
             namespace=namespace, slot=slot, retiring_until=str(tenant.retiring_until))
    if old is not None:
        await _restart_bots(ctx, conn, namespace, revision(tenant))
    return tenant


async def _retire(ctx: Context, conn: Any, tenant: q.Tenant) -> q.Tenant:
    """The grace period is over: the previous role may no longer log in, the previous Redis password goes."""
    if tenant.retiring_role is not None:
        await q.retire_role(conn, tenant.retiring_role)
    retired = replace(tenant, retiring_until=None, redis_previous_sha256=None)
    await _apply_acl(ctx, conn, retired)
    await q.save_tenant(conn, retired)
    log.info("tenant_credentials_retired", namespace=tenant.namespace, role=tenant.retiring_role)
    return retired


async def _apply_acl(ctx: Context, conn: Any, tenant: q.Tenant) -> None:
    if tenant.redis_user is None or tenant.redis_password_sha256 is None:
        return
    hashes = [tenant.redis_password_sha256]
    if tenant.redis_previous_sha256 is not None:
        hashes.append(tenant.redis_previous_sha256)
    bots = await q.namespace_bot_ids(conn, tenant.namespace)
    await tenancy_redis.apply_acl_user(ctx.redis, tenant.redis_user, tenant.namespace, bots, hashes)


async def _restart_bots(ctx: Context, conn: Any, namespace: str, rev: str) -> None:
    """Annotate the namespace's live channels: their update handler re-applies the bot Deployment with
    the new revision in its pod template, which rolls the bots onto the new Secret."""
    rows = await conn.fetch(
        "SELECT name FROM channels WHERE namespace = $1 AND deleted_at IS NULL AND type = 'telegram'",
        namespace)
    for row in rows:
        try:
            await ctx.kube.annotate_resource(NOTIFICATION_CHANNEL.plural, namespace, row["name"],
                                             {CREDENTIALS_REVISION: rev})
        except Exception as exc:  # the next check applies it anyway
            log.warning("bot_restart_annotation_failed", namespace=namespace, channel=row["name"],
                        error=repr(exc))


def start_sweeper(ctx: Context) -> asyncio.Task[None] | None:
    """The sweep task (None when pods share the operator's credentials: nothing to sweep)."""
    if not _isolated(ctx):
        return None
    return asyncio.create_task(sweep_forever(ctx), name="tenancy-sweep")


async def prepare_database(ctx: Context, logger: kopf.Logger) -> None:
    """At start, per-namespace Postgres credentials: the group role and its privileges in this database."""
    if not _per_namespace_database(ctx):
        return
    async with ctx.db.acquire() as conn:
        try:
            await q.ensure_tenant_group(conn)
        except Exception as exc:
            raise kopf.PermanentError(
                f"cannot prepare per-namespace database credentials ({exc!r}): the operator's role needs "
                "CREATEROLE and ownership of Clarion's tables, or set "
                "CLARION_TENANT_DATABASE_CREDENTIALS=shared (docs/tenancy.md)") from exc
    logger.info("tenant database privileges granted to %s", q.TENANT_GROUP)
