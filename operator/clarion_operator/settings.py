"""The operator's settings: the common ones plus what it needs to build Jobs and Deployments."""

from __future__ import annotations

from typing import Literal

from clarion.models.channel import WorkerAutoscaling
from clarion.settings import CommonSettings
from pydantic import Field

TenantCredentials = Literal["per-namespace", "shared"]


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
        description="Where pods reach Postgres (its credentials are replaced by the namespace's unless "
                    "tenant_database_credentials is shared); default: the operator's own database_url.",
    )
    runtime_redis_url: str | None = Field(
        default=None,
        description="Where pods reach Redis (credentials replaced likewise); default: the operator's own.",
    )
    tenant_database_credentials: TenantCredentials = Field(
        default="per-namespace",
        description="per-namespace: a Postgres role per namespace, row-level security on its rows (needs "
                    "CREATEROLE); shared: pods get runtime_database_url as it is (no isolation in Postgres).",
    )
    tenant_redis_credentials: TenantCredentials = Field(
        default="per-namespace",
        description="per-namespace: a Redis ACL user per namespace limited to its keys (needs ACL SETUSER); "
                    "shared: pods get runtime_redis_url as it is.",
    )
    credential_rotation_hours: float = Field(
        default=720.0, ge=0, le=87600,
        description="Age at which a namespace's credentials are replaced; 0: only when the Secret is lost.",
    )
    credential_grace_minutes: float = Field(
        default=1440.0, ge=0, le=43200,
        description="How long the previous credentials keep working after a rotation (for older pods).",
    )
    tenancy_sweep_seconds: float = Field(
        default=60.0, gt=0, le=3600,
        description="Seconds between passes that retire, rotate and delete namespace credentials.",
    )
    acl_check_seconds: float = Field(
        default=5.0, gt=0, le=3600,
        description="Seconds between checks that Redis still has every namespace's ACL user (it loses "
                    "them with its data); missing ones are defined again.",
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
    route_check_seconds: float = Field(
        default=60.0, gt=0, le=3600,
        description="Seconds between NotificationRoute passes: its channels' readiness and templates are "
                    "checked again (docs/events.md).",
    )
    group_check_seconds: float = Field(
        default=60.0, gt=0, le=3600,
        description="Seconds between ManagedGroup passes: the channel and the bot's admin rights are checked "
                    "again and due maintenance is put on the group-maintenance stream (ADR 0010).",
    )
    group_member_count_seconds: float = Field(
        default=300.0, gt=0, le=86400, description="Seconds between getChatMemberCount reads of a group."
    )
    group_inactivity_sweep_seconds: float = Field(
        default=3600.0, gt=0, le=604800,
        description="Period of a group's inactivity-sweep task (Monitoring phase, inactivity policy set).",
    )
    group_posts_check_seconds: float = Field(
        default=30.0, gt=0, le=3600,
        description="Seconds between passes that queue a group's scheduled posts that have come due.",
    )
    group_posts_catch_up_seconds: float = Field(
        default=3600.0, gt=0, le=604800,
        description="A scheduled post's occurrence found later than this after its time (the operator was "
                    "down, the group not Ready) is skipped with a Warning Event instead of posted late.",
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
    worker_autoscaling: WorkerAutoscaling = Field(
        default_factory=WorkerAutoscaling,
        description="Cluster defaults of spec.workers.autoscaling (JSON, camelCase, e.g. "
                    '{"minReplicas": 1, "lanes": {"bulk": {"targetLagPerReplica": 1000}}}): a field a '
                    "channel leaves out takes the value here, and one left out here the model's default "
                    "(ADR 0008).",
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
