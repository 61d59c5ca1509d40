"""kopf indexes: what handlers look up without asking the API server, kept current by watches.

Handlers take them as typed keyword parameters named after the index functions here:
`channel_token_refs: ChannelTokens`, `channel_secrets: ChannelSecrets`, `sender_jobs: SenderJobs`.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import kopf
from clarion.models import NOTIFICATION_CHANNEL, InvalidSpec, NotificationChannel, ResourceKey, SecretKeyRef

from clarion_operator import builders
from clarion_operator.campaign_logic import JobState, job_state

ChannelTokens: TypeAlias = kopf.Index[ResourceKey, SecretKeyRef]
"""(namespace, channel) -> the bot token Secret key of each Telegram channel."""
ChannelSecrets: TypeAlias = kopf.Index[ResourceKey, str]
"""(namespace, Secret name) -> the channels that read that Secret."""
SenderJobs: TypeAlias = kopf.Index[ResourceKey, JobState]
"""(namespace, Job name) -> the state of each sender Job the operator created."""


def first(index: kopf.Index[ResourceKey, Any], key: ResourceKey) -> Any | None:
    """The first value an index holds under `key`, or None."""
    return next(iter(index.get(key, [])), None)


def _channel(body: kopf.Body) -> NotificationChannel | None:
    try:
        return NotificationChannel.parse(body)
    except InvalidSpec:
        return None  # reported in the channel's status; nothing to look up meanwhile


@kopf.index(*NOTIFICATION_CHANNEL.selector)
async def channel_token_refs(body: kopf.Body, **_: Any) -> dict[ResourceKey, SecretKeyRef] | None:
    channel = _channel(body)
    if channel is None or channel.spec.telegram is None:
        return None
    return {channel.key: channel.spec.telegram.bot_token_secret_ref}


@kopf.index(*NOTIFICATION_CHANNEL.selector)
async def channel_secrets(body: kopf.Body, **_: Any) -> dict[ResourceKey, str] | None:
    channel = _channel(body)
    if channel is None:
        return None
    return {ResourceKey(channel.namespace, ref.name): channel.name for ref in channel.spec.secret_refs()}


@kopf.index("batch", "v1", "jobs", labels={"app.kubernetes.io/component": "sender", **builders.MANAGED_BY})
async def sender_jobs(namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status,
                      **_: Any) -> dict[ResourceKey, JobState]:
    conditions = [(str(c.get("type")), str(c.get("status"))) for c in status.get("conditions") or ()]
    return {ResourceKey(namespace or "", name): job_state(conditions, bool(spec.get("suspend")))}
