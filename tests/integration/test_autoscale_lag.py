"""The backlog autoscaling reads (clarion.backlog) against a real Redis, in each state a lane's stream
and its `workers` group can be in: missing, fresh, read, trimmed, fragmented by XDEL, reset."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from clarion.backlog import Backlog, read_backlog
from clarion.models import LagSource
from clarion.streams import WORKER_GROUP, notify_stream

pytestmark = pytest.mark.integration

STREAM = notify_stream("tenant-a.news", "instant")


async def _add(redis: aioredis.Redis, count: int) -> list[bytes]:
    added: list[Any] = [await redis.xadd(STREAM, {"e": b"{}"}) for _ in range(count)]
    return added


async def _read(redis: aioredis.Redis, count: int, *, ack: bool) -> list[bytes]:
    """Deliver `count` entries to a consumer of the group, as a worker does (acknowledged if `ack`)."""
    reply: Any = await redis.xreadgroup(WORKER_GROUP, "w1", {STREAM: ">"}, count=count)
    ids: list[bytes] = [entry_id for _, entries in reply for entry_id, _ in entries]
    if ack and ids:
        await redis.xack(STREAM, WORKER_GROUP, *ids)
    return ids


async def _group(redis: aioredis.Redis) -> None:
    """The group as the worker creates it: at 0-0, so it is delivered every entry there is."""
    await redis.xgroup_create(STREAM, WORKER_GROUP, id="0", mkstream=True)


async def _redis_lag(redis: aioredis.Redis) -> object:
    groups = await redis.xinfo_groups(STREAM)
    return groups[0]["lag"]


async def test_a_missing_stream_has_nothing_waiting(redis: aioredis.Redis) -> None:
    assert await read_backlog(redis, STREAM, WORKER_GROUP) == Backlog(
        stream_exists=False, group_exists=False, length=0, lag=0, lag_floor=0, pending=0,
        source=LagSource.NO_STREAM)


async def test_without_the_group_every_entry_waits(redis: aioredis.Redis) -> None:
    await _add(redis, 7)
    await redis.xgroup_create(STREAM, "someone-else", id="$")

    backlog = await read_backlog(redis, STREAM, WORKER_GROUP)

    assert (backlog.stream_exists, backlog.group_exists) == (True, False)
    assert (backlog.lag, backlog.pending, backlog.waiting, backlog.source) == (7, 0, 7, LagSource.NO_GROUP)


async def test_a_group_reports_undelivered_and_unacknowledged_apart(redis: aioredis.Redis) -> None:
    await _group(redis)
    await _add(redis, 10)
    await _read(redis, 3, ack=True)
    await _read(redis, 2, ack=False)

    backlog = await read_backlog(redis, STREAM, WORKER_GROUP)

    assert (backlog.lag, backlog.pending, backlog.waiting, backlog.length) == (5, 2, 7, 10)
    assert backlog.source == LagSource.REPORTED


async def test_the_workers_trim_of_read_entries_leaves_the_lag_right(redis: aioredis.Redis) -> None:
    await _group(redis)
    await _add(redis, 6)
    read = await _read(redis, 4, ack=True)
    # what the worker's replay loop does: drop the entries read and acknowledged
    await redis.xtrim(STREAM, minid=read[-1].decode(), approximate=False)

    backlog = await read_backlog(redis, STREAM, WORKER_GROUP)

    assert (backlog.length, backlog.lag, backlog.pending, backlog.source) == (3, 2, 0, LagSource.REPORTED)


async def test_entries_trimmed_before_they_were_read_no_longer_count(redis: aioredis.Redis) -> None:
    await _group(redis)
    await _add(redis, 5)
    await _read(redis, 2, ack=True)
    await redis.xtrim(STREAM, maxlen=0, approximate=False)
    await _add(redis, 1)
    assert await _redis_lag(redis) == 4  # Redis still counts the three trimmed unread entries

    backlog = await read_backlog(redis, STREAM, WORKER_GROUP)

    assert (backlog.length, backlog.lag, backlog.source) == (1, 1, LagSource.REPORTED)


async def test_lag_redis_cannot_count_after_an_xdel_is_counted_from_the_last_delivered_entry(
        redis: aioredis.Redis) -> None:
    await _group(redis)
    ids = await _add(redis, 8)
    await _read(redis, 3, ack=False)
    await redis.xdel(STREAM, ids[5])  # a hole ahead of the group: Redis reports lag nil
    assert await _redis_lag(redis) is None

    backlog = await read_backlog(redis, STREAM, WORKER_GROUP)

    assert (backlog.lag, backlog.pending, backlog.waiting, backlog.source) == (4, 3, 7, LagSource.COUNTED)


async def test_counting_stops_at_the_limit_and_reports_the_lag_unknown(redis: aioredis.Redis) -> None:
    await _group(redis)
    ids = await _add(redis, 30)
    await _read(redis, 1, ack=True)
    await redis.xdel(STREAM, ids[10])

    backlog = await read_backlog(redis, STREAM, WORKER_GROUP, count_limit=20)

    assert (backlog.lag, backlog.lag_floor, backlog.source) == (None, 20, LagSource.UNKNOWN)
    assert backlog.waiting == 20


async def test_a_group_reset_to_the_start_after_a_trim_waits_for_every_entry(redis: aioredis.Redis) -> None:
    await _group(redis)
    ids = await _add(redis, 6)
    read = await _read(redis, 4, ack=True)
    await redis.xtrim(STREAM, minid=read[-1].decode(), approximate=False)
    await redis.xdel(STREAM, ids[5])
    await redis.xgroup_setid(STREAM, WORKER_GROUP, "0")
    groups = await redis.xinfo_groups(STREAM)
    assert (groups[0]["entries-read"], groups[0]["lag"]) == (None, None)

    backlog = await read_backlog(redis, STREAM, WORKER_GROUP)

    assert (backlog.length, backlog.lag, backlog.source) == (2, 2, LagSource.LENGTH)


async def test_a_group_whose_read_counter_was_reset_gets_its_lag_from_redis_while_no_entry_was_deleted(
        redis: aioredis.Redis) -> None:
    await _group(redis)
    await _add(redis, 5)
    read = await _read(redis, 3, ack=True)
    await redis.xtrim(STREAM, minid=read[-1].decode(), approximate=False)
    await redis.xgroup_setid(STREAM, WORKER_GROUP, read[-1])
    groups = await redis.xinfo_groups(STREAM)
    assert groups[0]["entries-read"] is None

    backlog = await read_backlog(redis, STREAM, WORKER_GROUP)

    assert (backlog.lag, backlog.source) == (2, LagSource.REPORTED)


async def test_a_key_of_another_type_is_an_error_not_an_empty_backlog(redis: aioredis.Redis) -> None:
    await redis.set(STREAM, b"oops")

    with pytest.raises(aioredis.ResponseError, match="WRONGTYPE"):
        await read_backlog(redis, STREAM, WORKER_GROUP)
