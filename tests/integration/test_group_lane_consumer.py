"""The group-maintenance lane's `GroupLaneConsumer` as real processes on a real Redis
(tests/integration/group_lane_runner.py runs it with a handler that records what it did): every task
handled once however many consumers read, a failing task tried again and then dead-lettered with its
error, a killed consumer's task taken over by another, and a stopped consumer leaving the group."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from clarion.streams import (
    WORKER_GROUP,
    GroupTask,
    GroupTaskKind,
    attempts_key,
    dead_letter_stream,
    group_maintenance_stream,
)
from clarion_dev.testing.processes import stop_processes
from clarion_dev.testing.waiting import async_wait_for

pytestmark = pytest.mark.integration

RUNNER = Path(__file__).with_name("group_lane_runner.py")
STREAM = group_maintenance_stream("shop.alerts")


def _task(group_id: int, slot: int = 1, kind: GroupTaskKind = GroupTaskKind.INACTIVITY_SWEEP) -> GroupTask:
    return GroupTask(group_id=group_id, namespace="shop", name=f"g{group_id}", chat_id=-1000 - group_id,
                     kind=kind, slot=slot, trace_id=os.urandom(16).hex())


class Consumers:
    """group_lane_runner.py processes of the test."""

    def __init__(self, redis_url: str, tmp_path: Path) -> None:
        self.redis_url, self.tmp_path = redis_url, tmp_path
        self.procs: dict[str, asyncio.subprocess.Process] = {}

    async def start(self, name: str, lease: float = 30.0) -> asyncio.subprocess.Process:
        log = (self.tmp_path / f"{name}.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(RUNNER), self.redis_url, STREAM, name, str(lease),
            env={**os.environ, "CLARION_LOG_FORMAT": "json"}, stdout=log, stderr=log)
        self.procs[name] = proc
        # started (its SIGTERM handler in place, its reads begun) before the test goes on: a consumer still
        # importing would miss the work, and a SIGTERM would kill it outright
        path = self.tmp_path / f"{name}.log"
        await _until(self, f"consumer {name} started",
                     lambda: "group_lane.start" in path.read_text(errors="replace") or None)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{(self.tmp_path / f'{name}.log').read_text(errors='replace')}"
                         for name in self.procs)


@pytest.fixture
async def consumers(redis_url: str, tmp_path: Path) -> AsyncIterator[Consumers]:
    found = Consumers(redis_url, tmp_path)
    try:
        yield found
    finally:
        await stop_processes(found.procs.values())


async def _add(redis: aioredis.Redis, *tasks: GroupTask) -> None:
    for task in tasks:
        await redis.xadd(STREAM, task.to_fields())  # type: ignore[arg-type]


async def _handled(redis: aioredis.Redis) -> list[tuple[str, int, int]]:
    raw: Any = await redis.lrange(f"{STREAM}:test:handled", 0, -1)
    return [(consumer, int(group), int(slot))
            for consumer, group, slot in (entry.decode().split() for entry in raw)]


async def _until(consumers: Consumers, what: str, check: Any, timeout: float = 60) -> Any:
    try:
        return await async_wait_for(check, timeout=timeout, interval=0.1, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{consumers.logs()}") from None


async def _pending(redis: aioredis.Redis) -> int:
    summary: Any = await redis.xpending(STREAM, WORKER_GROUP)
    return int(summary["pending"])


async def test_every_task_is_handled_once_by_two_consumers_and_a_stopped_consumer_leaves_the_group(
    consumers: Consumers, redis: aioredis.Redis,
) -> None:
    await consumers.start("a")
    await consumers.start("b")
    await _add(redis, *(_task(group_id) for group_id in range(1, 61)))

    async def all_handled() -> list[tuple[str, int, int]] | None:
        found = await _handled(redis)
        return found if len(found) >= 60 else None

    handled = await _until(consumers, "60 tasks handled", all_handled)
    assert Counter(group for _, group, _ in handled) == Counter(range(1, 61))  # each exactly once
    assert await _pending(redis) == 0
    assert await redis.exists(dead_letter_stream(STREAM)) == 0

    for proc in consumers.procs.values():
        proc.send_signal(signal.SIGTERM)
    codes = [await asyncio.wait_for(proc.wait(), 30) for proc in consumers.procs.values()]
    assert codes == [0, 0], consumers.logs()
    assert await redis.xinfo_consumers(STREAM, WORKER_GROUP) == []


async def test_a_failing_task_is_tried_again_and_dead_lettered_with_its_error_after_three_attempts(
    consumers: Consumers, redis: aioredis.Redis,
) -> None:
    await redis.hset(f"{STREAM}:test:fail", mapping={"7": -1, "8": 1})  # 7 always fails, 8 once
    await consumers.start("a")
    await _add(redis, _task(7), _task(8), _task(9))

    async def dead() -> list[Any] | None:
        found: Any = await redis.xrange(dead_letter_stream(STREAM))
        return found or None

    [(_, letter)] = await _until(consumers, "the failing task dead-lettered", dead)
    assert letter[b"reason"] == b"attempts_exhausted" and letter[b"attempts"] == b"3"
    assert b"group 7 refused call 3" in letter[b"error"]
    assert GroupTask.model_validate_json(letter[b"task"]).group_id == 7

    async def others_done() -> list[tuple[str, int, int]] | None:
        found = await _handled(redis)
        return found if len(found) >= 2 else None

    handled = await _until(consumers, "the other two handled", others_done)
    assert sorted(group for _, group, _ in handled) == [8, 9]
    calls: Any = await redis.hgetall(f"{STREAM}:test:calls")
    assert calls == {b"7": b"3", b"8": b"2", b"9": b"1"}
    assert await _pending(redis) == 0
    assert await redis.hlen(attempts_key(STREAM)) == 0


async def test_a_killed_consumer_s_task_is_taken_over_by_another_after_the_lease(
    consumers: Consumers, redis: aioredis.Redis,
) -> None:
    await redis.sadd(f"{STREAM}:test:hold", "doomed")
    doomed = await consumers.start("doomed", lease=2)
    await _add(redis, _task(5, kind=GroupTaskKind.ROTATE_INVITE))

    async def started() -> bool:
        return bool(await redis.llen(f"{STREAM}:test:started"))

    await _until(consumers, "the doomed consumer working on the task", started)
    doomed.kill()
    await doomed.wait()
    assert await _pending(redis) == 1

    await consumers.start("heir", lease=2)

    async def taken_over() -> list[tuple[str, int, int]] | None:
        return await _handled(redis) or None

    assert await _until(consumers, "the task handled by the other consumer", taken_over) == [("heir", 5, 1)]
    assert await _pending(redis) == 0
    calls: Any = await redis.hgetall(f"{STREAM}:test:calls")
    assert calls == {b"5": b"2"}  # the dead consumer's attempt, and the one that finished
