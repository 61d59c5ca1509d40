"""`clarion-worker`: the workers of one channel's lanes (docs/notifications.md, ADR 0010).

    clarion-worker --channel <namespace>.<name> [--lanes instant,bulk]

Lanes: `instant`, `bulk` and (telegram channels) `group-posts` are notification lanes, sent by the
`NotificationWorker`; `group-maintenance` (telegram channels) runs the `GroupLaneConsumer` over the
channel's GroupTask stream. The operator runs one lane per Deployment; several at once work too.

Exit status: 0 after SIGTERM/SIGINT (sends in flight finish and are recorded first); 1 when the channel
does not exist, or its credentials are missing or refused (nothing can be
sent until they are fixed); 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, get_args

import asyncpg
from clarion import webpush
from clarion.db import create_pool
from clarion.db.channels import ChannelRecord, get_channel
from clarion.logging import configure_logging, get_logger
from clarion.mail import MailSender
from clarion.metrics import serve_metrics
from clarion.models import GROUP_LANES, PUBLIC_BOT_API, EmailSettings, WebPushDelivery, WorkerLane
from clarion.outages import ride_out
from clarion.redis import create_redis
from clarion.streams import GROUP_MAINTENANCE_LANE, LANES, group_maintenance_stream
from clarion.telegram.botapi import BotApi, InvalidTokenFormat
from clarion.telegram.limiter import RateLimiter, RateLimits
from pydantic import ValidationError
from redis.asyncio import Redis

from clarion_senders.group_lanes import GroupLaneConsumer, GroupLaneOptions, GroupTaskHandler
from clarion_senders.group_maintenance import GroupMaintenance
from clarion_senders.settings import WorkerSettings
from clarion_senders.transports import EmailTransport, TelegramTransport, WebPushTransport
from clarion_senders.worker import FatalWorkerError, NotificationWorker, Transport, WorkerOptions

log = get_logger("clarion.worker")
WORKER_LANES: tuple[WorkerLane, ...] = get_args(WorkerLane)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clarion-worker",
        description="Send one channel's notifications from its lane streams. Configuration comes from "
                    "CLARION_* environment variables (docs/notifications.md).")
    parser.add_argument("--channel", help="channel key <namespace>.<name> (default: CLARION_WORKER_CHANNEL)")
    parser.add_argument("--lanes", help="comma-separated lanes to work on, of instant, bulk, group-posts, "
                                        "group-maintenance (default: instant,bulk)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = WorkerSettings()
    except ValidationError as exc:
        print(f"clarion-worker: invalid configuration:\n{exc}", file=sys.stderr)
        return 1
    updates: dict[str, object] = {}
    if args.channel:
        updates["worker_channel"] = args.channel
    if args.lanes:
        updates["worker_lanes"] = args.lanes
    settings = settings.model_copy(update=updates)
    lanes = tuple(lane.strip() for lane in settings.worker_lanes.split(",") if lane.strip())
    if not settings.worker_channel or not lanes or any(lane not in WORKER_LANES for lane in lanes):
        print(f"clarion-worker: --channel <namespace>.<name> and --lanes from {','.join(WORKER_LANES)} are "
              "required", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        return asyncio.run(run_worker(settings, lanes))
    except FatalWorkerError as exc:
        log.error("worker.fatal", error=str(exc))
        return 1


class _Runner(Protocol):
    async def run(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class _Telegram:
    """The bot's API session and its shared limiter, as every lane of a telegram channel uses them."""

    api: BotApi
    limiter: RateLimiter

    async def close(self) -> None:
        await self.api.close()
        await self.limiter.close()


async def _telegram(settings: WorkerSettings, channel: ChannelRecord, redis: Redis) -> _Telegram | None:
    """The channel's Bot API session and started limiter; None (logged) when the token is missing or
    malformed."""
    if settings.bot_token is None:
        log.error("worker.config", error="CLARION_BOT_TOKEN is not set")
        return None
    token = settings.bot_token.get_secret_value()
    base = settings.telegram_api_base or channel.api_base_url or PUBLIC_BOT_API
    try:
        api = BotApi(token, base, timeout_seconds=settings.request_timeout_seconds,
                     connections=settings.worker_concurrency + 4)
    except InvalidTokenFormat as exc:
        log.error("worker.config", error=f"CLARION_BOT_TOKEN: {exc}")
        return None
    limiter = RateLimiter(redis, channel.bot_id or int(token.split(":", 1)[0]),
                          RateLimits.from_config(channel.config), margin=settings.limiter_margin,
                          horizon=settings.limiter_horizon_seconds or None)
    await ride_out("limiter.start", limiter.start, tolerance=settings.outage_tolerance_seconds)
    return _Telegram(api, limiter)


def _email_transport(settings: WorkerSettings, channel: ChannelRecord) -> EmailTransport | None:
    email = EmailSettings.model_validate(channel.config)
    user, word = settings.smtp_username, settings.smtp_password
    if (user is None) != (word is None):
        log.error("worker.config", error="set both CLARION_SMTP_USERNAME and CLARION_SMTP_PASSWORD")
        return None
    mail = MailSender(email, channel=channel.key,
                      username=user.get_secret_value() if user else None,
                      password=word.get_secret_value() if word else None,
                      pool_size=settings.smtp_pool_size, ca_file=settings.smtp_ca_file,
                      timeout_seconds=settings.request_timeout_seconds)
    return EmailTransport(mail)


def _webpush_transport(settings: WorkerSettings, channel: ChannelRecord,
                       pool: asyncpg.Pool) -> WebPushTransport | None:
    if settings.vapid_private_key is None:
        log.error("worker.config", error="CLARION_VAPID_PRIVATE_KEY is not set")
        return None
    try:
        key = webpush.vapid_key(settings.vapid_private_key.get_secret_value())
    except webpush.KeyProblem as exc:
        log.error("worker.config", error=f"CLARION_VAPID_PRIVATE_KEY: {exc}")
        return None
    return WebPushTransport(pool, channel.id, key, WebPushDelivery.from_config(channel.config),
                            timeout_seconds=settings.request_timeout_seconds,
                            connections=settings.worker_concurrency + 4,
                            outage_tolerance=settings.outage_tolerance_seconds)


def group_task_handler(*, pool: asyncpg.Pool, redis: Redis, api: BotApi, limiter: RateLimiter,
                       channel: ChannelRecord) -> GroupTaskHandler:
    """The handler of the group-maintenance lane's tasks (ADR 0010): the ManagedGroup maintenance."""
    return GroupMaintenance(pool=pool, redis=redis, api=api, limiter=limiter, channel=channel)


async def run_worker(settings: WorkerSettings, lanes: tuple[str, ...]) -> int:
    tolerance = settings.outage_tolerance_seconds
    pool = await ride_out("connect", lambda: create_pool(settings.database_url, min_size=1,
                                                         max_size=settings.db_pool_max), tolerance=tolerance)
    redis = create_redis(settings.redis_url)
    telegram: _Telegram | None = None
    transport: Transport | None = None
    try:
        channel = await ride_out("get_channel", lambda: get_channel(pool, settings.worker_channel),
                                 tolerance=tolerance)
        if channel is None:
            log.error("worker.config", error=f"channel {settings.worker_channel} does not exist")
            return 1
        group_lanes = [lane for lane in lanes if lane in GROUP_LANES]
        if group_lanes and channel.type != "telegram":
            log.error("worker.config", error=f"channel {channel.key} is of type {channel.type}: lanes "
                                             f"{','.join(group_lanes)} are for telegram channels")
            return 1
        if channel.type == "telegram":
            telegram = await _telegram(settings, channel, redis)
            if telegram is None:
                return 1
            transport = TelegramTransport(telegram.api, telegram.limiter, outage_tolerance=tolerance)
        elif channel.type == "email":
            transport = _email_transport(settings, channel)
            if transport is None:
                return 1
        else:
            transport = _webpush_transport(settings, channel, pool)
            if transport is None:
                return 1
        serve_metrics(settings.metrics_port)
        runners: list[_Runner] = []
        notification_lanes = tuple(lane for lane in lanes if lane in LANES)
        if notification_lanes:
            runners.append(NotificationWorker(
                pool=pool, redis=redis, channel_id=channel.id, channel_key=channel.key, transport=transport,
                consumer=settings.pod_name, options=WorkerOptions(
                    lanes=notification_lanes, concurrency=settings.worker_concurrency,
                    lease_seconds=settings.claim_lease_seconds,
                    replay_after_seconds=settings.replay_after_seconds,
                    retry_backoff_seconds=settings.retry_backoff_seconds, outage_tolerance=tolerance,
                    stop_grace_seconds=settings.stop_grace_seconds,
                    stale_consumer_seconds=settings.stale_consumer_seconds)))
        if GROUP_MAINTENANCE_LANE in lanes:
            assert telegram is not None
            handler = group_task_handler(pool=pool, redis=redis, api=telegram.api, limiter=telegram.limiter,
                                         channel=channel)
            runners.append(GroupLaneConsumer(
                redis=redis, channel_key=channel.key, stream=group_maintenance_stream(channel.key),
                handler=handler, consumer=settings.pod_name, options=GroupLaneOptions(
                    concurrency=settings.group_task_concurrency, lease_seconds=settings.claim_lease_seconds,
                    max_attempts=settings.group_task_attempts,
                    retry_backoff_seconds=settings.retry_backoff_seconds,
                    stop_grace_seconds=settings.stop_grace_seconds,
                    stale_consumer_seconds=settings.stale_consumer_seconds, outage_tolerance=tolerance)))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, functools.partial(_stop_all, runners))

        async def run(runner: _Runner) -> None:
            try:
                await runner.run()
            finally:  # one that ends (a fatal error) stops the others
                _stop_all(runners)

        results = await asyncio.gather(*(run(runner) for runner in runners), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return 0
    finally:
        if transport is not None:
            await transport.close()  # a telegram transport closes the bot's session and limiter
        elif telegram is not None:
            await telegram.close()
        await redis.aclose()
        await pool.close()


def _stop_all(runners: Sequence[_Runner]) -> None:
    for runner in runners:
        runner.stop()
