"""Objects the operator creates, as plain dicts: Secrets, the bot and worker Deployments, the sender Job,
and for a lane scaled by KEDA its ScaledObject and TriggerAuthentication.

Every pod the operator creates serves Prometheus `/metrics` on the container port named
`METRICS_PORT_NAME` (`METRICS_PORT`), which the chart's PodMonitor scrapes.

Names are deterministic (a second create of the same object gets 409), owner references are added
by the caller with `kopf.adopt`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from clarion.keys import channel_key
from clarion.models import ScalingPolicy, SecretKeyRef, WorkerLane
from clarion.streams import WORKER_GROUP, notify_stream
from redis.connection import SSLConnection, parse_url

MANAGED_BY = {"app.kubernetes.io/managed-by": "clarion-operator"}
RUNTIME_DATABASE_KEY = "database-url"
RUNTIME_REDIS_KEY = "redis-url"
#: The user and password of `redis-url` on their own, for KEDA's TriggerAuthentication (ADR 0008).
RUNTIME_REDIS_USERNAME_KEY = "redis-username"
RUNTIME_REDIS_PASSWORD_KEY = "redis-password"
RUNTIME_SECRET_KEYS = frozenset({RUNTIME_DATABASE_KEY, RUNTIME_REDIS_KEY, RUNTIME_REDIS_USERNAME_KEY,
                                 RUNTIME_REDIS_PASSWORD_KEY})
WEBHOOK_SECRET_KEY = "token"
#: Pod-template annotation of bot Deployments: the revision of the namespace's credentials.
CREDENTIALS_REVISION = "clarion.io/credentials-revision"
#: The container port of `/metrics` in every pod the operator creates; the chart's PodMonitor scrapes the
#: port by this name (charts/clarion/templates/podmonitor.yaml).
METRICS_PORT_NAME = "metrics"
METRICS_PORT = 9090
_NAME_LIMIT = 63


def _redis_url(url: str) -> dict[str, Any]:
    """A Redis URL's parts as redis-py reads them (credentials unquoted, `db` from the path or query)."""
    parts: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    return parts


def bounded_name(base: str, suffix: str, limit: int = _NAME_LIMIT) -> str:
    """`base + suffix`, or a shortened base with a hash of the full name when that exceeds `limit`."""
    full = f"{base}{suffix}"
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 1
    return f"{base[:keep].rstrip('-.')}-{digest}{suffix}"


def bot_deployment_name(channel: str) -> str:
    return bounded_name(channel, "-bot")


def worker_deployment_name(channel: str, lane: WorkerLane) -> str:
    """`<channel>-workers-<lane>`: one worker Deployment per channel and lane (ADRs 0008, 0010)."""
    return bounded_name(channel, f"-workers-{lane}")


def legacy_worker_deployment_name(channel: str) -> str:
    """The one worker Deployment of both lanes that came before ADR 0008; the operator deletes it."""
    return bounded_name(channel, "-workers")


def webhook_secret_name(channel: str) -> str:
    return bounded_name(channel, "-webhook-secret", limit=253)


def sender_job_name(campaign: str, run: int) -> str:
    return bounded_name(campaign, f"-r{run}")


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _runtime_env(runtime_secret: str) -> list[dict[str, Any]]:
    return [
        _secret_env("CLARION_DATABASE_URL", runtime_secret, RUNTIME_DATABASE_KEY),
        _secret_env("CLARION_REDIS_URL", runtime_secret, RUNTIME_REDIS_KEY),
    ]


def runtime_secret(namespace: str, name: str, database_url: str, redis_url: str) -> dict[str, Any]:
    """The Secret that gives bot and sender pods their Postgres and Redis URLs (with the namespace's own
    credentials, clarion_operator.tenancy); the Redis user and password also on their own, where a
    KEDA TriggerAuthentication reads them (empty when the URL has none)."""
    redis = _redis_url(redis_url)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {**MANAGED_BY, "app.kubernetes.io/name": "clarion"}},
        "type": "Opaque",
        "stringData": {RUNTIME_DATABASE_KEY: database_url, RUNTIME_REDIS_KEY: redis_url,
                       RUNTIME_REDIS_USERNAME_KEY: redis.get("username") or "",
                       RUNTIME_REDIS_PASSWORD_KEY: redis.get("password") or ""},
    }


def webhook_secret(namespace: str, channel: str, token: str) -> dict[str, Any]:
    """The owned Secret holding a generated webhook secret token."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": webhook_secret_name(channel),
            "namespace": namespace,
            "labels": {**MANAGED_BY, "app.kubernetes.io/name": "clarion", "clarion.io/channel": channel},
        },
        "type": "Opaque",
        "stringData": {WEBHOOK_SECRET_KEY: token},
    }


def bot_labels(channel: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "clarion", "app.kubernetes.io/component": "bot",
            "clarion.io/channel": channel}


def _channel_deployment(*, name: str, namespace: str, selector: dict[str, str], replicas: int,
                        credentials_revision: str, container: dict[str, Any],
                        pod: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Deployment of one channel's pods (bot or workers): restricted pod security, and the
    credentials revision in the pod template, so a rotation rolls the pods onto the new runtime Secret."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {**selector, **MANAGED_BY}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": {**selector, **MANAGED_BY},
                             "annotations": {CREDENTIALS_REVISION: credentials_revision}},
                "spec": {"securityContext": _pod_security(), **(pod or {}), "containers": [container]},
            },
        },
    }


def _container(*, name: str, image: str, pull_policy: str, command: list[str],
               secrets: dict[str, SecretKeyRef], runtime_secret_name: str, resources: dict[str, Any],
               env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The container of a pod the operator creates: its Secrets and the namespace's runtime URLs as
    environment, and `/metrics` served on the named metrics port."""
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": command,
        "env": [
            *(_secret_env(var, ref.name, ref.key) for var, ref in sorted(secrets.items())),
            *_runtime_env(runtime_secret_name),
            {"name": "CLARION_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "CLARION_METRICS_PORT", "value": str(METRICS_PORT)},
            *(env or []),
        ],
        "ports": [{"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "resources": resources,
        "securityContext": _container_security(),
    }


def _channel_resources() -> dict[str, Any]:
    return {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "384Mi"}}


def _sender_resources() -> dict[str, Any]:
    return {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}


def bot_deployment(
    *,
    namespace: str,
    channel: str,
    token: SecretKeyRef,
    replicas: int,
    image: str,
    pull_policy: str,
    runtime_secret_name: str,
    credentials_revision: str = "",
) -> dict[str, Any]:
    """The Deployment running `clarion-bot` for one Telegram channel.

    `credentials_revision` (in the pod template) changes when the namespace's credentials are rotated,
    which rolls the bots onto pods that read the new runtime Secret.
    """
    return _channel_deployment(
        name=bot_deployment_name(channel), namespace=namespace, selector=bot_labels(channel),
        replicas=replicas,
        credentials_revision=credentials_revision,
        container=_container(
            name="bot", image=image, pull_policy=pull_policy,
            command=["clarion-bot", "--channel", channel_key(namespace, channel)],
            secrets={"CLARION_BOT_TOKEN": token}, runtime_secret_name=runtime_secret_name,
            resources=_channel_resources()))


def worker_labels(channel: str, lane: WorkerLane) -> dict[str, str]:
    return {"app.kubernetes.io/name": "clarion", "app.kubernetes.io/component": "worker",
            "clarion.io/channel": channel, "clarion.io/lane": lane}


def worker_deployment(
    *,
    namespace: str,
    channel: str,
    lane: WorkerLane,
    secrets: dict[str, SecretKeyRef],
    replicas: int,
    concurrency: int,
    image: str,
    pull_policy: str,
    runtime_secret_name: str,
    credentials_revision: str = "",
) -> dict[str, Any]:
    """The Deployment running `clarion-worker` for one lane of one channel's notifications (ADR 0008).

    `replicas` is what the Deployment starts with (the lane's minReplicas); the scaler owns it after
    that, so `Kube.apply_deployment(..., scaled=True)` never writes it back.

    `secrets` maps environment variables to the channel's Secret keys (CLARION_BOT_TOKEN for Telegram,
    CLARION_SMTP_USERNAME and CLARION_SMTP_PASSWORD for email with AUTH). Pods run under the
    namespace's own credentials (the runtime Secret) and roll with them like the bots.
    """
    return _channel_deployment(
        name=worker_deployment_name(channel, lane), namespace=namespace,
        selector=worker_labels(channel, lane),
        replicas=replicas, credentials_revision=credentials_revision,
        # A worker finishes and records the sends in flight before it exits.
        pod={"terminationGracePeriodSeconds": 60},
        container=_container(
            name="worker", image=image, pull_policy=pull_policy,
            command=["clarion-worker", "--channel", channel_key(namespace, channel), "--lanes", lane],
            secrets=secrets, runtime_secret_name=runtime_secret_name, resources=_channel_resources(),
            env=[{"name": "CLARION_WORKER_CONCURRENCY", "value": str(concurrency)}]))


KEDA_API_VERSION = "keda.sh/v1alpha1"
SCALED_OBJECTS, TRIGGER_AUTHENTICATIONS = "scaledobjects", "triggerauthentications"
#: How often KEDA reads a lane's consumer group (ADR 0008): KEDA's default is 30 s.
KEDA_POLLING_SECONDS = 5
#: The longest stabilization window an HPA accepts.
HPA_MAX_STABILIZATION_SECONDS = 3600


@dataclass(frozen=True)
class RedisAddress:
    """Where KEDA's redis-streams scaler reaches Redis: `host:port`, the database, TLS or not."""

    address: str
    database: int
    tls: bool

    @classmethod
    def of(cls, url: str) -> RedisAddress:
        """The address of a `redis://` or `rediss://` URL (its credentials are not part of it).

        Raises ValueError for a URL KEDA cannot use (a Unix socket).
        """
        parts = _redis_url(url)
        host = parts.get("host")
        if not host:
            raise ValueError(f"KEDA's redis-streams scaler needs a TCP address; the Redis URL has none "
                             f"({url.partition('://')[0]}://)")
        host = f"[{host}]" if ":" in host else host
        return cls(address=f"{host}:{parts.get('port') or 6379}", database=int(parts.get("db") or 0),
                   tls=parts.get("connection_class") is SSLConnection)


def keda_trigger_authentication(*, namespace: str, channel: str, lane: WorkerLane,
                                runtime_secret_name: str) -> dict[str, Any]:
    """The TriggerAuthentication of a lane's ScaledObject: the namespace's Redis user and password from
    its runtime Secret (ADR 0005), so KEDA reads the lane's stream with the tenant's own ACL user."""
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": "TriggerAuthentication",
        "metadata": {"name": worker_deployment_name(channel, lane), "namespace": namespace,
                     "labels": {**worker_labels(channel, lane), **MANAGED_BY}},
        "spec": {"secretTargetRef": [
            {"parameter": "username", "name": runtime_secret_name, "key": RUNTIME_REDIS_USERNAME_KEY},
            {"parameter": "password", "name": runtime_secret_name, "key": RUNTIME_REDIS_PASSWORD_KEY},
        ]},
    }


def keda_scaled_object(*, namespace: str, channel: str, lane: WorkerLane, policy: ScalingPolicy,
                       redis: RedisAddress) -> dict[str, Any]:
    """The KEDA ScaledObject of one lane's worker Deployment (engine `keda`, ADR 0008).

    One `redis-streams` trigger in lag mode on the lane's stream and the workers' consumer group,
    authenticated by the TriggerAuthentication of the same name; `cooldownPeriod` (1 -> 0) and the
    HPA's scale-down stabilization window (N -> M) are both the lane's cooldown (the window at most
    the HPA's hour). A lane turned off
    (maxReplicas 0, which no HPA accepts) is paused at 0 replicas by KEDA's annotation instead.
    """
    name = worker_deployment_name(channel, lane)
    metadata: dict[str, Any] = {"name": name, "namespace": namespace,
                                "labels": {**worker_labels(channel, lane), **MANAGED_BY}}
    if policy.max_replicas == 0:
        metadata["annotations"] = {"autoscaling.keda.sh/paused-replicas": "0"}
    cooldown = policy.scale_down_cooldown_seconds
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": "ScaledObject",
        "metadata": metadata,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "pollingInterval": KEDA_POLLING_SECONDS,
            "cooldownPeriod": cooldown,
            "minReplicaCount": policy.min_replicas,
            "maxReplicaCount": policy.max_replicas,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
                "scaleDown": {"stabilizationWindowSeconds": min(cooldown, HPA_MAX_STABILIZATION_SECONDS)},
            }}},
            "triggers": [{
                "type": "redis-streams",
                "metadata": {
                    "address": redis.address,
                    "databaseIndex": str(redis.database),
                    "enableTLS": "true" if redis.tls else "false",
                    "stream": notify_stream(channel_key(namespace, channel), lane),
                    "consumerGroup": WORKER_GROUP,
                    "lagCount": str(policy.target_lag_per_replica),
                    "activationLagCount": "0",
                },
                "authenticationRef": {"name": name, "kind": "TriggerAuthentication"},
            }],
        },
    }


def sender_labels(campaign: str, run: int) -> dict[str, str]:
    return {"app.kubernetes.io/name": "clarion", "app.kubernetes.io/component": "sender",
            "clarion.io/campaign": campaign, "clarion.io/run": str(run)}


def sender_job(
    *,
    namespace: str,
    campaign: str,
    run: int,
    campaign_id: int,
    shards: int,
    token: SecretKeyRef,
    image: str,
    pull_policy: str,
    runtime_secret_name: str,
    backoff_limit: int,
) -> dict[str, Any]:
    """The Indexed Job of one campaign run: one completion per shard, all shards in parallel."""
    labels = sender_labels(campaign, run)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": sender_job_name(campaign, run), "namespace": namespace,
                     "labels": {**labels, **MANAGED_BY}},
        "spec": {
            "completionMode": "Indexed",
            "completions": shards,
            "parallelism": shards,
            "backoffLimit": backoff_limit,
            # A replacement pod only once its predecessor has terminated: never two senders of one
            # index at a time, so a new sender may take over its predecessor's claims at once.
            "podReplacementPolicy": "Failed",
            "suspend": False,
            "template": {
                "metadata": {"labels": {**labels, **MANAGED_BY}},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": _pod_security(),
                    "containers": [_container(
                        name="sender", image=image, pull_policy=pull_policy,
                        command=["clarion-sender", "campaign"], secrets={"CLARION_BOT_TOKEN": token},
                        runtime_secret_name=runtime_secret_name, resources=_sender_resources(),
                        env=[{"name": "CLARION_CAMPAIGN_ID", "value": str(campaign_id)}])],
                },
            },
        },
    }
