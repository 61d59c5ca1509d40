"""The worker autoscaler (engine `operator`, ADR 0008): every 2 s, for each lane of a telegram or email
channel, read the lane's backlog, decide (`scaling_logic.decide`) and set the lane's worker Deployment
through its scale subresource when the count changes, with an Event that says why.

The state of each lane's cooldown lives in the channel's kopf memo: after a restart the scaler scales
up at once and waits a whole cooldown before it scales down.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, get_args

import kopf
import redis.asyncio as aioredis
from clarion.backlog import read_backlog
from clarion.keys import channel_key
from clarion.metrics import counter
from clarion.models import Lane, NotificationChannel
from clarion.streams import WORKER_GROUP, notify_stream

from clarion_operator import builders
from clarion_operator.channels import CHANNELS
from clarion_operator.context import context
from clarion_operator.scaling_logic import ScalerState, decide
from clarion_operator.status import typed

#: How often the scaler polls each lane (the issue's goal: react within 10 s).
SCALER_SECONDS = 2.0

SCALINGS = counter("clarion_operator_worker_scalings_total",
                   "Worker Deployment resizes by the operator's autoscaler.", ["lane", "reason"])


def _scaled_types(spec: Any, **_: Any) -> bool:
    return spec.get("type") in ("telegram", "email")


def _states(memo: Any) -> dict[Lane, ScalerState]:
    states: dict[Lane, ScalerState] | None = memo.get("scaler")
    if states is None:
        states = memo["scaler"] = {}
    return states


@kopf.timer(*CHANNELS, interval=SCALER_SECONDS, when=_scaled_types)
@typed(NotificationChannel)
async def scale_workers(channel: NotificationChannel, *, body: kopf.Body, memo: Any, logger: kopf.Logger,
                        **_: Any) -> None:
    """Size each lane's worker Deployment on its stream backlog (docs/operator.md, "Worker autoscaling")."""
    ctx = context(memo)
    states = _states(memo)
    key = channel_key(channel.namespace, channel.name)
    for lane in get_args(Lane):
        policy = channel.spec.workers.autoscaling.policy(lane, ctx.settings.worker_autoscaling)
        if policy.engine != "operator":
            states.pop(lane, None)
            continue
        name = builders.worker_deployment_name(channel.name, lane)
        current = await ctx.kube.deployment_replicas(channel.namespace, name)
        if current is None:  # not created yet (the channel's credentials are not checked)
            continue
        try:
            backlog = await read_backlog(ctx.redis, notify_stream(key, lane), WORKER_GROUP,
                                         count_limit=max(1, policy.full_scale_backlog))
        except aioredis.RedisError as exc:
            logger.warning("backlog of %s lane %s unreadable: %r", key, lane, exc)
            backlog = None
        decision = decide(current, backlog, policy, states.get(lane), datetime.now(UTC))
        states[lane] = decision.state
        if decision.replicas == current:
            continue
        await ctx.kube.scale_deployment(channel.namespace, name, decision.replicas)
        SCALINGS.labels(lane, decision.reason).inc()
        waiting = "unknown" if backlog is None else str(backlog.waiting)
        message = f"{name}: {current} -> {decision.replicas} pods ({waiting} entries waiting)"
        kopf.event(body, type="Normal", reason=decision.reason, message=message)
        logger.info("scaled %s", message)
