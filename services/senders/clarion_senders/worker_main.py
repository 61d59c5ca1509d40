"""`clarion-worker`: the notification worker of one channel (docs/notifications.md).

    clarion-worker --channel <namespace>.<name> [--lanes instant,bulk]

Exit status: 0 after SIGTERM/SIGINT (sends in flight finish and are recorded first); 1 when the channel
does not exist or is of a type this worker cannot send, or its credentials are refused (nothing can be
sent until they are fixed); 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from clarion.db import create_pool
from clarion.db.channels import get_channel
from clarion.logging import configure_logging, get_logger
from clarion.mail import MailSender
from clarion.metrics import serve_metrics
from clarion.models import PUBLIC_BOT_API, EmailSettings
from clarion.outages import ride_out
from clarion.redis import create_redis
from clarion.streams import LANES
from clarion.telegram.botapi import BotApi, InvalidTokenFormat
from clarion.telegram.limiter import RateLimiter, RateLimits
from pydantic import ValidationError

from clarion_senders.settings import WorkerSettings
from clarion_senders.transports import EmailTransport, TelegramTransport
from clarion_senders.worker import FatalWorkerError, NotificationWorker, Transport, WorkerOptions

log = get_logger("clarion.worker")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clarion-worker",
        description="Send one channel's notifications from its lane streams. Configuration comes from "
                    "CLARION_* environment variables (docs/notifications.md).")
    parser.add_argument("--channel", help="channel key <namespace>.<name> (default: CLARION_WORKER_CHANNEL)")
    parser.add_argument("--lanes", help="comma-separated lanes to read (default: instant,bulk)")
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
    if not settings.worker_channel or not lanes or any(lane not in LANES for lane in lanes):
        print("clarion-worker: --channel <namespace>.<name> and --lanes from instant,bulk are required",
              file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        return asyncio.run(run_worker(settings, lanes))
    except FatalWorkerError as exc:
        log.error("worker.fatal", error=str(exc))
        return 1


async def run_worker(settings: WorkerSettings, lanes: tuple[str, ...]) -> int:
    tolerance = settings.outage_tolerance_seconds
    pool = await ride_out("connect", lambda: create_pool(settings.database_url, min_size=1,
                                                         max_size=settings.db_pool_max), tolerance=tolerance)
    redis = create_redis(settings.redis_url)
    transport: Transport | None = None
    try:
        channel = await ride_out("get_channel", lambda: get_channel(pool, settings.worker_channel),
                                 tolerance=tolerance)
        if channel is None:
            log.error("worker.config", error=f"channel {settings.worker_channel} does not exist")
            return 1
        if channel.type == "telegram":
            if settings.bot_token is None:
                log.error("worker.config", error="CLARION_BOT_TOKEN is not set")
                return 1
            token = settings.bot_token.get_secret_value()
            base = settings.telegram_api_base or channel.api_base_url or PUBLIC_BOT_API
            try:
                api = BotApi(token, base, timeout_seconds=settings.request_timeout_seconds,
                             connections=settings.worker_concurrency + 4)
            except InvalidTokenFormat as exc:
                log.error("worker.config", error=f"CLARION_BOT_TOKEN: {exc}")
                return 1
            limiter = RateLimiter(redis, channel.bot_id or int(token.split(":", 1)[0]),
                                  RateLimits.from_config(channel.config), margin=settings.limiter_margin,
                                  horizon=settings.limiter_horizon_seconds or None)
            await ride_out("limiter.start", limiter.start, tolerance=tolerance)
            transport = TelegramTransport(api, limiter, outage_tolerance=tolerance)
        elif channel.type == "email":
            email = EmailSettings.model_validate(channel.config)
            user, word = settings.smtp_username, settings.smtp_password
            if (user is None) != (word is None):
                log.error("worker.config", error="set both CLARION_SMTP_USERNAME and CLARION_SMTP_PASSWORD")
                return 1
            mail = MailSender(email, channel=channel.key,
                              username=user.get_secret_value() if user else None,
                              password=word.get_secret_value() if word else None,
                              pool_size=settings.smtp_pool_size, ca_file=settings.smtp_ca_file,
                              timeout_seconds=settings.request_timeout_seconds)
            transport = EmailTransport(mail)
        else:
            log.error("worker.config", error=f"channel {channel.key} is of type {channel.type}, "
                                             "which this worker does not send yet")
            return 1
        serve_metrics(settings.metrics_port)
        worker = NotificationWorker(
            pool=pool, redis=redis, channel_id=channel.id, channel_key=channel.key, transport=transport,
            consumer=settings.pod_name, options=WorkerOptions(
                lanes=lanes, concurrency=settings.worker_concurrency,
                lease_seconds=settings.claim_lease_seconds,
                replay_after_seconds=settings.replay_after_seconds,
                retry_backoff_seconds=settings.retry_backoff_seconds, outage_tolerance=tolerance,
                stop_grace_seconds=settings.stop_grace_seconds,
                stale_consumer_seconds=settings.stale_consumer_seconds))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        await worker.run()
        return 0
    finally:
        if transport is not None:
            await transport.close()
        await redis.aclose()
        await pool.close()
