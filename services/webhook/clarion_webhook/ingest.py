"""The hot path: find the chat of an update, then dedup and enqueue it in one Redis round trip.

Concurrent requests share pipelines: while one pipeline is in flight, new updates queue up and go
out together in the next one. Each update still waits for its own result, so nothing is answered
200 before Redis has stored it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

#: KEYS: dedup key, stream. ARGV: ttl seconds, field, value. The stream entry is written before the
#: dedup key, so a dedup key never exists without its entry (a script that fails midway keeps what it wrote).
INGEST_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('XADD', KEYS[2], '*', ARGV[2], ARGV[3])
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
return 1
"""

_USER_KEYS = ("from", "user")


def update_chat_id(update: Mapping[str, Any]) -> int | None:
    """The id that orders an update: its chat, else its user (inline queries, poll answers), else None."""
    for kind, body in update.items():
        if kind == "update_id" or not isinstance(body, dict):
            continue
        chat = body.get("chat")
        if chat is None and isinstance(body.get("message"), dict):
            chat = body["message"].get("chat")
        if isinstance(chat, dict) and _is_int(chat.get("id")):
            return int(chat["id"])
        for user_key in _USER_KEYS:
            user = body.get(user_key)
            if isinstance(user, dict) and _is_int(user.get("id")):
                return int(user["id"])
        return None
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class StreamWriter:
    """Runs the ingest script for many concurrent callers over few pipelines."""

    def __init__(self, redis: aioredis.Redis, *, max_batch: int = 512) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._sha = ""
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def load(self) -> None:
        self._sha = str(await self._redis.script_load(INGEST_LUA))

    async def ingest(self, dedup_key: str, stream: str, ttl: int, fields: dict[str, bytes]) -> bool:
        """True when the update was stored now, False when it was stored before (a duplicate)."""
        ((field, value),) = fields.items()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append(((dedup_key, stream, ttl, field, value), future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return bool(await future)

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch:]
                try:
                    results = await self._run(batch)
                except (TimeoutError, RedisError, OSError) as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(int(result))
        finally:
            self._flusher = None

    async def _run(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[int]]]) -> list[Any]:
        if not self._sha:
            await self.load()
        results = await self._pipeline(batch)
        if any(isinstance(r, NoScriptError) for r in results):  # Redis restarted or flushed its scripts
            await self.load()
            results = await self._pipeline(batch)
        return results

    async def _pipeline(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[int]]]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for (dedup_key, stream, ttl, field, value), _ in batch:
                pipe.evalsha(self._sha, 2, dedup_key, stream, ttl, field, value)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

