"""Following a Postgres table into memory: LISTEN/NOTIFY on a dedicated connection, with full reloads.

The webhook keeps copies of the tables on its request path (channels: `channels.py`, API keys:
`api_keys.py`) so that Postgres is not on that path and an outage does not stop it. `TableFollower`
is the part they share; each copy says how to load everything and how to apply changed rows.

- One dedicated connection LISTENs on the table's notification channel and then loads the whole
  table, so no change falls between the copy and the first notification. Notified payloads are
  applied in order, on one task; the payload '' (a TRUNCATE) reloads everything.
- The connection is pinged every `check_seconds` (a silent network partition closes nothing) and the
  whole table is reloaded every `reload_seconds` (a safety net for a lost notification).
- When the connection breaks, the copy stays as it was and is served; the session is retried with
  backoff (up to `check_seconds` between attempts), and a new one reloads the whole table before the
  copy counts as in sync again.

States, as readiness and metrics show them: not loaded (no copy yet) → in sync → stale (the copy is
served, `stale_seconds` grows) → in sync after the reconnect and reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

#: Deadline of one query or connection attempt; past it Postgres counts as unreachable.
QUERY_TIMEOUT_SECONDS = 2.0
#: Deadline of a full reload.
RELOAD_TIMEOUT_SECONDS = QUERY_TIMEOUT_SECONDS * 5
RETRY_MIN_SECONDS = 0.25


class _SessionLost(Exception):
    """The listening connection closed."""


class TableFollower:
    """Keeps one in-memory copy current; see the module doc.

    `reload_all()` replaces the whole copy; `apply(payloads)` applies the rows named by notification
    payloads (sorted, without repeats); `size()` counts the copy for log lines. Log events are named
    `<what>_copy_stale`, `<what>_copy_retry` and `<what>_copy_in_sync`, with the size as `count_name`.
    """

    def __init__(self, dsn: str, channel: str, *, what: str, count_name: str,
                 reload_all: Callable[[], Awaitable[None]], apply: Callable[[list[str]], Awaitable[None]],
                 size: Callable[[], int], check_seconds: float, reload_seconds: float, log: Any) -> None:
        self._dsn = dsn
        self._channel = channel
        self._what = what
        self._count_name = count_name
        self._reload = reload_all
        self._apply = apply
        self._size = size
        self._check_seconds = check_seconds
        self._reload_seconds = reload_seconds
        self._log = log
        self._changed: set[str] = set()
        self._wake = asyncio.Event()
        self._lost = False
        self.loaded = False
        self._synced_at: float | None = None  # None while in sync
        self._started_at = time.monotonic()
        self._first_attempt = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def in_sync(self) -> bool:
        return self._synced_at is None and self.loaded

    def stale_seconds(self) -> float:
        """0 while in sync; else the time since the copy was last in sync (or since start)."""
        if self.in_sync:
            return 0.0
        since = self._synced_at if self._synced_at is not None else self._started_at
        return time.monotonic() - since

    async def start(self, first_load_timeout: float = 10.0) -> None:
        """Start following; return once the first attempt loaded the copy or failed."""
        self._task = asyncio.create_task(self._follow(), name=f"{self._what}-copy")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(first_load_timeout):
                await self._first_attempt.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _reload_all(self) -> None:
        async with asyncio.timeout(RELOAD_TIMEOUT_SECONDS):
            await self._reload()
        self.loaded = True

    async def _follow(self) -> None:
        delay = RETRY_MIN_SECONDS
        while True:
            try:
                await self._session()
            except Exception as exc:  # whatever broke the session, the copy is served and it is retried
                if self.in_sync:
                    self._synced_at = time.monotonic()
                    delay = RETRY_MIN_SECONDS
                    self._log.warning(f"{self._what}_copy_stale", error=type(exc).__name__,
                                      **{self._count_name: self._size()})
                else:
                    self._log.debug(f"{self._what}_copy_retry", error=type(exc).__name__, delay=delay)
            self._first_attempt.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._check_seconds)

    async def _session(self) -> None:
        """Listen, load everything, then follow notifications until the connection is lost."""
        conn: Any = await asyncpg.connect(self._dsn, timeout=QUERY_TIMEOUT_SECONDS)
        self._lost = False

        def on_close(_: Any) -> None:
            self._lost = True
            self._wake.set()

        def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            self._changed.add(payload)
            self._wake.set()

        conn.add_termination_listener(on_close)
        try:
            await conn.add_listener(self._channel, on_notify)
            self._changed.clear()
            await self._reload_all()
            if self._synced_at is not None:
                self._log.info(f"{self._what}_copy_in_sync", stale_seconds=round(self.stale_seconds(), 3),
                               **{self._count_name: self._size()})
            self._synced_at = None
            self._first_attempt.set()
            next_reload = time.monotonic() + self._reload_seconds
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._check_seconds):
                        await self._wake.wait()
                self._wake.clear()
                if self._lost:
                    raise _SessionLost
                if self._changed:
                    await self._apply_changes()
                else:  # quiet for check_seconds: is the connection still there?
                    async with asyncio.timeout(QUERY_TIMEOUT_SECONDS):
                        await conn.fetchval("SELECT 1")
                if time.monotonic() >= next_reload:
                    await self._reload_all()
                    next_reload = time.monotonic() + self._reload_seconds
        finally:
            conn.terminate()

    async def _apply_changes(self) -> None:
        changed, self._changed = self._changed, set()
        if "" in changed:
            await self._reload_all()
            return
        await self._apply(sorted(changed))


class FollowedCopy:
    """A table copy kept by a `TableFollower` (`self._follower`): how it stands, and its stop."""

    _follower: TableFollower

    @property
    def loaded(self) -> bool:
        return self._follower.loaded

    @property
    def in_sync(self) -> bool:
        return self._follower.in_sync

    def stale_seconds(self) -> float:
        """0 while in sync; else the time since the copy was last in sync (or since start)."""
        return self._follower.stale_seconds()

    async def stop(self) -> None:
        await self._follower.stop()
