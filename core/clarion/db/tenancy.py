"""Per-namespace Postgres roles: what a tenant may touch, and the SQL that creates, rotates and drops them.

Rows are limited to the tenant's namespace by the policies of migration 0006; this module holds the
other half, the privileges of the group role `clarion_tenant` every tenant role is a member of, and the
role lifecycle the operator drives (`clarion_operator.tenancy`, docs/tenancy.md).

What the tenant pods run, and so what `TENANT_PRIVILEGES` grants (nothing else); bot = the queries of
`clarion.db.channels`, `.subscribers`, `.support`, `.groups`; sender = those of `clarion.db.campaigns` it
calls:

- channels: SELECT (bot `get_channel`, sender `load_campaign`);
- campaigns: SELECT (sender `load_campaign` reads `c.*`, `campaign_phase`);
- deliveries: SELECT, UPDATE of the claim and result columns (sender: claim, release, take-over,
  results); no INSERT or DELETE (the operator snapshots and forgets);
- subscribers: SELECT, INSERT, UPDATE (bot: subscribe, unsubscribe, language, availability; sender:
  blocked recipients, migrated groups' chat id);
- support_threads: SELECT, INSERT, and its id sequence (bot `reserve_thread_id`); UPDATE of the reply
  columns (bot: an answer in the chat, the outcome of a reply, an api request's post message id);
- tenants: the role's own mapping row (`clarion_tenant_namespace()` runs as the caller);
- notifications: SELECT, UPDATE of the send columns (worker `claim`, `settle`, `retry_later`, the
  replayer's `due_for_enqueue` and `mark_enqueued`); no INSERT (the API accepts as the system role);
- managed_groups: SELECT (bot: the group of a join request or message); group_members: SELECT, INSERT,
  UPDATE of the status and times (bot: pending, member, declined, left; last-seen times; a warned member
  who speaks again); group_join_requests: SELECT, INSERT, UPDATE (bot:
  the requests and their decisions); group_welcomes: SELECT, INSERT, DELETE (bot: welcomes to delete);
- group-maintenance workers (`clarion.db.group_maintenance`): group_members UPDATE of `status`,
  `warned_at`, `removed_at` (warned, removed, left, readmitted); managed_groups UPDATE of the invite link
  and dry-run columns only (never spec, phase or the operator's figures);
- audit_log: INSERT only, of rows naming one of the namespace's channels in `details.channel` (the bot's
  join decisions, the workers' warnings and removals; migration 0014's policy), and its id sequence;
  never SELECT;
- push_subscriptions: SELECT, UPDATE of last_sent_at, DELETE (the webpush worker: the subscription of
  a row, a push service's 404 or 410 removes it; `clarion.db.push_subscriptions`); no INSERT (the API
  registers as the system role);
- events: SELECT, INSERT; event_deliveries: INSERT (bot: a press of an event card's button records the
  follow-up event and, when its route has a callback, the delivery's outbox row; migration 0022's
  policies keep both in the namespace);
- nothing on api_keys, idempotency_keys, schema_migrations.

Passwords never reach the server in clear: roles get a SCRAM-SHA-256 verifier computed here, so a
statement log shows no password and the role authenticates with scram whatever `password_encryption` is.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

#: An asyncpg connection (asyncpg ships no type information).
Conn = Any

#: The group role whose members are tenant roles (pg_hba can require scram for `+clarion_tenant`).
TENANT_GROUP = "clarion_tenant"

#: (privilege, table, columns or None for the whole table). Revoked and granted again at every start.
TENANT_PRIVILEGES: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("SELECT", "channels", None),
    ("SELECT", "campaigns", None),
    ("SELECT", "deliveries", None),
    ("UPDATE", "deliveries", ("status", "attempts", "last_error", "message_id", "next_attempt_at",
                              "claimed_by", "claimed_by_shard", "claimed_until", "sent_at", "updated_at",
                              "delivered_chat_id")),
    ("SELECT", "subscribers", None),
    ("INSERT", "subscribers", ("channel_id", "chat_id", "username", "first_name", "last_name", "language",
                               "subscribed")),
    ("UPDATE", "subscribers", ("chat_id", "username", "first_name", "last_name", "language", "subscribed",
                               "unavailable", "unavailable_reason", "unavailable_since", "updated_at")),
    ("SELECT", "support_threads", None),
    ("INSERT", "support_threads", ("id", "channel_id", "user_chat_id", "admin_chat_id", "admin_message_id",
                                   "user_message_id", "user_name", "user_language", "body", "post_text")),
    # the bot: an answer given in the chat, the outcome of one, an api request's post message id
    ("UPDATE", "support_threads", ("status", "replied_by", "replied_by_name", "reply_text",
                                   "reply_notification_id", "last_error", "admin_message_id", "updated_at",
                                   "post_shown_at")),
    ("SELECT", "tenants", ("namespace", "role_a", "role_b")),
    # the bot: managed groups' join requests, members and welcomes (clarion.db.groups)
    ("SELECT", "managed_groups", None),
    ("SELECT", "group_members", None),
    ("INSERT", "group_members", ("group_id", "user_id", "status")),
    ("UPDATE", "group_members", ("status", "joined_at", "last_activity_at")),
    ("SELECT", "group_join_requests", None),
    ("INSERT", "group_join_requests", ("group_id", "user_id", "user_chat_id", "first_name", "username",
                                       "language", "request_date")),
    ("UPDATE", "group_join_requests", ("user_chat_id", "first_name", "username", "language", "request_date",
                                       "status", "deadline", "card_chat_id", "card_message_id", "card_text",
                                       "decided_by", "decided_by_name", "reason", "decided_at", "applied_at",
                                       "created_at")),
    ("SELECT", "group_welcomes", None),
    ("INSERT", "group_welcomes", ("group_id", "chat_id", "message_id", "delete_at")),
    ("DELETE", "group_welcomes", None),
    ("INSERT", "audit_log", ("actor", "action", "subject", "details")),
    # the group-maintenance workers: inactivity warnings and removals, dry runs, invite links
    # (clarion.db.group_maintenance; their audit rows use the INSERT on audit_log above)
    ("UPDATE", "group_members", ("warned_at", "removed_at")),
    ("UPDATE", "managed_groups", ("invite_link", "invite_link_expires_at", "invite_link_slot",
                                  "dry_run_candidates", "dry_run_candidate_count", "dry_run_at")),
    # the bot: group members' last-seen times and membership (clarion.db.group_activity): a member row
    # created with its joined and seen times; a warned member who speaks again is a member (warned_at,
    # granted above)
    ("INSERT", "group_members", ("joined_at", "last_activity_at")),
    # the notification worker: claim, settle, retry, replay (clarion.db.notifications)
    ("SELECT", "notifications", None),
    ("UPDATE", "notifications", ("status", "attempts", "last_error", "provider_message_id", "sent_at",
                                 "next_attempt_at", "enqueued_at", "claimed_by", "claimed_until",
                                 "updated_at")),
    # the webpush worker: a row's subscription, its last send, its removal (clarion.db.push_subscriptions)
    ("SELECT", "push_subscriptions", None),
    ("UPDATE", "push_subscriptions", ("last_sent_at",)),
    ("DELETE", "push_subscriptions", None),
    # the bot: a press of an event card's button records the follow-up event (clarion.db.events)
    ("SELECT", "events", None),
    ("INSERT", "events", ("id", "namespace", "event_id", "type", "reference", "initiator", "data",
                          "api_key_id", "result")),
    ("INSERT", "event_deliveries", ("event_id", "namespace", "route")),
)
#: Sequences a tenant calls nextval on.
TENANT_SEQUENCES = ("support_threads_id_seq", "audit_log_id_seq")

_LOCK_PREFIX = "clarion-tenant:"
_SCRAM_ITERATIONS = 4096


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def new_password() -> str:
    """43 URL-safe characters (256 bits): no quoting needed in a URL."""
    return secrets.token_urlsafe(32)


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = _SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier Postgres stores for `password` (RFC 5802/7677, as libpq builds it)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}$"
            f"{b64(stored_key).decode()}:{b64(server_key).decode()}")


def tenant_digest(database: str, namespace: str) -> str:
    """Tells apart installs sharing one Postgres or Redis server (roles and ACL users are server-wide)."""
    return hashlib.sha256(f"{database}\0{namespace}".encode()).hexdigest()[:10]


def role_names(database: str, namespace: str) -> tuple[str, str]:
    """The namespace's two login roles (slots a and b), at most 53 characters."""
    slug = namespace.replace("-", "_")[:30]
    base = f"clarion_t_{slug}_{tenant_digest(database, namespace)}"
    return f"{base}_a", f"{base}_b"


@dataclass(frozen=True)
class Tenant:
    """A `tenants` row: the namespace's roles, which one the Secret holds, and the Redis user."""

    namespace: str
    role_a: str | None
    role_b: str | None
    active_slot: str
    retiring_until: datetime | None
    redis_user: str | None
    redis_password_sha256: str | None
    redis_previous_sha256: str | None
    secret_sha256: str
    rotated_at: datetime

    @property
    def active_role(self) -> str | None:
        return self.role_a if self.active_slot == "a" else self.role_b

    @property
    def retiring_role(self) -> str | None:
        """The previous slot's role while its grace period lasts."""
        if self.retiring_until is None:
            return None
        return self.role_b if self.active_slot == "a" else self.role_a


_COLUMNS = ("namespace, role_a, role_b, active_slot, retiring_until, redis_user, redis_password_sha256, "
            "redis_previous_sha256, secret_sha256, rotated_at")


def _tenant(row: Any) -> Tenant:
    return Tenant(**dict(row))


async def ensure_tenant_group(conn: Conn) -> None:
    """Create `clarion_tenant` (NOLOGIN) when missing and give it exactly `TENANT_PRIVILEGES` in this
    database. Idempotent; needs CREATEROLE the first time, and the grant options a table owner has."""
    async with conn.transaction():
        exists = await conn.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", TENANT_GROUP)
        if not exists:
            try:
                async with conn.transaction():
                    await conn.execute(f"CREATE ROLE {quote_ident(TENANT_GROUP)} NOLOGIN")
            except asyncpg.DuplicateObjectError:
                pass  # another operator (another install on this server) created it meanwhile
        group = quote_ident(TENANT_GROUP)
        await conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {group}")
        await conn.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {group}")
        for privilege, table, columns in TENANT_PRIVILEGES:
            cols = "" if columns is None else " (" + ", ".join(quote_ident(c) for c in columns) + ")"
            await conn.execute(f"GRANT {privilege}{cols} ON TABLE public.{quote_ident(table)} TO {group}")
        for sequence in TENANT_SEQUENCES:
            await conn.execute(f"GRANT USAGE ON SEQUENCE public.{quote_ident(sequence)} TO {group}")


async def lock_namespace(conn: Conn, namespace: str) -> None:
    """Serialise credential changes of one namespace until the transaction ends (several operators)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _LOCK_PREFIX + namespace)


async def database_name(conn: Conn) -> str:
    name: str = await conn.fetchval("SELECT current_database()")
    return name


async def get_tenant(conn: Conn, namespace: str) -> Tenant | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM tenants WHERE namespace = $1", namespace)  # noqa: S608
    return None if row is None else _tenant(row)


async def list_tenants(conn: Conn) -> list[Tenant]:
    return [_tenant(r) for r in await conn.fetch(f"SELECT {_COLUMNS} FROM tenants ORDER BY namespace")]  # noqa: S608


async def save_tenant(conn: Conn, tenant: Tenant) -> None:
    """Insert or overwrite the namespace's row (callers hold `lock_namespace`)."""
    await conn.execute(
        """INSERT INTO tenants (namespace, role_a, role_b, active_slot, retiring_until, redis_user,
                                redis_password_sha256, redis_previous_sha256, secret_sha256, rotated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
           ON CONFLICT (namespace) DO UPDATE SET
               role_a = EXCLUDED.role_a, role_b = EXCLUDED.role_b, active_slot = EXCLUDED.active_slot,
               retiring_until = EXCLUDED.retiring_until, redis_user = EXCLUDED.redis_user,
               redis_password_sha256 = EXCLUDED.redis_password_sha256,
               redis_previous_sha256 = EXCLUDED.redis_previous_sha256,
               secret_sha256 = EXCLUDED.secret_sha256, rotated_at = EXCLUDED.rotated_at""",
        tenant.namespace, tenant.role_a, tenant.role_b, tenant.active_slot, tenant.retiring_until,
        tenant.redis_user, tenant.redis_password_sha256, tenant.redis_previous_sha256, tenant.secret_sha256,
        tenant.rotated_at,
    )


async def delete_tenant(conn: Conn, namespace: str) -> None:
    await conn.execute("DELETE FROM tenants WHERE namespace = $1", namespace)


async def set_login_password(conn: Conn, role: str, password: str) -> None:
    """Create the role (a member of `clarion_tenant`) or give it LOGIN and this password."""
    verifier = quote_literal(scram_verifier(password))
    exists = await conn.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", role)
    if exists:
        await conn.execute(f"ALTER ROLE {quote_ident(role)} LOGIN PASSWORD {verifier}")
    else:
        await conn.execute(f"CREATE ROLE {quote_ident(role)} LOGIN INHERIT NOSUPERUSER NOCREATEDB "
                           f"NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD {verifier} "
                           f"IN ROLE {quote_ident(TENANT_GROUP)}")


async def retire_role(conn: Conn, role: str) -> None:
    """No more logins with the role (its sessions are ended where the operator may signal them)."""
    if await conn.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", role):
        await conn.execute(f"ALTER ROLE {quote_ident(role)} NOLOGIN PASSWORD NULL")
        await _terminate_sessions(conn, role)


async def drop_role(conn: Conn, role: str) -> None:
    await _terminate_sessions(conn, role)
    await conn.execute(f"DROP ROLE IF EXISTS {quote_ident(role)}")


async def _terminate_sessions(conn: Conn, role: str) -> None:
    """Best effort: pg_terminate_backend needs superuser or pg_signal_backend; without it sessions end
    when their pods do."""
    try:
        async with conn.transaction():
            await conn.execute(
                """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                   WHERE usename = $1 AND pid <> pg_backend_pid()""", role)
    except asyncpg.InsufficientPrivilegeError:
        pass


async def namespace_in_use(conn: Conn, namespace: str) -> bool:
    """Whether the namespace still has a live channel, campaign or managed group (its rows say so)."""
    used: bool = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM channels WHERE namespace = $1 AND deleted_at IS NULL)
               OR EXISTS (SELECT 1 FROM campaigns WHERE namespace = $1 AND deleted_at IS NULL)
               OR EXISTS (SELECT 1 FROM managed_groups WHERE namespace = $1 AND deleted_at IS NULL)""",
        namespace)
    return used


async def namespace_bot_ids(conn: Conn, namespace: str) -> list[int]:
    """The bot ids of the namespace's live channels (from getMe, so a token proved each of them)."""
    rows = await conn.fetch(
        """SELECT DISTINCT bot_id FROM channels
           WHERE namespace = $1 AND deleted_at IS NULL AND bot_id IS NOT NULL ORDER BY bot_id""", namespace)
    return [int(r["bot_id"]) for r in rows]
