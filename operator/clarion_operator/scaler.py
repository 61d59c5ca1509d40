"""The worker autoscaler (engine `operator`, ADR 0008): every 2 s, for each worker lane of a channel
(`worker_lanes`: a telegram channel's group lanes too, ADR 0010), read the lane's
backlog, decide (`scaling_logic.decide`) and set the lane's worker Deployment through its scale
subresource when the count changes, with an Event that says why. Lanes with engine `keda` are measured
and reported the same way, and never resized.

Every poll sets the lane's gauges; the channel's `status.workers` gets the lane's replicas, backlog
and last resize under `scaling_logic.settle_measured`'s rule (a busy lane's lag every 10 s at most).

The state of each lane's cooldown lives in the channel's kopf memo: after a restart the scaler scales
up at once and waits a whole cooldown before it scales down.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, get_args

import kopf
import redis.asyncio as aioredis
from clarion.backlog import Backlog, read_backlog
from clarion.keys import channel_key
from clarion.metrics import counter, forget, gauge
from clarion.models import (
    LaneWorkersStatus,
    NotificationChannel,
    WorkerLane,
    WorkersStatus,
    worker_lanes,
)
from clarion.models.channel import ChannelType
from clarion.streams import WORKER_GROUP, notify_stream

from clarion_operator import builders
from clarion_operator.channels import CHANNELS
from clarion_operator.context import Context, context
from clarion_operator.scaling_logic import Decision, ScalerState, decide, lane_status, settle_measured
from clarion_operator.status import typed, write_status

#: How often the scaler polls each lane (the issue's goal: react within 10 s).
SCALER_SECONDS = 2.0

SCALINGS = counter("clarion_operator_worker_scalings_total",
                   "Worker Deployment resizes by the operator's autoscaler.", ["lane", "reason"])
_LANE = ["channel", "lane"]
# The lane's backlog as the scaler reads it, exported by the operator alone: also while the lane has
# no pod, and once however many workers run.
LAG = gauge("clarion_stream_lag", "Entries of a lane's notification stream not yet delivered to a "
            "worker (at least this many when Redis cannot count them).", _LANE)
PENDING = gauge("clarion_stream_pending", "Entries of a lane's notification stream delivered to a "
                "worker and not yet acknowledged.", _LANE)
REPLICAS = gauge("clarion_operator_worker_replicas", "Pods a lane's worker Deployment asks for.", _LANE)
DESIRED = gauge("clarion_operator_worker_desired_replicas", "Pods the lane's backlog needs at its last poll, "
                "within minReplicas and maxReplicas (engine operator).", _LANE)
MAX_REPLICAS = gauge("clarion_operator_worker_max_replicas", "maxReplicas of the lane's autoscaling.", _LANE)
_LANE_GAUGES = (LAG, PENDING, REPLICAS, DESIRED, MAX_REPLICAS)


def _scaled_types(spec: Any, **_: Any) -> bool:
    return spec.get("type") in get_args(ChannelType)


@dataclass
class LaneMemo:
    """What the scaler keeps of one lane between polls, in the channel's kopf memo."""

    state: ScalerState | None = None
    measured_at: datetime | None = None


def _lane_memos(memo: Any) -> dict[WorkerLane, LaneMemo]:
    found: dict[WorkerLane, LaneMemo] | None = memo.get("scaler")
    if found is None:
        found = memo["scaler"] = {}
    return found


def _forget_lane(key: str, lane: WorkerLane) -> None:
    for metric in _LANE_GAUGES:
        forget(metric, key, lane)


@kopf.timer(*CHANNELS, interval=SCALER_SECONDS, when=_scaled_types)
@typed(NotificationChannel)
async def scale_workers(channel: NotificationChannel, *, body: kopf.Body, patch: kopf.Patch, memo: Any,
                        logger: kopf.Logger, **_: Any) -> None:
    """Size each lane's worker Deployment on its stream backlog and report it (docs/operator.md,
    "Worker autoscaling")."""
    memos = _lane_memos(memo)
    old = channel.status.workers or WorkersStatus()
    lanes: dict[WorkerLane, LaneWorkersStatus] = {}
    for lane in worker_lanes(channel.spec.type):
        status = await _poll_lane(context(memo), channel, body, logger, lane,
                                  memos.setdefault(lane, LaneMemo()), old.of(lane))
        if status is not None:
            lanes[lane] = status
    if body.metadata.deletion_timestamp is not None:  # deleted during the poll: after forget_channel_metrics
        _forget_channel(channel.namespace, channel.name)
        return
    workers = WorkersStatus.of_lanes(lanes) if lanes else None
    write_status(patch, channel.status, channel.status.model_copy(update={"workers": workers}))


async def _poll_lane(ctx: Context, channel: NotificationChannel, body: kopf.Body, logger: kopf.Logger,
                     lane: WorkerLane, memo: LaneMemo,
                     previous: LaneWorkersStatus | None) -> LaneWorkersStatus | None:
    """Measure one lane, resize it when its engine is `operator` and the decision says so, set its
    gauges; its status (None while it has no Deployment)."""
    key = channel_key(channel.namespace, channel.name)
    policy = channel.spec.workers.autoscaling.policy(lane, ctx.settings.worker_autoscaling)
    name = builders.worker_deployment_name(channel.name, lane)
    size = await ctx.kube.deployment_size(channel.namespace, name)
    if size is None:  # not created yet (the channel's credentials are not checked)
        _forget_lane(key, lane)
        return None
    try:
        backlog: Backlog | None = await read_backlog(ctx.redis, notify_stream(key, lane), WORKER_GROUP,
                                                     count_limit=policy.full_scale_backlog)
    except aioredis.RedisError as exc:
        logger.warning("backlog of %s lane %s unreadable: %r", key, lane, exc)
        backlog = None
    now = datetime.now(UTC)
    decision: Decision | None = None
    if policy.engine == "operator":
        decision = decide(size.replicas, backlog, policy, memo.state, now)
        memo.state = decision.state
        if decision.replicas != size.replicas:
            await _resize(ctx, body, logger, channel.namespace, name, lane, size.replicas, decision, backlog)
    else:
        memo.state = None
    fresh = lane_status(policy.engine, size.replicas, size.ready, backlog, decision, previous, now)
    _set_gauges(key, lane, fresh, backlog is not None, policy.max_replicas)
    status, memo.measured_at = settle_measured(previous, fresh, measured_at=memo.measured_at, now=now)
    return status


async def _resize(ctx: Context, body: kopf.Body, logger: kopf.Logger, namespace: str, name: str,
                  lane: WorkerLane, current: int, decision: Decision, backlog: Backlog | None) -> None:
    """Set the Deployment's scale, count it and say so in an Event."""
    await ctx.kube.scale_deployment(namespace, name, decision.replicas)
    SCALINGS.labels(lane, decision.reason).inc()
    waiting = "unknown" if backlog is None else str(backlog.waiting)
    message = f"{name}: {current} -> {decision.replicas} pods ({waiting} entries waiting)"
    kopf.event(body, type="Normal", reason=decision.reason, message=message)
    logger.info("scaled %s", message)


def _set_gauges(key: str, lane: WorkerLane, status: LaneWorkersStatus, measured: bool,
                max_replicas: int) -> None:
    """This poll's figures (the status before `settle_measured`); a backlog Redis could not give
    leaves the last ones, a lane KEDA scales has no desired count."""
    if measured:
        LAG.labels(key, lane).set(status.lag or 0)
        PENDING.labels(key, lane).set(status.pending or 0)
    REPLICAS.labels(key, lane).set(status.replicas or 0)
    MAX_REPLICAS.labels(key, lane).set(max_replicas)
    if status.desired is None:
        forget(DESIRED, key, lane)
    else:
        DESIRED.labels(key, lane).set(status.desired)


def _forget_channel(namespace: str, name: str) -> None:
    key = channel_key(namespace, name)
    for lane in get_args(WorkerLane):
        _forget_lane(key, lane)


@kopf.on.delete(*CHANNELS, optional=True)
async def forget_channel_metrics(name: str, namespace: str | None, **_: Any) -> None:
    """A deleted channel's lanes leave the metrics (no stale series). kopf stops the scaler's timer
    meanwhile: a poll that ends after this handler sees the deletion and forgets them too."""
    _forget_channel(namespace or "", name)
