"""Per-namespace Redis ACL users: the keys, channels and commands a namespace's bot and sender pods need.

Key patterns are computed from the names in `clarion.streams` (and the bot's FSM prefix) for one
namespace and its bots' ids; a channel key is `<namespace>.<name>` and a namespace has no dot, so
`tg:updates:<namespace>.*` never matches another namespace's streams.

- `~tg:updates:<ns>.*`: update streams with their `:dead` and `:attempts` keys (bot: XREADGROUP,
  XACK, XAUTOCLAIM, XADD of dead letters, XTRIM, ...);
- `~tg:lease:<ns>.*`, `~tg:replicas:<ns>.*`: partition leases and replica heartbeats (bot);
- `~fsm:<ns>.*`: aiogram's FSM storage, `DefaultKeyBuilder(prefix="fsm:<channel>")` (bot);
- `~tg:rl:<bot>:*`, `~tg:pause:<bot>`, `&tg:pause:<bot>`: the shared rate limiter of each of the
  namespace's bots and its pause channel (bot, sender);
- `%W~campaign:deliveries:dead`: campaign dead letters, write only: XADD, never read (sender);
- `~notify:<ns>.*`: the namespace's notification lane streams, their dead letters and status streams
  (worker: XREADGROUP, XACK, XAUTOCLAIM, XADD of replayed entries, dead letters and status events).

Commands are an explicit list (`TENANT_COMMANDS`), not categories: no SCAN/KEYS (key names of every
tenant), no FLUSH*, CONFIG, ACL, CLIENT LIST/KILL, MONITOR, SCRIPT FLUSH/KILL, FUNCTION, DEBUG. Keys a
Lua script touches are checked against the same patterns (Redis applies the caller's ACL inside
scripts), so the limiter's and the leases' scripts work on their own keys only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import redis.asyncio as aioredis

from clarion.streams import (
    CAMPAIGN_DELIVERIES_STREAM,
    bot_pause_key,
    bot_replicas_key,
    dead_letter_stream,
    notify_stream,
    partition_lease_key,
    rate_key,
    updates_stream,
)

TENANT_COMMANDS: tuple[str, ...] = (
    # connection (redis-py: HELLO/AUTH, SELECT of the URL's database, PING; the CLIENT SETINFO of redis-py
    # on Redis 7.2 is refused and redis-py goes on: it is not in 7.0)
    "auth", "hello", "ping", "select", "quit", "reset", "echo", "client|setname",
    "client|getname", "client|id",
    # transactions (pipelines with transaction=True)
    "multi", "exec", "discard",
    # streams
    "xadd", "xreadgroup", "xread", "xack", "xautoclaim", "xclaim", "xpending", "xrange", "xrevrange",
    "xtrim", "xlen", "xgroup|create", "xgroup|createconsumer", "xgroup|delconsumer", "xinfo|groups",
    "xinfo|consumers", "xinfo|stream",
    # strings and key expiry (leases, FSM, limiter state)
    "get", "set", "del", "unlink", "exists", "pexpire", "expire", "pttl", "ttl",
    # hashes (poison-entry attempts)
    "hincrby", "hdel", "hget", "hset", "hgetall",
    # sorted sets (replica heartbeats)
    "zadd", "zrem", "zremrangebyscore", "zcard", "zrange", "zscore",
    # scripts (redis-py's Script: EVALSHA, SCRIPT LOAD on NOSCRIPT), and TIME inside the limiter
    "evalsha", "eval", "script|load", "script|exists", "time",
    # pub/sub (the limiter's pause announcements)
    "subscribe", "unsubscribe", "publish",
    # KEDA's redis-streams scaler (engine keda, ADR 0008) reads the server version before a lane's lag:
    # server-wide figures (version, memory, clients, key counts per database), never a key name or value
    "info",
)


def acl_user_name(digest: str, namespace: str) -> str:
    """`digest` is `clarion.db.tenancy.tenant_digest` (installs sharing a Redis server stay apart)."""
    return f"clarion-t-{namespace}-{digest}"


def password_sha256(password: str) -> str:
    """The form Redis stores (`#<sha256>`): the operator keeps this, never the password."""
    return hashlib.sha256(password.encode()).hexdigest()


def _prefix_pattern(name: str, tail: str) -> str:
    """`name` built for channel `<ns>.<tail>`, cut at the tail: a glob for all channels of ns."""
    return name[: name.index(tail)] + "*"


def key_patterns(namespace: str, bot_ids: Iterable[int]) -> list[str]:
    """ACL rules for the keys and pub/sub channels of `namespace` and its bots (no command rules)."""
    marker = "\x00"
    channel = f"{namespace}.{marker}"
    rules = [
        "~" + _prefix_pattern(updates_stream(channel, 0), marker),
        "~" + _prefix_pattern(partition_lease_key(channel, 0), marker),
        "~" + _prefix_pattern(bot_replicas_key(channel), marker),
        "~" + _prefix_pattern(notify_stream(channel, "instant"), marker),
        f"~fsm:{namespace}.*",
        "%W~" + dead_letter_stream(CAMPAIGN_DELIVERIES_STREAM),
    ]
    for bot_id in sorted(set(bot_ids)):
        rules += ["~" + rate_key(bot_id, "*"), "~" + bot_pause_key(bot_id), "&" + bot_pause_key(bot_id)]
    return rules


def acl_rules(namespace: str, bot_ids: Iterable[int], password_hashes: Sequence[str]) -> list[str]:
    """The whole user, from `reset`: applied atomically by one ACL SETUSER, so re-applying is exact."""
    return ["reset", "on", *(f"#{h}" for h in password_hashes), *key_patterns(namespace, bot_ids),
            *(f"+{c}" for c in TENANT_COMMANDS)]


async def apply_acl_user(redis: aioredis.Redis, user: str, namespace: str, bot_ids: Iterable[int],
                         password_hashes: Sequence[str]) -> None:
    """Create or redefine the namespace's user: these passwords (by hash) and patterns, nothing else."""
    rules = acl_rules(namespace, bot_ids, password_hashes)
    await redis.execute_command("ACL", "SETUSER", user, *rules)  # type: ignore[no-untyped-call]


async def delete_acl_user(redis: aioredis.Redis, user: str) -> None:
    """Remove the user and close its connections (ACL DELUSER disconnects them)."""
    await redis.acl_deluser(user)


async def acl_user_exists(redis: aioredis.Redis, user: str) -> bool:
    users = await redis.acl_users()
    return user in {u.decode() if isinstance(u, bytes) else u for u in users}
