"""How much work waits on a stream for one consumer group: the signal worker autoscaling reads (ADR 0008).

`read_backlog` takes XLEN and XINFO GROUPS in one MULTI (one consistent snapshot), then settles the
cases where Redis's own `lag` is missing or wrong (the table in docs/operator.md, "Worker autoscaling"):

- no stream: nothing waits;
- no such group (no worker has started yet): XLEN, since the worker creates the group at 0-0 and is
  delivered every entry there is;
- `lag` N: min(N, XLEN), since entries trimmed before they were read still count in N and are gone;
- `lag` nil (an XDEL after the group's position, or a read counter reset by XGROUP SETID, leaves
  Redis unable to count): XLEN when last-delivered-id is 0-0, else the entries after it, counted
  with XRANGE up to `count_limit` — more than that and the lag is unknown, at least `count_limit`.

Trimming what the group has read and acknowledged (the worker's XTRIM MINID) changes neither lag nor
entries-read: Redis counts them from entries-added, which trimming keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from clarion.models import LagSource

#: Entries counted at most when Redis cannot tell the lag. The scaler passes its policy's
#: `full_scale_backlog` instead: past that many, every count gives the same decision.
DEFAULT_COUNT_LIMIT = 10_000


@dataclass(frozen=True)
class Backlog:
    """Entries of one stream waiting for one consumer group.

    `lag`: entries not yet delivered to any consumer of the group; None when unknown, with
    `lag_floor` entries known to wait. `pending`: delivered and not yet acknowledged (in flight, or
    held by a consumer that died until someone claims them).
    """

    stream_exists: bool
    group_exists: bool
    length: int
    lag: int | None
    lag_floor: int
    pending: int
    source: LagSource

    @property
    def waiting(self) -> int:
        """Entries known to need a worker: undelivered (at least) plus unacknowledged."""
        return self.lag_floor + self.pending


def _backlog(source: LagSource, *, length: int, lag: int | None, floor: int | None = None, pending: int = 0,
             stream_exists: bool = True, group_exists: bool = True) -> Backlog:
    return Backlog(stream_exists=stream_exists, group_exists=group_exists, length=length, lag=lag,
                   lag_floor=lag if floor is None and lag is not None else floor or 0, pending=pending,
                   source=source)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def read_backlog(redis: aioredis.Redis, stream: str, group: str, *,
                       count_limit: int = DEFAULT_COUNT_LIMIT) -> Backlog:
    """The backlog of `group` on `stream` (see the module's table); raises what Redis raises when it
    cannot be reached."""
    if count_limit < 1:
        raise ValueError("count_limit must be at least 1")
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xlen(stream)
        pipe.xinfo_groups(stream)
        length, groups = await pipe.execute(raise_on_error=False)
    if isinstance(length, Exception):
        raise length
    if isinstance(groups, aioredis.ResponseError) and "no such key" in str(groups):
        return _backlog(LagSource.NO_STREAM, length=0, lag=0, stream_exists=False, group_exists=False)
    if isinstance(groups, Exception):
        raise groups
    info: dict[Any, Any] | None = next((g for g in groups if _text(g.get("name")) == group), None)
    if info is None:
        return _backlog(LagSource.NO_GROUP, length=length, lag=length, group_exists=False)
    pending = int(info.get("pending") or 0)
    reported = info.get("lag")
    if reported is not None:
        lag = min(int(reported), length)
        return _backlog(LagSource.REPORTED, length=length, lag=lag, pending=pending)
    last = _text(info.get("last-delivered-id") or "0-0")
    if last == "0-0":
        return _backlog(LagSource.LENGTH, length=length, lag=length, pending=pending)
    counted = len(await redis.xrange(stream, min=f"({last}", max="+", count=count_limit) or [])
    if counted >= count_limit:
        return _backlog(LagSource.UNKNOWN, length=length, lag=None, floor=count_limit, pending=pending)
    return _backlog(LagSource.COUNTED, length=length, lag=counted, pending=pending)
