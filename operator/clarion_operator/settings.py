"""The operator's settings: the common ones plus what it needs to build Jobs and Deployments."""

from __future__ import annotations

from clarion.settings import CommonSettings
from pydantic import Field


class OperatorSettings(CommonSettings):
    """`CLARION_*` settings of the `clarion-operator` process."""

    image: str = Field(
        default="ghcr.io/clarion/clarion:0.1.0",
        max_length=512,
        description="Container image of the bot Deployments and sender Jobs the operator creates.",
    )
    image_pull_policy: str = Field(default="IfNotPresent", pattern="^(Always|IfNotPresent|Never)$")
    runtime_secret_name: str = Field(
        default="clarion-runtime",
        max_length=253,
        description="Secret (database-url, redis-url) the operator keeps in each namespace it runs pods in.",
    )
    runtime_database_url: str | None = Field(
        default=None,
        description="database-url written into the runtime Secret; default: the operator's own database_url.",
    )
    runtime_redis_url: str | None = Field(
        default=None,
        description="redis-url written into the runtime Secret; default: the operator's own redis_url.",
    )
    namespaces: str = Field(
        default="",
        max_length=4096,
        description="Comma-separated namespaces to watch; empty: the whole cluster.",
    )
    campaign_status_seconds: float = Field(
        default=2.5, gt=0, le=60, description="Seconds between campaign status refreshes from Postgres."
    )
    channel_retry_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="Seconds before a channel that is not Ready is re-checked."
    )
    channel_wait_seconds: float = Field(
        default=300.0, ge=0, le=86400,
        description="How long a due campaign waits for its channel to be Ready before it is marked Failed.",
    )
    max_concurrent_reconciles: int = Field(
        default=16, ge=1, le=1000, description="Campaign and channel passes running at once (bounds memory)."
    )
    kube_api_connections: int = Field(
        default=32, ge=1, le=1000,
        description="Connections kopf keeps to the API server for requests (watch streams come on top).",
    )
    sender_backoff_limit: int = Field(default=6, ge=0, le=100, description="backoffLimit of sender Jobs.")
    max_recovery_runs: int = Field(
        default=3, ge=0, le=100,
        description="New sender runs started when a Job finished while deliveries were still pending.",
    )
    liveness_endpoint: str | None = Field(
        default=None, description="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz; none: off."
    )
    smtp_ca_file: str | None = Field(
        default=None, description="CA bundle trusted for SMTP TLS besides the system's (self-signed relays)."
    )
    telegram_timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    smtp_timeout_seconds: float = Field(default=15.0, gt=0, le=300)

    @property
    def namespace_list(self) -> list[str]:
        """The namespaces to watch; empty means cluster-wide."""
        return [n.strip() for n in self.namespaces.split(",") if n.strip()]
