"""The webhook's copy of the channel table: kept current by LISTEN/NOTIFY, served while Postgres is down.

Every request needs its channel's row (type, secret token digest), and Postgres must not be on that
path: while it is down, Telegram would get 503 for every update and retry with growing delays.

- `follower.TableFollower` keeps the copy current: it LISTENs on `clarion_channels` (migration 0007
  notifies each changed row's key), loads the whole table, reloads each notified row, pings the
  connection every `check_seconds`, reloads everything every `reload_seconds`, and when the
  connection breaks serves the copy as it was while it reconnects with backoff.
- A key not in the copy is looked up (one query per key at a time); its absence is remembered for
  `miss_ttl` seconds. While Postgres is down such a lookup fails and the caller answers 503.

States, as readiness and metrics show them: not loaded (no copy yet) → in sync → stale (the copy is
served, `stale_seconds` grows) → in sync after the reconnect and reload.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
from clarion.db.channels import CHANNELS_NOTIFY, ChannelRecord, channel_key_of, get_channel, list_channels
from clarion.keys import split_channel_key
from clarion.logging import get_logger
from clarion.metrics import gauge

from clarion_webhook.follower import QUERY_TIMEOUT_SECONDS, FollowedCopy, TableFollower

DATABASE_UP = gauge("clarion_webhook_database_up",
                    "1 while the channel copy is in sync with Postgres (listening and loaded), else 0.")
STALE_SECONDS = gauge("clarion_webhook_channel_cache_stale_seconds",
                      "Seconds since the channel copy was last known to be in sync with Postgres; 0 in sync.")
CACHED_CHANNELS = gauge("clarion_webhook_channel_cache_channels", "Channels in the webhook's channel copy.")

log = get_logger("clarion.webhook.channels")


class ChannelCache(FollowedCopy):
    """Channel rows by key, copied from Postgres and followed by LISTEN/NOTIFY; see the module doc."""

    def __init__(self, db: asyncpg.Pool, dsn: str, *, miss_ttl: float, check_seconds: float = 5.0,
                 reload_seconds: float = 300.0, max_misses: int = 10_000) -> None:
        self._db = db
        self._miss_ttl = miss_ttl
        self._max_misses = max_misses
        self._channels: dict[str, ChannelRecord] = {}
        self._misses: dict[str, float] = {}
        self._loading: dict[str, asyncio.Future[ChannelRecord | None]] = {}
        self._follower = TableFollower(
            dsn, CHANNELS_NOTIFY, what="channel", count_name="channels", reload_all=self._reload_all,
            apply=self._apply_changes, size=self.__len__, check_seconds=check_seconds,
            reload_seconds=reload_seconds, log=log)

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

    async def get_by_id(self, channel_id: int) -> ChannelRecord | None:
        """The live channel with this row id (a support thread names its channel so), or None."""
        for record in self._channels.values():
            if record.id == channel_id:
                return record
        async with asyncio.timeout(QUERY_TIMEOUT_SECONDS):
            key = await channel_key_of(self._db, channel_id)
        return None if key is None else await self.get(key)

    def __len__(self) -> int:
        return len(self._channels)

    # -- keeping it current ----------------------------------------------------------------------

    async def start(self, first_load_timeout: float = 10.0) -> None:
        """Start following Postgres; return once the first attempt loaded the copy or failed."""
        DATABASE_UP.set_function(lambda: 1.0 if self.in_sync else 0.0)
        STALE_SECONDS.set_function(self.stale_seconds)
        CACHED_CHANNELS.set_function(lambda: float(len(self._channels)))
        await self._follower.start(first_load_timeout)

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
        records = await list_channels(self._db)
        self._channels = {record.key: record for record in records}
        self._misses.clear()

    async def _apply_changes(self, keys: list[str]) -> None:
        for key in keys:
            async with asyncio.timeout(QUERY_TIMEOUT_SECONDS):
                record = await get_channel(self._db, key)
            self._put(key, record)
            log.info("channel_changed", channel=key, live=record is not None)
