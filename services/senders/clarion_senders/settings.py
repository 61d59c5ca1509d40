"""Settings of the campaign sender (one pod of an indexed sender Job)."""

from __future__ import annotations

import socket

from clarion.settings import CommonSettings
from clarion.telegram.limiter import DEFAULT_HORIZON
from pydantic import AliasChoices, Field, SecretStr


class SenderSettings(CommonSettings):
    """`CLARION_*` variables, plus `JOB_COMPLETION_INDEX` that Kubernetes sets in indexed Jobs."""

    campaign_id: int | None = Field(default=None, ge=1, description="Database id of the campaign to send.")
    shard: int = Field(
        default=0, ge=0, le=999,
        validation_alias=AliasChoices("JOB_COMPLETION_INDEX", "CLARION_SHARD"),
        description="This pod's shard: the Job completion index.",
    )
    bot_token: SecretStr | None = Field(default=None, description="Bot API token of the campaign's channel.")
    telegram_api_base: str | None = Field(
        default=None, max_length=2048,
        description="Bot API base URL; overrides the channel's (a local Bot API server or the emulator).",
    )
    pod_name: str = Field(
        default_factory=socket.gethostname, min_length=1, max_length=253,
        description="Recorded as claimed_by on the deliveries this pod holds.",
    )
    sender_concurrency: int = Field(
        default=0, ge=0, le=5000,
        description="Sends reserved or in flight at once; 0: sized from the rate (rate x 0.5 s, at least 4).",
    )
    claim_lease_seconds: float = Field(
        default=15.0, gt=0, le=3600,
        description="How long a claim lasts without renewal (renewed every third of it): a dead pod's "
                    "deliveries go to the other senders after it, if its replacement has not come first.",
    )
    limiter_margin: float = Field(
        default=0.01, ge=0, lt=0.5,
        description="Slots are (1 + margin) / rate apart, absorbing that much jitter in arrival times.",
    )
    limiter_horizon_seconds: float = Field(
        default=DEFAULT_HORIZON, ge=0, le=60,
        description="Normal sends (campaigns, the bulk lane) hold the bot's slots at most this far ahead, "
                    "so an instant notification waits at most about this long; 0 turns the instant "
                    "priority off (normal sends reserve as far ahead as their window).",
    )
    request_timeout_seconds: float = Field(default=30.0, gt=0, le=600,
                                           description="Timeout of one Bot API call.")


class WorkerSettings(CommonSettings):
    """`CLARION_*` variables of `clarion-worker` (one channel's notification worker)."""

    worker_channel: str = Field(default="", max_length=320, description="Channel key <namespace>.<name>.")
    worker_lanes: str = Field(default="instant,bulk", max_length=64, description="Lanes to read.")
    bot_token: SecretStr | None = Field(default=None, description="Bot API token (telegram channels).")
    smtp_username: SecretStr | None = Field(default=None, description="SMTP user (email channels with AUTH).")
    smtp_password: SecretStr | None = Field(default=None, description="SMTP password.")
    vapid_private_key: SecretStr | None = Field(
        default=None, description="VAPID private key, the 32-byte P-256 scalar base64url (webpush channels).")
    smtp_pool_size: int = Field(default=4, ge=1, le=64, description="SMTP connections per worker.")
    smtp_ca_file: str | None = Field(default=None, description="CA bundle trusted for SMTP TLS besides "
                                                               "the system's (self-signed relays).")
    telegram_api_base: str | None = Field(default=None, max_length=2048,
                                          description="Bot API base URL; overrides the channel's.")
    pod_name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=253,
                          description="Consumer name in the streams' group, and claimed_by of rows it sends.")
    worker_concurrency: int = Field(default=32, ge=1, le=2000, description="Sends in flight at once.")
    claim_lease_seconds: float = Field(
        default=30.0, gt=0, le=3600,
        description="How long a row being sent stays ours, and how long an unacknowledged entry waits "
                    "before another worker reclaims it.")
    replay_after_seconds: float = Field(
        default=30.0, gt=0, le=3600,
        description="A queued row not sent after this long is put on its stream again (Redis may have "
                    "lost the entry).")
    retry_backoff_seconds: float = Field(default=2.0, gt=0, le=3600,
                                         description="First retry delay; doubles with each attempt (jitter).")
    limiter_margin: float = Field(default=0.01, ge=0, lt=0.5, description="See the campaign sender's.")
    limiter_horizon_seconds: float = Field(default=DEFAULT_HORIZON, ge=0, le=60,
                                           description="See the campaign sender's.")
    request_timeout_seconds: float = Field(default=30.0, gt=0, le=600, description="One send call.")
    stop_grace_seconds: float = Field(
        default=40.0, ge=0, le=3600,
        description="After SIGTERM, how long sends under way may take before the ones still waiting for "
                    "the rate limiter are given back (keep it below the pod's termination grace, 60 s).")
    stale_consumer_seconds: float = Field(
        default=600.0, gt=0, le=86400,
        description="A consumer of the streams' group that holds nothing and has not read for this long "
                    "(a worker killed before it could leave) is removed.")
    group_task_concurrency: int = Field(default=4, ge=1, le=64,
                                        description="Group-maintenance tasks handled at once (lane "
                                                    "group-maintenance).")
    group_task_attempts: int = Field(default=3, ge=1, le=20,
                                     description="Attempts at a group-maintenance task before it is "
                                                 "dead-lettered.")
