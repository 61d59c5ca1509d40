"""The webhook's copy of the channel table: kept current by LISTEN/NOTIFY, served while Postgres is down.

Every request needs its channel's row (type, secret token digest), and Postgres must not be on that
path: while it is down, Telegram would get 503 for every update and retry with growing delays.

- One dedicated connection LISTENs on `clarion_channels` (migration 0007 notifies each changed row's
  key) and then loads the whole table, so no change falls between the copy and the first notification.
  Each notification reloads that one row, in order, on one task.
- The connection is pinged every `check_seconds` (a silent network partition closes nothing) and the
  whole table is reloaded every `reload_seconds` (a safety net for a lost notification).
- When the connection breaks, the copy stays as it was and is served; the session is retried with
  backoff, and a new one reloads the whole table before it counts as in sync again.
- A key not in the copy is looked up (one query per key at a time); its absence is remembered for
  `miss_ttl` seconds. While Postgres is down such a lookup fails and the caller answers 503.

States, as readiness and metrics show them: not loaded (no copy yet) → in sync → stale (the copy is
served, `stale_seconds` grows) → in sync after the reconnect and reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg
from clarion.db.channels import CHANNELS_NOTIFY, ChannelRecord, get_channel, list_channels
from clarion.keys import split_channel_key
from clarion.logging import get_logger
from clarion.metrics import gauge

DATABASE_UP = gauge("clarion_webhook_database_up",
                    "1 while the channel copy is in sync with Postgres (listening and loaded), else 0.")
STALE_SECONDS = gauge("clarion_webhook_channel_cache_stale_seconds",
                      "Seconds since the channel copy was last known to be in sync with Postgres; 0 in sync.")
CACHED_CHANNELS = gauge("clarion_webhook_channel_cache_channels", "Channels in the webhook's channel copy.")

#: Deadline of one query or connection attempt; past it Postgres counts as unreachable.
QUERY_TIMEOUT_SECONDS = 2.0
RETRY_MIN_SECONDS = 0.25

log = get_logger("clarion.webhook.channels")


class _SessionLost(Exception):
    """The listening connection closed."""


class ChannelCache:
    """Channel rows by key, copied from Postgres and followed by LISTEN/NOTIFY; see the module doc."""

    def __init__(self, db: asyncpg.Pool, dsn: str, *, miss_ttl: float, check_seconds: float = 5.0,
                 reload_seconds: float = 300.0, max_misses: int = 10_000) -> None:
        self._db = db
        self._dsn = dsn
        self._miss_ttl = miss_ttl
        self._check_seconds = check_seconds
        self._reload_seconds = reload_seconds
        self._max_misses = max_misses
        self._channels: dict[str, ChannelRecord] = {}
        self._misses: dict[str, float] = {}
        self._loading: dict[str, asyncio.Future[ChannelRecord | None]] = {}
        self._changed: set[str] = set()
        self._wake = asyncio.Event()
        self._lost = False
        self.loaded = False
        self._synced_at: float | None = None  # None while in sync
        self._started_at = time.monotonic()
        self._first_attempt = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- reading ---------------------------------------------------------------------------------

    async def get(self, key: str) -> ChannelRecord | None:
        """The live channel with this key, or None; raises when it is not in the copy and Postgres fails."""
        record = self._channels.get(key)
        if record is not None:
            return record
        expiry = self._misses.get(key)
        if expiry is not None and expiry > time.monotonic():
            return None
        if split_channel_key(key) is None:
            return None
        loading = self._loading.get(key)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[ChannelRecord | None] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            async with asyncio.timeout(QUERY_TIMEOUT_SECONDS):
                record = await get_channel(self._db, key)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else needs to
            raise
        finally:
            del self._loading[key]
        self._put(key, record)
        future.set_result(record)
        return record

    @property
    def in_sync(self) -> bool:
        return self._synced_at is None and self.loaded

    def stale_seconds(self) -> float:
        """0 while in sync; else the time since the copy was last in sync (or since start)."""
        if self.in_sync:
            return 0.0
        since = self._synced_at if self._synced_at is not None else self._started_at
        return time.monotonic() - since

    def __len__(self) -> int:
        return len(self._channels)

    # -- keeping it current ----------------------------------------------------------------------

    async def start(self, first_load_timeout: float = 10.0) -> None:
        """Start following Postgres; return once the first attempt loaded the copy or failed."""
        DATABASE_UP.set_function(lambda: 1.0 if self.in_sync else 0.0)
        STALE_SECONDS.set_function(self.stale_seconds)
        CACHED_CHANNELS.set_function(lambda: float(len(self._channels)))
        self._task = asyncio.create_task(self._follow(), name="channel-cache")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(first_load_timeout):
                await self._first_attempt.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _put(self, key: str, record: ChannelRecord | None) -> None:
        if record is None:
            self._channels.pop(key, None)
            if len(self._misses) >= self._max_misses:
                self._misses.clear()
            self._misses[key] = time.monotonic() + self._miss_ttl
        else:
            self._channels[key] = record
            self._misses.pop(key, None)

    async def _reload_all(self) -> None:
        async with asyncio.timeout(QUERY_TIMEOUT_SECONDS * 5):
            records = await list_channels(self._db)
        self._channels = {record.key: record for record in records}
        self._misses.clear()
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
                    log.warning("channel_copy_stale", error=type(exc).__name__, channels=len(self._channels))
                else:
                    log.debug("channel_copy_retry", error=type(exc).__name__, delay=delay)
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
            await conn.add_listener(CHANNELS_NOTIFY, on_notify)
            self._changed.clear()
            await self._reload_all()
            if self._synced_at is not None:
                log.info("channel_copy_in_sync", channels=len(self._channels),
                         stale_seconds=round(self.stale_seconds(), 3))
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
        for key in sorted(changed):
            async with asyncio.timeout(QUERY_TIMEOUT_SECONDS):
                record = await get_channel(self._db, key)
            self._put(key, record)
            log.info("channel_changed", channel=key, live=record is not None)
