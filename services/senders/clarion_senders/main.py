"""`clarion-sender`: the sender processes.

    clarion-sender campaign [--campaign-id N]    send one shard of a campaign (a pod of its Job)

Exit status: 0 when the campaign is settled (a sender whose shard is done helps with the others)
or paused or cancelled (or on SIGTERM, after releasing what it held); 1 on a fatal error (campaign
not found, its stored spec does not parse with the campaign model, token refused, bad config),
before anything is sent when it can be known up front; 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from clarion.db import campaigns as q
from clarion.db import create_pool
from clarion.logging import configure_logging, get_logger
from clarion.metrics import serve_metrics
from clarion.models import PUBLIC_BOT_API, BroadcastCampaignSpec
from clarion.models.objects import describe
from clarion.outages import ride_out
from clarion.redis import create_redis
from clarion.telegram.botapi import BotApi, InvalidTokenFormat
from clarion.telegram.limiter import RateLimiter, RateLimits
from pydantic import ValidationError

from clarion_senders.campaign import CampaignSender, FatalSendError, SenderOptions
from clarion_senders.settings import SenderSettings

log = get_logger("clarion.sender")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clarion-sender",
        description="Clarion's senders. Configuration comes from CLARION_* environment variables.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    campaign = commands.add_parser(
        "campaign",
        help="send one shard of a BroadcastCampaign (run as a pod of the campaign's indexed Job)",
        description=(
            "Send the shard JOB_COMPLETION_INDEX of campaign CLARION_CAMPAIGN_ID, then help with the "
            "other shards, until the campaign is settled, paused or cancelled. Needs CLARION_BOT_TOKEN, "
            "CLARION_DATABASE_URL, CLARION_REDIS_URL; "
            "optional CLARION_TELEGRAM_API_BASE, CLARION_POD_NAME, CLARION_METRICS_PORT."
        ),
    )
    campaign.add_argument("--campaign-id", type=int,
                          help="campaign database id (default: CLARION_CAMPAIGN_ID)")
    campaign.add_argument("--shard", type=int, help="shard to send (default: JOB_COMPLETION_INDEX, else 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = SenderSettings()
    except ValidationError as exc:
        print(f"clarion-sender: invalid configuration:\n{exc}", file=sys.stderr)
        return 1
    configure_logging(settings.log_level, settings.log_format)
    updates: dict[str, object] = {}
    if args.campaign_id is not None:
        updates["campaign_id"] = args.campaign_id
    if args.shard is not None:
        updates["shard"] = args.shard
    settings = settings.model_copy(update=updates)
    try:
        return asyncio.run(run_campaign(settings))
    except FatalSendError as exc:
        log.error("sender.fatal", error=str(exc))
        return 1


async def run_campaign(settings: SenderSettings) -> int:
    """Run one campaign shard to the end; the exit status."""
    if settings.campaign_id is None:
        log.error("sender.config", error="no campaign: set CLARION_CAMPAIGN_ID or pass --campaign-id")
        return 1
    if settings.bot_token is None:
        log.error("sender.config", error="CLARION_BOT_TOKEN is not set")
        return 1
    token = settings.bot_token.get_secret_value()
    tolerance = settings.outage_tolerance_seconds
    campaign_id = settings.campaign_id
    # A pod started during a Postgres or Redis outage (a replacement, or a Job created just before)
    # waits for it instead of failing, which would spend the Job's backoffLimit.
    pool_size = max(2, min(settings.db_pool_max, 4))
    pool = await ride_out("connect", lambda: create_pool(settings.database_url, min_size=1,
                                                         max_size=pool_size), tolerance=tolerance)
    redis = create_redis(settings.redis_url)
    try:
        async def load() -> tuple[q.CampaignRow, q.SendingChannel] | None:
            async with pool.acquire() as conn:
                return await q.load_campaign(conn, campaign_id)

        loaded = await ride_out("load_campaign", load, tolerance=tolerance)
        if loaded is None:
            log.error("sender.config", error=f"campaign {settings.campaign_id} does not exist")
            return 1
        campaign, channel = loaded
        try:
            spec = BroadcastCampaignSpec.model_validate(campaign.spec)
        except ValidationError as exc:
            log.error("sender.config", error=f"the stored spec of campaign {campaign.key} is invalid: "
                                             f"{describe(exc)}; nothing is sent")
            return 1
        if not 0 <= settings.shard < campaign.shards:
            log.error("sender.config", error=f"shard {settings.shard} is outside 0..{campaign.shards - 1}")
            return 1
        try:
            limits = RateLimits.from_config(channel.config)
        except ValueError as exc:
            log.error("sender.config", error=str(exc))
            return 1
        delivery = spec.delivery
        bot_rate = limits.paid_broadcast_per_second if delivery.paid_broadcast else limits.global_per_second
        cap = delivery.rate_per_second
        cap_rate = float(cap) if cap is not None and cap < bot_rate else None
        options = SenderOptions.from_delivery(
            delivery, rate=cap_rate or bot_rate, concurrency=settings.sender_concurrency,
            lease_seconds=settings.claim_lease_seconds, request_timeout=settings.request_timeout_seconds,
            outage_tolerance=tolerance,
        )
        bot_id = channel.bot_id or int(token.split(":", 1)[0])
        limiter = RateLimiter(redis, bot_id, limits, margin=settings.limiter_margin,
                              cap_scope=f"campaign:{campaign.id}" if cap_rate else None,
                              cap_per_second=cap_rate, horizon=settings.limiter_horizon_seconds or None)
        base = settings.telegram_api_base or channel.api_base_url or PUBLIC_BOT_API
        try:
            api = BotApi(token, base, timeout_seconds=options.request_timeout,
                         connections=options.concurrency + 8)
        except InvalidTokenFormat as exc:
            log.error("sender.config", error=f"CLARION_BOT_TOKEN: {exc}")
            return 1
        serve_metrics(settings.metrics_port)
        await ride_out("limiter.start", limiter.start, tolerance=tolerance)
        sender = CampaignSender(pool=pool, redis=redis, api=api, campaign=campaign, channel=channel,
                                message=spec.message, shard=settings.shard, worker=settings.pod_name,
                                limiter=limiter, options=options)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, sender.stop, sig.name)
        try:
            await sender.run()
        finally:
            await limiter.close()
            await api.close()
        return 0
    finally:
        await redis.aclose()
        await pool.close()
