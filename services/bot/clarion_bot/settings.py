"""Settings of one bot replica (`CLARION_*` environment variables)."""

from __future__ import annotations

from clarion.settings import CommonSettings
from clarion.streams import DEFAULT_PARTITIONS
from pydantic import Field, SecretStr


class BotSettings(CommonSettings):
    """A bot replica serves one channel; several replicas share its partitions through leases."""

    channel: str = Field(default="", max_length=317, description="Channel key `namespace.name`.")
    bot_token: SecretStr = Field(default=SecretStr(""), description="The bot's Telegram token.")
    telegram_api_base: str | None = Field(default=None, description="Overrides the channel's API URL.")
    replica_id: str | None = Field(default=None, max_length=200,
                                   description="Stable replica name (the pod name); hostname-pid when unset.")
    pod_name: str | None = Field(default=None, max_length=200,
                                 description="The pod's name (downward API): replica id fallback.")
    update_partitions: int = Field(default=DEFAULT_PARTITIONS, ge=1, le=1024,
                                   description="Stream partitions per channel (as the webhook).")
    bot_lease_ttl_ms: int = Field(default=10_000, ge=500, le=600_000,
                                  description="Lease lifetime: a dead replica's partitions move after it.")
    bot_read_count: int = Field(default=50, ge=1, le=1000, description="Entries read per XREADGROUP call.")
    bot_max_attempts: int = Field(default=3, ge=1, le=20,
                                  description="Handler attempts before the update is dead-lettered.")
    bot_max_deliveries: int = Field(default=5, ge=1, le=100,
                                    description="Handlings of a taken-over entry before it is dead-lettered.")
    bot_max_waiting: int = Field(default=1000, ge=1, le=100_000,
                                 description="Entries a partition holds back during an outage before it "
                                             "stops reading new ones.")
    bot_retry_base_seconds: float = Field(default=0.5, gt=0, le=60,
                                          description="First backoff after an outage (Postgres, Telegram).")
    bot_retry_max_seconds: float = Field(default=15.0, gt=0, le=600,
                                         description="Longest backoff between retries during an outage.")
    bot_lag_report_seconds: float = Field(default=5.0, gt=0, le=3600,
                                          description="How often stream lag is published (streams trimmed).")
    bot_channel_refresh_seconds: float = Field(default=30.0, ge=1, le=3600,
                                               description="How often the channel row is re-read.")
    bot_support_sweep_seconds: float = Field(default=30.0, ge=0.1, le=3600,
                                             description="How often one replica sweeps Postgres for support "
                                                         "outcomes the status streams no longer hold.")
    bot_support_claim_idle_ms: int = Field(default=30_000, ge=100, le=3_600_000,
                                           description="Idle time after which a support status event left "
                                                       "pending (a dead replica's) is taken over.")
    bot_groups_sweep_seconds: float = Field(default=5.0, ge=0.05, le=3600,
                                            description="How often one replica sweeps Postgres for managed "
                                                        "groups' join questions past their deadline, "
                                                        "unapplied decisions and welcomes due for deletion.")
    bot_activity_flush_seconds: float = Field(default=1.0, gt=0, le=60,
                                              description="How often group members' last-seen times are "
                                                          "written to Postgres (one statement a flush).")
    bot_activity_flush_entries: int = Field(default=2000, ge=1, le=100_000,
                                            description="Members (or updates) buffered that start a flush "
                                                        "before the period ends.")
    bot_activity_max_held: int = Field(default=50_000, ge=1, le=1_000_000,
                                       description="Group updates waiting for a flush (Postgres away) "
                                                   "after which more are held back as in an outage.")
