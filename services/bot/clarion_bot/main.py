"""`clarion-bot --channel ns.name`: one bot replica, fed from the channel's update streams."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from aiogram.utils.token import TokenValidationError
from clarion.db import create_pool
from clarion.db.channels import ChannelRecord, get_channel
from clarion.keys import split_channel_key
from clarion.logging import configure_logging, get_logger
from clarion.metrics import serve_metrics
from clarion.redis import create_redis
from clarion.telegram.limiter import RateLimiter, RateLimits

from clarion_bot.activity import ActivityBuffer
from clarion_bot.consumer import UpdateConsumer
from clarion_bot.context import ChannelHolder
from clarion_bot.dispatcher import build_bot, build_dispatcher
from clarion_bot.group_joins import GroupSweep
from clarion_bot.limits import SharedRateLimit
from clarion_bot.migrated import FollowMigratedChat
from clarion_bot.settings import BotSettings
from clarion_bot.support_outcomes import SupportOutcomes

log = get_logger("clarion.bot")


async def wait_for_channel(db: Any, key: str, stop: asyncio.Event) -> ChannelRecord | None:
    """The channel row, waiting for the operator to write it; None if stopped first."""
    while not stop.is_set():
        channel = await get_channel(db, key)
        if channel is not None:
            return channel
        log.warning("channel_not_found", channel=key)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)
    return None


async def refresh_channel(db: Any, holder: ChannelHolder, every: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        try:
            channel = await get_channel(db, holder.current.key)
        except Exception as exc:
            log.warning("channel_refresh_failed", error=repr(exc))
            continue
        if channel is None:
            log.error("channel_deleted", channel=holder.current.key)
            stop.set()
        else:
            holder.current = channel


async def run(settings: BotSettings, stop: asyncio.Event | None = None, *,
              handle_signals: bool = True) -> int:
    """Serve the channel until `stop` is set (by SIGTERM/SIGINT when `handle_signals`)."""
    stop = stop or asyncio.Event()
    if handle_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    replica_id = settings.replica_id or settings.pod_name or f"{socket.gethostname()}-{os.getpid()}"
    db = await create_pool(settings.database_url, min_size=1, max_size=settings.db_pool_max)
    redis = create_redis(settings.redis_url)
    try:
        channel = await wait_for_channel(db, settings.channel, stop)
        if channel is None:
            return 0
        try:
            api_base = settings.telegram_api_base or channel.api_base_url
            bot = build_bot(settings.bot_token.get_secret_value(), api_base)
        except TokenValidationError:
            log.error("invalid_bot_token", channel=channel.key)
            return 2
        if channel.bot_id is not None and bot.id != channel.bot_id:
            log.error("bot_token_mismatch", channel=channel.key, expected_bot_id=channel.bot_id)
            return 2
        limiter = RateLimiter(redis, bot.id, RateLimits.from_config(channel.config))
        await limiter.start()
        bot.session.middleware(FollowMigratedChat())  # outermost: the call again at the new id is limited
        bot.session.middleware(SharedRateLimit(limiter))
        holder = ChannelHolder(channel)
        activity = ActivityBuffer(db=db, redis=redis, flush_seconds=settings.bot_activity_flush_seconds,
                                  flush_entries=settings.bot_activity_flush_entries,
                                  max_held=settings.bot_activity_max_held)
        dp = build_dispatcher(db=db, redis=redis, holder=holder, activity=activity)
        consumer = UpdateConsumer(
            redis=redis, dispatcher=dp, bot=bot, channel=channel.key, replica_id=replica_id,
            partitions=settings.update_partitions, lease_ttl_ms=settings.bot_lease_ttl_ms,
            read_count=settings.bot_read_count, max_attempts=settings.bot_max_attempts,
            max_deliveries=settings.bot_max_deliveries, lag_report_seconds=settings.bot_lag_report_seconds,
            max_waiting=settings.bot_max_waiting, retry_base_seconds=settings.bot_retry_base_seconds,
            retry_max_seconds=settings.bot_retry_max_seconds,
            before_release=lambda: activity.close(tolerance=1.0),  # short: leases kept must be renewed
        )
        log.info("bot_starting", channel=channel.key, replica=replica_id,
                 partitions=settings.update_partitions)
        outcomes = SupportOutcomes(redis=redis, db=db, bot=bot, holder=holder, replica_id=replica_id,
                                   claim_idle_ms=settings.bot_support_claim_idle_ms,
                                   sweep_seconds=settings.bot_support_sweep_seconds)
        refresher = asyncio.create_task(
            refresh_channel(db, holder, settings.bot_channel_refresh_seconds, stop))
        follower = asyncio.create_task(outcomes.run(stop), name="support-outcomes")
        group_sweep = GroupSweep(redis=redis, db=db, bot=bot, holder=holder, storage=dp.storage,
                                 replica_id=replica_id, sweep_seconds=settings.bot_groups_sweep_seconds)
        sweeper = asyncio.create_task(group_sweep.run(stop), name="group-sweep")
        flusher = asyncio.create_task(activity.run(stop), name="group-activity")
        try:
            await consumer.run(stop)
        finally:
            refresher.cancel()
            stop.set()
            await asyncio.wait([follower, sweeper, flusher])  # they return once `stop` is set
            await activity.close()  # the consumer has stopped: nothing records any more
            await limiter.close()
            await bot.session.close()
        log.info("bot_stopped", channel=channel.key, replica=replica_id)
        return 0
    finally:
        await redis.aclose()
        await db.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="clarion-bot",
        description="One bot replica of a channel: leases partitions of the channel's update streams and "
                    "handles their updates with aiogram. The token comes from CLARION_BOT_TOKEN; other "
                    "settings from CLARION_* environment variables.",
    )
    parser.add_argument("--channel", help="channel key namespace.name (env CLARION_CHANNEL)")
    args = parser.parse_args(argv)
    settings = BotSettings(**({"channel": args.channel} if args.channel else {}))
    configure_logging(settings.log_level, settings.log_format)
    logging.getLogger("aiogram.event").setLevel(logging.WARNING)  # one line per update is ours, at debug
    if split_channel_key(settings.channel) is None:
        print("clarion-bot: --channel (or CLARION_CHANNEL) must be a channel key like `default.mybot`",
              file=sys.stderr)
        return 2
    if not settings.bot_token.get_secret_value():
        print("clarion-bot: CLARION_BOT_TOKEN is not set", file=sys.stderr)
        return 2
    serve_metrics(settings.metrics_port)
    return asyncio.run(run(settings))


if __name__ == "__main__":
    raise SystemExit(main())
