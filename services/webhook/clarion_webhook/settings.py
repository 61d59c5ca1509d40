"""Settings of the webhook process (`CLARION_*` environment variables)."""

from __future__ import annotations

import socket

from clarion.settings import CommonSettings
from clarion.streams import DEFAULT_PARTITIONS
from pydantic import Field


class WebhookSettings(CommonSettings):
    """The webhook ingress: one process serves every channel."""

    webhook_host: str = Field(default="0.0.0.0", description="Address to listen on.")
    webhook_port: int = Field(default=8080, ge=1, le=65535, description="Port to listen on.")
    webhook_max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024,
                                        description="Largest update body accepted; larger ones get 413.")
    update_partitions: int = Field(default=DEFAULT_PARTITIONS, ge=1, le=1024,
                                   description="Stream partitions per channel; the bot must use the same.")
    channel_cache_seconds: float = Field(default=5.0, ge=0, le=300,
                                         description="How long the absence of a channel is remembered. "
                                                     "Rows themselves follow Postgres by LISTEN/NOTIFY.")
    channel_check_seconds: float = Field(default=5.0, gt=0, le=300,
                                         description="Ping interval of the listening connection, and the "
                                                     "longest wait between reconnect attempts.")
    channel_reload_seconds: float = Field(default=300.0, gt=0, le=86400,
                                          description="Full reload of the channel copy (a safety net for a "
                                                      "lost notification).")
    redis_timeout_seconds: float = Field(default=2.0, gt=0, le=60,
                                         description="Socket timeout of Redis calls; past it: 503.")
    bulk_lease_seconds: float = Field(default=30.0, gt=0, le=3600,
                                      description="How long a replica holds a bulk job it expands without "
                                                  "progress; past it, another replica takes the job over.")
    bulk_chunk_rows: int = Field(default=1000, ge=1, le=10_000,
                                 description="Notifications a bulk expansion creates per transaction.")
    bulk_poll_seconds: float = Field(default=1.0, gt=0, le=60,
                                     description="How often a replica looks for bulk jobs to expand (one it "
                                                 "accepted itself is taken at once).")
    pod_name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=253,
                          description="This replica's name in the key use audit (the pod's name).")
    api_key_usage_seconds: float = Field(default=60.0, gt=0, le=3600,
                                         description="Window of the key use audit: one `api_key.used` "
                                                     "row per key per window per replica.")
    inbox_max_entries: int = Field(default=120_000, ge=1, le=10_000_000,
                                   description="Most notifications the Redis inbox holds while Postgres is "
                                               "away (all replicas together); past it: 503 + Retry-After.")
    inbox_max_age_seconds: float = Field(default=900.0, gt=0, le=86400,
                                         description="Once the oldest inbox entry is this old (Postgres away "
                                                     "that long), accepts get 503 + Retry-After.")
    inbox_db_timeout_seconds: float = Field(default=2.0, gt=0, le=60,
                                            description="How long an accept waits for Postgres before it "
                                                        "takes the inbox instead; also the probe's timeout.")
    inbox_probe_seconds: float = Field(default=0.5, gt=0, le=60,
                                       description="While accepts go straight to the inbox, how often "
                                                   "Postgres is probed.")
    inbox_claim_idle_seconds: float = Field(default=30.0, gt=0, le=3600,
                                            description="Inbox entries a drainer took and left this long "
                                                        "(a killed replica) are drained by another.")
    inbox_drain_batch: int = Field(default=100, ge=1, le=10_000,
                                   description="Inbox entries stored in Postgres per transaction.")
    inbox_retry_after_seconds: int = Field(default=30, ge=1, le=3600,
                                           description="Retry-After of a 503 when the inbox is full.")
    callback_poll_seconds: float = Field(default=1.0, gt=0, le=60,
                                         description="How often due follow-up callbacks are looked for.")
    callback_timeout_seconds: float = Field(default=10.0, gt=0, le=120,
                                            description="A backend's time to answer one callback POST.")
    callback_max_backoff_seconds: float = Field(default=3600.0, ge=1, le=86400,
                                                description="Longest wait between two tries of a callback.")
    webapp_script_url: str = Field(default="https://telegram.org/js/telegram-web-app.js", max_length=2048,
                                   pattern=r"^(https?://[^\s\"'<>]+)?$",
                                   description="Telegram's WebApp script the Mini App page loads; empty: "
                                               "no script tag (the page reads initData from the URL "
                                               "fragment itself).")
    webapp_max_age_seconds: float = Field(default=3600.0, gt=0, le=7 * 86400,
                                          description="Oldest initData (its auth_date) the Mini App's API "
                                                      "accepts; older gets 401.")
