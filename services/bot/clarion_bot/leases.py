"""Partition leases: which replica handles which partition of a channel's update streams.

Each replica heartbeats into a sorted set (score = expiry); the live count gives every replica the
same fair share, ceil(partitions / live). A replica renews the leases it holds, gives back those above
its share (after finishing the entry in hand) and takes free ones up to its share. A lease is a key
`SET NX PX` holding the replica id; renewal and release check the holder, so nobody extends or drops a
lease it lost.
"""

from __future__ import annotations

import math
import time
import zlib

import redis.asyncio as aioredis
from clarion.streams import bot_replicas_key, partition_lease_key

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def fair_share(partitions: int, live_replicas: int) -> int:
    """Most partitions one replica may hold while `live_replicas` replicas are alive."""
    return math.ceil(partitions / max(1, live_replicas))


def preferred_order(replica_id: str, partitions: int) -> list[int]:
    """All partitions from an offset derived from the replica id, so replicas rarely race for one."""
    start = zlib.crc32(replica_id.encode()) % partitions
    return [(start + i) % partitions for i in range(partitions)]


class Leases:
    """Lease and heartbeat calls of one replica on one channel."""

    def __init__(self, redis: aioredis.Redis, channel: str, replica_id: str, ttl_ms: int) -> None:
        self.redis = redis
        self.channel = channel
        self.replica_id = replica_id
        self.ttl_ms = ttl_ms
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def heartbeat(self) -> int:
        """Announce this replica alive for one TTL; return how many replicas are alive now."""
        now_ms = int(time.time() * 1000)
        key = bot_replicas_key(self.channel)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {self.replica_id: now_ms + self.ttl_ms})
            pipe.zremrangebyscore(key, "-inf", now_ms)
            pipe.zcard(key)
            pipe.pexpire(key, self.ttl_ms * 10)
            results = await pipe.execute()
        return int(results[2])

    async def leave(self) -> None:
        await self.redis.zrem(bot_replicas_key(self.channel), self.replica_id)

    async def acquire(self, partition: int) -> bool:
        key = partition_lease_key(self.channel, partition)
        return bool(await self.redis.set(key, self.replica_id, nx=True, px=self.ttl_ms))

    async def renew(self, partition: int) -> bool:
        key = partition_lease_key(self.channel, partition)
        return bool(await self._renew(keys=[key], args=[self.replica_id, self.ttl_ms]))

    async def release(self, partition: int) -> None:
        await self._release(keys=[partition_lease_key(self.channel, partition)], args=[self.replica_id])
