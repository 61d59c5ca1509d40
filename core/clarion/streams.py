"""Redis stream and key names, and the payloads carried on them. Defined here, once.

- `tg:updates:{channel}:{partition}`: Telegram updates of one channel, partitioned by chat id so one
  chat's updates stay in order; read by the bot through the consumer group `bot`.
- `notify:{channel}:{lane}`: notification ids of one channel's lane (`instant`, `bulk`, `group-posts`;
  the outbox rows live in Postgres); read by the channel's workers through the consumer group `workers`.
- `notify:{channel}:status`: every final outcome of the channel's notifications (`NotificationEvent`);
  a Telegram channel's bot follows its own and its reply email channel's through the group
  `support:{channel}` (support posts and replies, docs/webhook-and-bot.md).
- `notify:{channel}:group-maintenance`: ManagedGroup maintenance work (`GroupTask`) the operator's
  timers put there, one entry per group, kind and period (`{stream}:dedup:...` keys make a timer tick
  one entry); read by the channel's group-maintenance workers through `workers` (ADR 0010).
- `notify:{channel}:group-posts`: group posts due (ADR 0010), read likewise by the group-posts workers.
- `<stream>:dead`: dead letters of any stream (`campaign:deliveries:dead`: campaign deliveries that
  exhausted their attempts; the rows stay in Postgres as `failed`).
- `tg:pause:{bot}` / `tg:rl:{bot}:{scope}`: the shared Telegram rate limiter (clarion.telegram.limiter).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

BOT_GROUP = "bot"
WORKER_GROUP = "workers"
DEFAULT_PARTITIONS = 16
DEDUP_TTL_SECONDS = 24 * 3600
# Campaign deliveries that exhausted their attempts go to dead_letter_stream(CAMPAIGN_DELIVERIES_STREAM).
CAMPAIGN_DELIVERIES_STREAM = "campaign:deliveries"


def update_partition(chat_id: int | None, partitions: int) -> int:
    """The partition of a chat: stable across processes (no Python hash randomisation)."""
    if chat_id is None:
        return 0
    return zlib.crc32(str(chat_id).encode()) % partitions


def updates_stream(channel: str, partition: int) -> str:
    return f"tg:updates:{channel}:{partition}"


def update_dedup_key(channel: str, update_id: int) -> str:
    return f"tg:dedup:{channel}:{update_id}"


def partition_lease_key(channel: str, partition: int) -> str:
    return f"tg:lease:{channel}:{partition}"


def bot_replicas_key(channel: str) -> str:
    """Sorted set of the live bot replicas of a channel; a member's score is its heartbeat expiry (ms)."""
    return f"tg:replicas:{channel}"


def notify_stream(channel: str, lane: str) -> str:
    """Work queue of one lane of one channel (`channel` is the channel key `<namespace>.<name>`)."""
    return f"notify:{channel}:{lane}"


GROUP_MAINTENANCE_LANE = "group-maintenance"
GROUP_POSTS_LANE = "group-posts"
#: The lanes of notification rows (`clarion.models.NotificationLane`): what the notification worker reads.
LANES = ("instant", "bulk", GROUP_POSTS_LANE)
GROUP_STREAM_MAXLEN = 10_000
"""Approximate cap of a group lane's stream: periodic work that nobody read is made again next period."""


def group_maintenance_stream(channel: str) -> str:
    """ManagedGroup maintenance work of one channel's groups (a worker lane of its own, ADR 0010)."""
    return notify_stream(channel, GROUP_MAINTENANCE_LANE)


def group_posts_stream(channel: str) -> str:
    """Group posts due on one channel's groups (a worker lane of its own, ADR 0010)."""
    return notify_stream(channel, GROUP_POSTS_LANE)


def group_task_dedup_key(stream: str, group_id: int, kind: str, slot: int) -> str:
    """Set (NX, with a TTL) by whoever adds the task of `kind` for period `slot`: the first adds it."""
    return f"{stream}:dedup:{group_id}:{kind}:{slot}"


def notification_status_stream(channel: str) -> str:
    """Final outcomes of one channel's notifications, for whoever follows them (the bot, the Mini App)."""
    return f"notify:{channel}:status"


def support_group(channel: str) -> str:
    """The consumer group a Telegram channel's bot follows status streams with (its own, and its reply
    email channel's, which other bots of the namespace may follow too: one group per bot)."""
    return f"support:{channel}"


def support_sweep_key(channel: str) -> str:
    """Held by the one bot replica of the channel that runs the support sweep this period."""
    return f"support:sweep:{channel}"


def groups_sweep_key(channel: str) -> str:
    """Held by the one bot replica of the channel that runs the managed groups' sweep this period (under
    `tg:lease:<channel>:`, so a namespace's Redis user already reaches it)."""
    return f"tg:lease:{channel}:groups-sweep"


def report_limit_key(channel: str, user_id: int) -> str:
    """Set for a minute when a user's /report went to the admins: one report a minute per user (under
    `tg:lease:<channel>:`, the prefix a namespace's Redis user already reaches)."""
    return f"tg:lease:{channel}:report:{user_id}"


def dead_letter_stream(stream: str) -> str:
    return f"{stream}:dead"


def attempts_key(stream: str) -> str:
    """Hash of handling attempts of entries taken over from a pending list (poison-entry guard)."""
    return f"{stream}:attempts"


def bot_pause_key(bot_id: int) -> str:
    """Set with a TTL of retry_after seconds when Telegram answers 429: every pod of the bot waits."""
    return f"tg:pause:{bot_id}"


def rate_key(bot_id: int, scope: str) -> str:
    return f"tg:rl:{bot_id}:{scope}"


def api_key_rate_key(key_id: int) -> str:
    """The shared rate limit (clarion.ratelimit) of one API key row, the same in every webhook replica."""
    return f"api:rl:{key_id}"


class UpdateEnvelope(BaseModel):
    """One Telegram update as the webhook stored it."""

    model_config = ConfigDict(extra="forbid")

    channel: str = Field(max_length=253)
    update_id: int
    chat_id: int | None = None
    received_at: float
    trace_id: str = Field(max_length=64)
    update: dict[str, Any]

    def to_fields(self) -> dict[str, bytes]:
        return {"e": self.model_dump_json().encode()}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> UpdateEnvelope:
        return cls.model_validate_json(fields[b"e"])


def update_envelope_fields(channel: str, update_id: int, chat_id: int | None, received_at: float,
                           trace_id: str, raw_update: bytes) -> dict[str, bytes]:
    """`UpdateEnvelope(...).to_fields()` without re-serialising the update.

    `raw_update` must be the UTF-8 JSON object the caller has already parsed; the result reads back
    with `UpdateEnvelope.from_fields`.
    """
    head = (f'{{"channel":{json.dumps(channel)},"update_id":{int(update_id)},'
            f'"chat_id":{"null" if chat_id is None else int(chat_id)},"received_at":{float(received_at)!r},'
            f'"trace_id":{json.dumps(trace_id)},"update":')
    return {"e": head.encode() + raw_update + b"}"}


class NotificationTask(BaseModel):
    """A pointer to an outbox row; the row itself is the durable record."""

    model_config = ConfigDict(extra="forbid")

    notification_id: str = Field(max_length=36)
    trace_id: str = Field(max_length=64)

    def to_fields(self) -> dict[str, bytes]:
        return {"e": self.model_dump_json().encode()}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> NotificationTask:
        return cls.model_validate_json(fields[b"e"])


class NotificationEvent(BaseModel):
    """A notification's final outcome (sent, failed, blocked), published after Postgres has it."""

    model_config = ConfigDict(extra="forbid")

    notification_id: str = Field(max_length=36)
    status: str = Field(max_length=16)
    channel: str = Field(max_length=320)
    reference: str | None = Field(default=None, max_length=256)
    error: str | None = Field(default=None, max_length=1000)
    provider_message_id: str | None = Field(default=None, max_length=998)
    attempts: int
    trace_id: str = Field(max_length=64)

    def to_fields(self) -> dict[str, bytes]:
        return {"e": self.model_dump_json().encode()}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> NotificationEvent:
        return cls.model_validate_json(fields[b"e"])


class GroupTaskKind(StrEnum):
    """What a group-maintenance entry asks the worker to do (ADR 0010). Each is idempotent: doing it
    twice in one period changes nothing the first did not."""

    INACTIVITY_SWEEP = "inactivity-sweep"
    """Warn members silent past warnAfterDays, remove (ban then unban) those past removeAfterDays."""
    ROTATE_INVITE = "rotate-invite"
    """Create the period's invite link (expiry, member limit) and revoke the previous one."""


class GroupTask(BaseModel):
    """One unit of group maintenance: the group's row, its chat, the kind and the period it is for."""

    model_config = ConfigDict(extra="forbid")

    group_id: int
    namespace: str = Field(max_length=63)
    name: str = Field(max_length=253)
    chat_id: int
    kind: GroupTaskKind
    slot: int
    """The period: the Unix time (s) it began. Periods are counted from the group's phase_since, so a
    phase change starts new ones; a later period always has a larger slot, across phases too."""
    trace_id: str = Field(max_length=64)

    def to_fields(self) -> dict[str, bytes]:
        return {"e": self.model_dump_json().encode()}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> GroupTask:
        return cls.model_validate_json(fields[b"e"])


async def add_tasks(redis: Any, tasks: Iterable[tuple[str, NotificationTask]]) -> None:
    """Put each (stream, task) on its stream, all in one pipelined round trip. Raises what Redis raised;
    the caller decides (a stored row's entry that fails is the workers' replayer's to add later)."""
    async with redis.pipeline(transaction=False) as pipe:
        for stream, task in tasks:
            pipe.xadd(stream, task.to_fields())
        await pipe.execute()


# SET the dedup key NX with a TTL; only when that set it, XADD (approximate MAXLEN). One script, so a
# tick is added exactly once however many operator passes race for it, and never marked without entry.
_ADD_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
    return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[3])
end
return false
"""


async def add_group_task(redis: Any, stream: str, task: GroupTask, period_seconds: float) -> bool:
    """Add `task` to `stream` unless this (group, kind, slot) was added already; True when added.

    The dedup key lives two periods, so a slot is never added twice while its neighbours can be.
    """
    key = group_task_dedup_key(stream, task.group_id, task.kind, task.slot)
    ttl = max(1, int(2 * period_seconds))
    added = await redis.eval(_ADD_ONCE, 2, stream, key, ttl, GROUP_STREAM_MAXLEN, task.to_fields()["e"])
    return added is not None
