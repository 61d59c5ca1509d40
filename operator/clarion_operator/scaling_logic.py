"""Worker autoscaling decisions without I/O: how many pods one lane's worker Deployment should have.

    needed  = ceil((lag + pending) / targetLagPerReplica), clamped to [minReplicas, maxReplicas]

An ordered table over one poll (the operator polls every couple of seconds; docs/operator.md, "Worker
autoscaling"):

    needed > current                     -> scale up to needed now (BelowMinimum, ScaledFromZero,
                                            BacklogGrew): one entry lifts a lane at zero to one pod
    current > maxReplicas                -> down to maxReplicas now (AboveMaximum)
    lag unknown, or Redis unreadable     -> keep current (LagUnknown, BacklogUnreadable)
    needed == current                    -> keep (Steady)
    needed < current                     -> down to the largest `needed` of the last cooldown, once
                                            the scaler has watched for a whole cooldown and that
                                            largest is below current (BacklogShrank; Idle at zero);
                                            else keep (CoolingDown)

Scaling down to the window's largest need is the hysteresis: a backlog that comes and goes within a
cooldown keeps the pods it last needed, so the count never flaps. A poll whose lag is unknown records
a need of at least the current count, so it also holds scale-down back for a whole cooldown. Zero is
reached only when minReplicas is 0 and every poll of a cooldown saw no entry waiting or pending.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from clarion.backlog import Backlog
from clarion.models import (
    AutoscalingEngine,
    LagSource,
    LaneWorkersStatus,
    ScaleEvent,
    ScaleReason,
    ScalingPolicy,
)

Reason = ScaleReason


@dataclass(frozen=True)
class ScalerState:
    """What the scaler remembers of one lane between polls (in memory: after a restart it starts
    again, and waits a whole cooldown before it scales down).

    `window` holds (time, need) of the last cooldown, kept decreasing in need: a sample followed by
    a larger or equal one can never again be the largest, so the first one is the window's maximum.
    """

    since: datetime
    window: tuple[tuple[datetime, int], ...] = ()

    def record(self, now: datetime, need: int, cooldown: timedelta) -> ScalerState:
        kept = [(at, n) for at, n in self.window if at > now - cooldown]
        while kept and kept[-1][1] <= need:
            kept.pop()
        return ScalerState(self.since, (*kept, (now, need)))

    @property
    def peak(self) -> int:
        """The largest need of the window (0 when nothing was recorded)."""
        return self.window[0][1] if self.window else 0


@dataclass(frozen=True)
class Decision:
    """Pods the lane's Deployment should have, why, what this poll alone asked for, and the state to
    pass to the next poll."""

    replicas: int
    reason: ScaleReason
    needed: int
    state: ScalerState


def needed_replicas(backlog: Backlog, policy: ScalingPolicy) -> int:
    """ceil((lag + pending) / targetLagPerReplica) within [minReplicas, maxReplicas]; an unknown lag
    counts as the entries known to wait."""
    return _clamp(math.ceil(backlog.waiting / policy.target_lag_per_replica), policy)


def _clamp(replicas: int, policy: ScalingPolicy) -> int:
    return max(policy.min_replicas, min(policy.max_replicas, replicas))


def decide(current: int, backlog: Backlog | None, policy: ScalingPolicy, state: ScalerState | None,
           now: datetime) -> Decision:
    """The replicas of a lane whose Deployment has `current`, given this poll's backlog (None: Redis
    could not be read) and the previous poll's state (None: the first poll)."""
    state = state or ScalerState(since=now)
    cooldown = timedelta(seconds=policy.scale_down_cooldown_seconds)
    needed = needed_replicas(backlog, policy) if backlog is not None else _clamp(current, policy)
    known = backlog is not None and backlog.lag is not None
    state = state.record(now, needed if known else max(needed, _clamp(current, policy)), cooldown)

    def to(replicas: int, reason: ScaleReason) -> Decision:
        return Decision(replicas, reason, needed, state)

    if needed > current:
        if backlog is None or math.ceil(backlog.waiting / policy.target_lag_per_replica) < needed:
            return to(needed, Reason.BELOW_MINIMUM)
        return to(needed, Reason.SCALED_FROM_ZERO if current == 0 else Reason.BACKLOG_GREW)
    if current > policy.max_replicas:
        return to(policy.max_replicas, Reason.ABOVE_MAXIMUM)
    if backlog is None:
        return to(current, Reason.BACKLOG_UNREADABLE)
    if not known:
        return to(current, Reason.LAG_UNKNOWN)
    if needed == current:
        return to(current, Reason.STEADY)
    if now - state.since >= cooldown and state.peak < current:
        return to(state.peak, Reason.IDLE if state.peak == 0 else Reason.BACKLOG_SHRANK)
    return to(current, Reason.COOLING_DOWN)


#: How often at most a lane's lag, pending and desired are rewritten in status while nothing else
#: about the lane changes (the scaler polls every 2 s; the metrics have every poll).
LAG_REFRESH = timedelta(seconds=10)


def lane_status(engine: AutoscalingEngine, current: int, ready: int, backlog: Backlog | None,
                decision: Decision | None, previous: LaneWorkersStatus | None,
                now: datetime) -> LaneWorkersStatus:
    """A lane's status after one poll of a Deployment that had `current` pods (`ready` of them ready):
    `decision` is None with engine keda, `backlog` None when Redis could not be read (then the lag,
    pending and lagSource last written stay)."""
    replicas, last_scale = current, None
    if decision is not None:
        replicas = decision.replicas
        last_scale = previous.last_scale if previous is not None else None
        if decision.replicas != current:
            last_scale = ScaleEvent(from_replicas=current, to_replicas=decision.replicas,
                                    reason=decision.reason, time=now.replace(microsecond=0))
    status = LaneWorkersStatus(engine=engine, replicas=replicas, ready_replicas=ready,
                               desired=None if decision is None else decision.needed, last_scale=last_scale)
    if backlog is None:
        return status if previous is None else status.model_copy(update={
            "lag": previous.lag, "pending": previous.pending, "lag_source": previous.lag_source})
    source = None if backlog.source == LagSource.REPORTED else backlog.source
    return status.model_copy(update={"lag": backlog.lag_floor, "pending": backlog.pending,
                                     "lag_source": source})


#: The fields of a lane's status that move on every poll under load.
_MEASURED = ("lag", "pending", "desired")


def _busy(status: LaneWorkersStatus) -> bool:
    return bool(status.lag or status.pending)


def settle_measured(previous: LaneWorkersStatus | None, fresh: LaneWorkersStatus, *,
                    measured_at: datetime | None, now: datetime) -> tuple[LaneWorkersStatus, datetime | None]:
    """The status to write, and when its lag, pending and desired were written (`measured_at`, or now).

    `fresh` as it is when anything else about the lane changed, when it turned busy or idle (entries
    waiting or pending, or none), or when those three were written LAG_REFRESH ago or longer (or never
    by this process); else `fresh` with `previous`'s three, so a busy lane's status is written every
    LAG_REFRESH, not on every poll, and an idle one not at all.
    """
    kept = {name: getattr(previous, name) for name in _MEASURED} if previous is not None else {}
    if (previous is None or measured_at is None or now - measured_at >= LAG_REFRESH
            or fresh.model_copy(update=kept) != previous or _busy(previous) != _busy(fresh)):
        changed = previous is None or any(getattr(previous, n) != getattr(fresh, n) for n in _MEASURED)
        return fresh, now if changed else measured_at
    return previous, measured_at
