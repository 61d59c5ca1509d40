"""What a channel's `status.workers` shows after each autoscaler poll, and how often it is written:
lane_status builds one lane's status from the poll, settle_measured holds back the figures that move
on every poll, write_status patches what changed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import get_args

import kopf
import pytest
from clarion.backlog import Backlog
from clarion.models import (
    LagSource,
    LaneWorkersStatus,
    NotificationChannelStatus,
    ScaleEvent,
    ScaleReason,
    ScalingPolicy,
    WorkerLane,
    WorkersStatus,
    lane_field,
)
from clarion_operator.scaling_logic import LAG_REFRESH, ScalerState, decide, lane_status, settle_measured
from clarion_operator.status import write_status

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
POLICY = ScalingPolicy(min_replicas=1, max_replicas=5, target_lag_per_replica=100,
                       scale_down_cooldown_seconds=30)


def reported(lag: int, pending: int = 0) -> Backlog:
    return Backlog(True, True, lag + pending, lag, lag, pending, LagSource.REPORTED)


def test_the_workers_status_has_one_field_per_lane() -> None:
    assert set(WorkersStatus.model_fields) == {lane_field(lane) for lane in get_args(WorkerLane)}
    lane = LaneWorkersStatus(engine="operator", replicas=2)
    assert WorkersStatus.model_validate({"bulk": lane}).of("bulk") == lane
    posts = WorkersStatus.of_lanes({"group-posts": lane})
    assert posts.of("group-posts") == lane
    assert posts.to_k8s()["groupPosts"]["replicas"] == 2


def test_a_scale_up_shows_the_new_replicas_the_backlog_and_the_decision_from_to_and_why() -> None:
    decision = decide(1, reported(250, pending=30), POLICY, None, T0)
    status = lane_status("operator", 1, 1, reported(250, pending=30), decision, None, T0)
    assert status == LaneWorkersStatus(
        engine="operator", replicas=3, ready_replicas=1, desired=3, lag=250, pending=30,
        last_scale=ScaleEvent(from_replicas=1, to_replicas=3, reason=ScaleReason.BACKLOG_GREW, time=T0))
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["lastScale"] == {"from": 1, "to": 3, "reason": "BacklogGrew",
                                   "time": "2026-12-05T12:00:00Z"}
    assert "lagSource" not in dumped  # Reported: the usual case says nothing


def test_a_poll_that_keeps_the_count_keeps_the_last_scale() -> None:
    up = lane_status("operator", 1, 1, reported(250), decide(1, reported(250), POLICY, None, T0), None, T0)
    later = T0 + timedelta(seconds=2)
    steady = decide(3, reported(260), POLICY, None, later)
    status = lane_status("operator", 3, 3, reported(260), steady, up, later)
    assert (status.replicas, status.ready_replicas, status.lag) == (3, 3, 260)
    assert status.last_scale == up.last_scale


def test_a_keda_lane_shows_replicas_and_backlog_and_no_decision() -> None:
    operator_era = LaneWorkersStatus(engine="operator", replicas=3, desired=3, lag=5, last_scale=ScaleEvent(
        from_replicas=1, to_replicas=3, reason=ScaleReason.BACKLOG_GREW, time=T0))
    status = lane_status("keda", 4, 2, reported(420, pending=8), None, operator_era, T0)
    assert status == LaneWorkersStatus(engine="keda", replicas=4, ready_replicas=2, lag=420, pending=8)


def test_an_unknown_lag_shows_the_entries_known_to_wait_and_where_the_count_came_from() -> None:
    unknown = Backlog(True, True, 900, None, 500, 0, LagSource.UNKNOWN)
    status = lane_status("keda", 1, 1, unknown, None, None, T0)
    assert (status.lag, status.lag_source) == (500, LagSource.UNKNOWN)


def test_an_unreadable_backlog_keeps_the_figures_last_written() -> None:
    before = LaneWorkersStatus(engine="operator", replicas=2, desired=2, lag=150, pending=3,
                               lag_source=LagSource.COUNTED)
    decision = decide(2, None, POLICY, None, T0)
    status = lane_status("operator", 2, 2, None, decision, before, T0)
    assert (status.lag, status.pending, status.lag_source) == (150, 3, LagSource.COUNTED)


def busy(lag: int, *, replicas: int = 3) -> LaneWorkersStatus:
    return LaneWorkersStatus(engine="operator", replicas=replicas, ready_replicas=replicas, desired=replicas,
                             lag=lag)


def test_a_busy_lane_s_lag_waits_for_the_refresh_unless_something_else_changed() -> None:
    written = T0
    soon = T0 + timedelta(seconds=4)
    assert settle_measured(busy(300), busy(280), measured_at=written, now=soon) == (busy(300), written)
    later = T0 + LAG_REFRESH
    assert settle_measured(busy(300), busy(280), measured_at=written, now=later) == (busy(280), later)
    # a resize (or pods turning ready, or a new decision) writes the lag of the same poll with it
    resized = busy(280, replicas=4)
    assert settle_measured(busy(300), resized, measured_at=written, now=soon) == (resized, soon)


def test_a_lane_turning_idle_or_busy_is_written_at_once() -> None:
    soon = T0 + timedelta(seconds=2)
    assert settle_measured(busy(300), busy(0), measured_at=T0, now=soon) == (busy(0), soon)
    assert settle_measured(busy(0), busy(7), measured_at=T0, now=soon) == (busy(7), soon)


def test_after_a_restart_the_first_poll_writes_what_it_measured() -> None:
    assert settle_measured(busy(300), busy(280), measured_at=None, now=T0) == (busy(280), T0)
    assert settle_measured(None, busy(280), measured_at=None, now=T0) == (busy(280), T0)


def test_a_moving_backlog_writes_the_status_every_ten_seconds_and_an_idle_lane_only_when_it_changes() -> None:
    status = NotificationChannelStatus()
    state: ScalerState | None = None
    measured_at: datetime | None = None
    replicas = 5
    written: list[int] = []
    for poll in range(60):  # every 2 s for two minutes: the first minute busy, then idle
        now = T0 + timedelta(seconds=2 * poll)
        backlog = reported(450 + poll % 3 * 10, pending=poll % 5) if poll < 30 else reported(0)
        decision = decide(replicas, backlog, POLICY, state, now)
        state = decision.state
        previous = status.workers.of("instant") if status.workers else None
        fresh = lane_status("operator", replicas, replicas, backlog, decision, previous, now)  # all ready
        settled, measured_at = settle_measured(previous, fresh, measured_at=measured_at, now=now)
        replicas = decision.replicas
        new = status.model_copy(update={"workers": WorkersStatus(instant=settled)})
        patch = kopf.Patch()
        write_status(patch, status, new)
        if patch:
            written.append(2 * poll)
        status = new
    # busy: the first poll, then every 10 s; idle at 60 s; the scale-down to 1 after the 30 s cooldown
    # (88 s), its pods ready (90 s); then nothing changes
    assert written == [0, 10, 20, 30, 40, 50, 60, 88, 90]
    assert status.workers is not None and status.workers.instant is not None
    assert (status.workers.instant.replicas, status.workers.instant.lag) == (1, 0)
    assert status.workers.instant.last_scale is not None
    assert status.workers.instant.last_scale.reason == ScaleReason.BACKLOG_SHRANK
