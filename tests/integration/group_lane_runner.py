"""A real `GroupLaneConsumer` process for tests/integration/test_group_lane_consumer.py, with a handler of
the test's own in place of the ManagedGroup maintenance (which the worker's `group_task_handler` plugs
in): it records in Redis what it did, so the test sees each task's handling from outside the process.

    python tests/integration/group_lane_runner.py <redis_url> <stream> <consumer> <lease_seconds>

The handler, per task (keys `<stream>:test:*`): counts the call (`calls`, a hash by group id); fails
while `fail[group id]` says so (N: the first N calls, -1: always); a consumer named in the set `hold`
marks the task `started` and then works for an hour (the test kills it meanwhile); done, it appends
"<consumer> <group id> <slot>" to the list `handled`. Exits 0 after SIGTERM, like clarion-worker.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import redis.asyncio as aioredis
from clarion.streams import GroupTask
from clarion_senders.group_lanes import GroupLaneConsumer, GroupLaneOptions


class RecordingHandler:
    def __init__(self, redis: aioredis.Redis, stream: str, consumer: str) -> None:
        self.redis, self.prefix, self.consumer = redis, f"{stream}:test:", consumer

    async def handle(self, task: GroupTask) -> None:
        group = str(task.group_id)
        calls = int(await self.redis.hincrby(self.prefix + "calls", group, 1))
        failing = int(await self.redis.hget(self.prefix + "fail", group) or 0)
        if failing < 0 or calls <= failing:
            raise RuntimeError(f"group {group} refused call {calls}")
        if await self.redis.sismember(self.prefix + "hold", self.consumer):
            await self.redis.rpush(self.prefix + "started", f"{self.consumer} {group}")
            await asyncio.sleep(3600)
        await self.redis.rpush(self.prefix + "handled", f"{self.consumer} {group} {task.slot}")


async def run(url: str, stream: str, consumer: str, lease: float) -> None:
    redis = aioredis.from_url(url)
    worker = GroupLaneConsumer(
        redis=redis, channel_key="shop.alerts", stream=stream,
        handler=RecordingHandler(redis, stream, consumer),
        consumer=consumer, options=GroupLaneOptions(concurrency=4, lease_seconds=lease, max_attempts=3,
                                                    retry_backoff_seconds=0.1, stop_grace_seconds=5))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, worker.stop)
    try:
        await worker.run()
    finally:
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
