"""What every reader of a stream through the consumer group `workers` does alike: the notification
worker (`clarion_senders.worker`) and the group lanes' consumer (`clarion_senders.group_lanes`).

- `ensure_group`: the group at 0-0 (every entry there is delivered), made with the stream if missing;
- `keep_pending`: entries a live consumer is still working on get their idle time reset (XCLAIM to
  itself, JUSTID), so other consumers' XAUTOCLAIM, which takes entries idle for a lease, leaves them;
- `leave_group`: a consumer that stops and holds nothing removes itself (scale-downs leave none);
- `forget_departed`: consumers that hold nothing and have not read for a long time (pods killed
  before they could leave) are removed by the live ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import structlog
from clarion.streams import WORKER_GROUP

log = structlog.get_logger("clarion.worker")


def text(value: object) -> str:
    """A Redis reply field as text (bytes or str, by the client's decoding)."""
    return value.decode() if isinstance(value, bytes) else str(value or "")


async def ensure_group(redis: aioredis.Redis, stream: str) -> None:
    """Create the group `workers` on `stream` at 0-0 (and the stream), unless it exists."""
    try:
        await redis.xgroup_create(stream, WORKER_GROUP, id="0", mkstream=True)
    except aioredis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def keep_pending(redis: aioredis.Redis, stream: str, consumer: str,
                       entry_ids: Sequence[bytes | str]) -> None:
    """Reset the idle time of entries `consumer` holds and is still working on (one XCLAIM, JUSTID:
    the delivery count stays), so that no other consumer takes them over meanwhile."""
    if entry_ids:
        await redis.xclaim(stream, WORKER_GROUP, consumer, 0, list(entry_ids), justid=True)


async def leave_group(redis: aioredis.Redis, stream: str, consumer: str) -> None:
    """Remove `consumer` from the group when it holds no entry there; a failure is logged (a consumer
    left behind is removed by the others' `forget_departed`)."""
    try:
        held: Any = await redis.xpending_range(stream, WORKER_GROUP, min="-", max="+", count=1,
                                               consumername=consumer)
        if not held:
            await redis.xgroup_delconsumer(stream, WORKER_GROUP, consumer)
    except Exception as exc:
        log.warning("worker.leave_group_failed", stream=stream, error=repr(exc)[:300])


async def forget_departed(redis: aioredis.Redis, stream: str, me: str, stale_seconds: float) -> None:
    """Remove consumers other than `me` that hold nothing and have not read for `stale_seconds`
    (a live one reads every second or so)."""
    stale_ms = stale_seconds * 1000
    try:
        consumers: Any = await redis.xinfo_consumers(stream, WORKER_GROUP)
        for consumer in consumers:
            name = text(consumer.get("name"))
            gone = not consumer.get("pending") and consumer.get("idle", 0) > stale_ms
            if gone and name != me:
                await redis.xgroup_delconsumer(stream, WORKER_GROUP, name)
                log.info("worker.consumer_forgotten", stream=stream, consumer=name)
    except Exception as exc:
        log.warning("worker.forget_failed", stream=stream, error=repr(exc)[:300])
