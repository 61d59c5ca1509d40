"""Worker autoscaling as a pure function of the backlog over time: each case is a run of polls, the
Deployment taking whatever replicas the previous poll decided."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import get_args

import pytest
from clarion.backlog import Backlog
from clarion.models import (
    LagSource,
    ScaleReason,
    ScalingPolicy,
    WorkerAutoscaling,
    WorkerLane,
    lane_field,
    worker_lanes,
)
from clarion.models.channel import LaneAutoscaling, LaneOverrides
from clarion_operator.scaling_logic import Decision, ScalerState, decide, needed_replicas
from pydantic import ValidationError

pytestmark = pytest.mark.unit

R = ScaleReason
T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
POLICY = ScalingPolicy(min_replicas=0, max_replicas=10, target_lag_per_replica=100,
                       scale_down_cooldown_seconds=60)
UNREADABLE = "unreadable"


def lag(waiting: int, pending: int = 0) -> Backlog:
    return Backlog(True, True, waiting + pending, waiting, waiting, pending, LagSource.REPORTED)


def unknown(at_least: int) -> Backlog:
    return Backlog(True, True, at_least, None, at_least, 0, LagSource.UNKNOWN)


@dataclass(frozen=True)
class Poll:
    """At `second`, the poll sees `backlog` (or UNREADABLE) and should decide `replicas` for `reason`."""

    second: float
    backlog: Backlog | str
    replicas: int
    reason: ScaleReason


def run(polls: list[Poll], *, current: int, policy: ScalingPolicy = POLICY) -> list[tuple[int, ScaleReason]]:
    state: ScalerState | None = None
    seen: list[tuple[int, ScaleReason]] = []
    for poll in polls:
        backlog = None if poll.backlog == UNREADABLE else poll.backlog
        assert not isinstance(backlog, str)
        decision: Decision = decide(current, backlog, policy, state, T0 + timedelta(seconds=poll.second))
        seen.append((decision.replicas, decision.reason))
        current, state = decision.replicas, decision.state
    return seen


CASES: dict[str, tuple[int, list[Poll]]] = {
    "a backlog scales up at once, to ceil(waiting / target)": (1, [
        Poll(0, lag(0), 1, R.COOLING_DOWN),
        Poll(2, lag(450), 5, R.BACKLOG_GREW),
        Poll(4, lag(420, pending=280), 7, R.BACKLOG_GREW),
    ]),
    "pending entries count as waiting": (0, [
        Poll(0, lag(0, pending=3), 1, R.SCALED_FROM_ZERO),
    ]),
    "down only once every poll of a cooldown needed fewer, to the largest need of it": (8, [
        Poll(0, lag(800), 8, R.STEADY),
        Poll(2, lag(300), 8, R.COOLING_DOWN),
        Poll(30, lag(200), 8, R.COOLING_DOWN),
        Poll(59, lag(200), 8, R.COOLING_DOWN),
        Poll(60, lag(200), 3, R.BACKLOG_SHRANK),   # the 800 of second 0 is out; the 300 is in
        Poll(61, lag(200), 3, R.COOLING_DOWN),
        Poll(62, lag(200), 2, R.BACKLOG_SHRANK),
    ]),
    "a backlog that comes and goes within a cooldown keeps its pods": (0, [
        Poll(0, lag(1000), 10, R.SCALED_FROM_ZERO),
        *[Poll(second, lag(1000 if second % 40 == 0 else 0), 10,
               R.STEADY if second % 40 == 0 else R.COOLING_DOWN) for second in range(2, 400, 2)],
    ]),
    "zero and back: idle for a cooldown goes to zero, one entry brings one pod": (2, [
        Poll(0, lag(0), 2, R.COOLING_DOWN),
        Poll(30, lag(0), 2, R.COOLING_DOWN),
        Poll(60, lag(0), 0, R.IDLE),
        Poll(62, lag(0), 0, R.STEADY),
        Poll(64, lag(1), 1, R.SCALED_FROM_ZERO),
    ]),
    "a pending entry alone keeps a pod from zero": (1, [
        Poll(0, lag(0, pending=1), 1, R.STEADY),
        Poll(120, lag(0, pending=1), 1, R.STEADY),
    ]),
    "a scaler that just started waits a whole cooldown before scaling down": (5, [
        Poll(0, lag(0), 5, R.COOLING_DOWN),
        Poll(59, lag(0), 5, R.COOLING_DOWN),
        Poll(60, lag(0), 0, R.IDLE),
    ]),
    "unknown lag scales up on what is known to wait and never down": (2, [
        Poll(0, unknown(600), 6, R.BACKLOG_GREW),
        Poll(2, unknown(100), 6, R.LAG_UNKNOWN),
        Poll(200, unknown(100), 6, R.LAG_UNKNOWN),
        Poll(202, lag(0), 6, R.COOLING_DOWN),     # the unknown polls of the last minute hold it up
        Poll(262, lag(0), 0, R.IDLE),
    ]),
    "an unreadable Redis changes nothing": (3, [
        Poll(0, UNREADABLE, 3, R.BACKLOG_UNREADABLE),
        Poll(100, UNREADABLE, 3, R.BACKLOG_UNREADABLE),
        Poll(101, lag(0), 3, R.COOLING_DOWN),
    ]),
}


@pytest.mark.parametrize("current, polls", CASES.values(), ids=CASES.keys())
def test_scaling_over_time(current: int, polls: list[Poll]) -> None:
    assert run(polls, current=current) == [(p.replicas, p.reason) for p in polls]


CLAMPED = ScalingPolicy(min_replicas=2, max_replicas=4, target_lag_per_replica=10,
                        scale_down_cooldown_seconds=30)
CLAMP_CASES: dict[str, tuple[int, list[Poll]]] = {
    "no more than maxReplicas however long the backlog": (2, [Poll(0, lag(10_000), 4, R.BACKLOG_GREW)]),
    "up to minReplicas at once": (0, [Poll(0, lag(0), 2, R.BELOW_MINIMUM)]),
    "up to minReplicas while Redis is unreadable": (1, [Poll(0, UNREADABLE, 2, R.BELOW_MINIMUM)]),
    "down to maxReplicas at once when it was lowered": (9, [Poll(0, lag(10_000), 4, R.ABOVE_MAXIMUM)]),
    "never below minReplicas when idle": (4, [
        Poll(0, lag(0), 4, R.COOLING_DOWN),
        Poll(30, lag(0), 2, R.BACKLOG_SHRANK),
        Poll(90, lag(0), 2, R.STEADY),
    ]),
}


@pytest.mark.parametrize("current, polls", CLAMP_CASES.values(), ids=CLAMP_CASES.keys())
def test_replicas_stay_within_min_and_max(current: int, polls: list[Poll]) -> None:
    assert run(polls, current=current, policy=CLAMPED) == [(p.replicas, p.reason) for p in polls]


@pytest.mark.parametrize("waiting, needed", [(0, 0), (1, 1), (100, 1), (101, 2), (999, 10), (10**9, 10)])
def test_needed_replicas_is_the_ceiling_of_waiting_over_the_target(waiting: int, needed: int) -> None:
    assert needed_replicas(lag(waiting), POLICY) == needed


def test_a_lane_turned_off_still_counts_one_entry_so_its_backlog_can_be_read() -> None:
    off = ScalingPolicy(min_replicas=0, max_replicas=0)
    assert off.full_scale_backlog == 1


def test_counting_past_the_full_scale_backlog_changes_nothing() -> None:
    assert POLICY.full_scale_backlog == 1000
    assert needed_replicas(unknown(POLICY.full_scale_backlog), POLICY) == POLICY.max_replicas


def test_the_window_keeps_only_samples_that_can_still_be_its_largest() -> None:
    state = ScalerState(since=T0)
    cooldown = timedelta(seconds=60)
    for second, need in [(0, 5), (2, 3), (4, 4), (6, 1), (8, 2)]:
        state = state.record(T0 + timedelta(seconds=second), need, cooldown)
    assert [need for _, need in state.window] == [5, 4, 2]
    state = state.record(T0 + timedelta(seconds=61), 0, cooldown)
    assert [need for _, need in state.window] == [4, 2, 0]


def test_defaults_live_in_the_policy_model() -> None:
    assert WorkerAutoscaling().policy("instant") == ScalingPolicy()
    assert ScalingPolicy() == ScalingPolicy(engine="operator", min_replicas=0, max_replicas=10,
                                            target_lag_per_replica=100, scale_down_cooldown_seconds=300)


def test_each_field_comes_from_the_most_specific_level_that_sets_it() -> None:
    cluster = WorkerAutoscaling.model_validate({
        "engine": "keda", "maxReplicas": 20, "targetLagPerReplica": 50,
        "lanes": {"bulk": {"targetLagPerReplica": 1000, "scaleDownCooldownSeconds": 30}}})
    channel = WorkerAutoscaling.model_validate({
        "maxReplicas": 6, "lanes": {"instant": {"minReplicas": 1}}})

    assert channel.policy("instant", cluster) == ScalingPolicy(
        engine="keda", min_replicas=1, max_replicas=6, target_lag_per_replica=50)
    assert channel.policy("bulk", cluster) == ScalingPolicy(
        engine="keda", max_replicas=6, target_lag_per_replica=1000, scale_down_cooldown_seconds=30)


def test_a_group_lane_idles_at_zero_unless_its_own_overrides_set_a_floor() -> None:
    cluster = WorkerAutoscaling.model_validate({"minReplicas": 2,
                                                "lanes": {"groupMaintenance": {"minReplicas": 1}}})
    channel = WorkerAutoscaling.model_validate({"minReplicas": 1, "maxReplicas": 4,
                                                "lanes": {"groupPosts": {"minReplicas": 3}}})
    assert channel.policy("instant", cluster).min_replicas == 1
    assert channel.policy("group-posts", cluster).min_replicas == 3
    assert channel.policy("group-maintenance", cluster).min_replicas == 1
    assert WorkerAutoscaling(min_replicas=2).policy("group-maintenance").min_replicas == 0
    assert WorkerAutoscaling(min_replicas=2).policy("group-maintenance").max_replicas == 10


def test_the_engine_can_differ_per_lane() -> None:
    channel = WorkerAutoscaling.model_validate({"lanes": {"bulk": {"engine": "keda"}}})
    assert (channel.policy("instant").engine, channel.policy("bulk").engine) == ("operator", "keda")
    cluster = WorkerAutoscaling.model_validate({"engine": "keda",
                                                "lanes": {"instant": {"engine": "operator"}}})
    assert (WorkerAutoscaling().policy("instant", cluster).engine,
            WorkerAutoscaling().policy("bulk", cluster).engine) == ("operator", "keda")
    # the channel's own engine comes before the cluster's lane override
    assert WorkerAutoscaling(engine="keda").policy("instant", cluster).engine == "keda"


def test_the_bound_set_on_the_more_specific_level_wins_a_disagreement() -> None:
    cluster = WorkerAutoscaling(min_replicas=5)
    assert WorkerAutoscaling(max_replicas=3).policy("bulk", cluster).model_dump(
        include={"min_replicas", "max_replicas"}) == {"min_replicas": 3, "max_replicas": 3}
    channel = WorkerAutoscaling.model_validate({"maxReplicas": 3, "lanes": {"bulk": {"minReplicas": 4}}})
    assert channel.policy("bulk").model_dump(
        include={"min_replicas", "max_replicas"}) == {"min_replicas": 4, "max_replicas": 4}
    assert WorkerAutoscaling(min_replicas=20).policy("bulk").max_replicas == 20


def test_a_lane_with_max_replicas_zero_is_off_whatever_waits() -> None:
    off = WorkerAutoscaling(lanes=LaneOverrides(bulk=LaneAutoscaling(max_replicas=0))).policy("bulk")
    assert (off.min_replicas, off.max_replicas) == (0, 0)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert decide(0, lag(5_000), off, None, now).replicas == 0


def test_every_lane_can_be_overridden() -> None:
    assert set(LaneOverrides.model_fields) == {lane_field(lane) for lane in get_args(WorkerLane)}


def test_a_group_lane_override_is_read_by_its_camel_case_name_and_inherits_the_rest() -> None:
    channel = WorkerAutoscaling.model_validate(
        {"maxReplicas": 4,
         "lanes": {"groupPosts": {"minReplicas": 1}, "groupMaintenance": {"maxReplicas": 1}}})
    posts, maintenance = channel.policy("group-posts"), channel.policy("group-maintenance")
    assert (posts.min_replicas, posts.max_replicas) == (1, 4)
    assert (maintenance.min_replicas, maintenance.max_replicas) == (0, 1)


def test_only_telegram_channels_have_the_group_lanes() -> None:
    assert worker_lanes("telegram") == ("instant", "bulk", "group-posts", "group-maintenance")
    assert worker_lanes("email") == ("instant", "bulk")
    assert worker_lanes("webpush") == ("instant", "bulk")


@pytest.mark.parametrize("raw", [
    {"minReplicas": 4, "maxReplicas": 3},
    {"lanes": {"instant": {"minReplicas": 2, "maxReplicas": 1}}},
    {"maxReplicas": 51},
    {"minReplicas": 1, "maxReplicas": 0},
    {"targetLagPerReplica": 0},
    {"scaleDownCooldownSeconds": 1},
    {"engine": "hpa"},
    {"lanes": {"groups": {}}},
])
def test_invalid_autoscaling_is_refused(raw: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        WorkerAutoscaling.model_validate(raw)
