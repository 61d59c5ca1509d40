"""The campaign lifecycle as a pure function of the typed spec and observed state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from clarion.db.campaigns import CampaignCounts as Counts
from clarion.db.campaigns import CampaignRow
from clarion.models import BroadcastCampaignSpec, BroadcastCampaignStatus, Phase
from clarion_operator.campaign_logic import (
    Action,
    Decision,
    JobState,
    Observed,
    RateSample,
    campaign_conditions,
    campaign_status,
    decide,
    job_state,
    live,
    next_rate,
    outcome,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
WAIT = timedelta(minutes=5)
BASE_SPEC: dict[str, Any] = {"channelRef": {"name": "news"}, "message": {"text": "hi"},
                             "audience": {"allSubscribers": True}}


def _spec(*, suspend: bool = False, cancel: bool = False, retry_failed: int = 0,
          start_at: datetime | None = None, **extra: Any) -> BroadcastCampaignSpec:
    raw = BASE_SPEC | {"suspend": suspend, "cancel": cancel, "retryFailed": retry_failed} | extra
    if start_at is not None:
        raw["schedule"] = {"at": start_at.strftime("%Y-%m-%dT%H:%M:%SZ")}
    return BroadcastCampaignSpec.model_validate(raw)


def _row(**kw: object) -> CampaignRow:
    base: dict[str, object] = {"id": 1, "namespace": "ns", "name": "c", "channel_id": 1, "spec": BASE_SPEC,
                               "run": 1, "phase": Phase.SENDING, "total": 10, "shards": 2,
                               "message_hash": "h", "started_at": NOW, "completed_at": None,
                               "retry_observed": 0, "recovery_runs": 0}
    merged = base | kw
    merged["phase"] = Phase(str(merged["phase"]))
    return CampaignRow(**merged)  # type: ignore[arg-type]


def _seen(row: CampaignRow | None = None, counts: Counts | None = None, job: JobState = JobState.ACTIVE,
          channel_ready: bool = True, status_phase: str | None = None,
          due_since: datetime = NOW) -> Observed:
    return Observed(status_phase=Phase(status_phase) if status_phase else None, row=row,
                    counts=counts or Counts(total=10, pending=10), job=job, channel_ready=channel_ready,
                    due_since=due_since)


def _decide(spec: BroadcastCampaignSpec, seen: Observed, max_recovery_runs: int = 3) -> Decision:
    return decide(spec, seen, now=NOW, channel_wait=WAIT, max_recovery_runs=max_recovery_runs)


def test_suspended_campaign_that_never_started_is_a_draft() -> None:
    d = _decide(_spec(suspend=True), _seen(job=JobState.ABSENT))
    assert (d.phase, d.action) == ("Draft", Action.NONE)


def test_future_start_time_waits_in_scheduled() -> None:
    d = _decide(_spec(start_at=NOW + timedelta(hours=1)), _seen(job=JobState.ABSENT))
    assert (d.phase, d.action, d.reason) == ("Scheduled", Action.NONE, "WaitingForStartTime")


def test_due_campaign_with_ready_channel_starts() -> None:
    d = _decide(_spec(start_at=NOW - timedelta(seconds=1)), _seen(job=JobState.ABSENT))
    assert (d.phase, d.action) == ("Sending", Action.START)


def test_due_campaign_waits_for_its_channel_then_fails() -> None:
    waiting = _decide(_spec(), _seen(job=JobState.ABSENT, channel_ready=False))
    assert (waiting.phase, waiting.reason) == ("Scheduled", "WaitingForChannel")
    late = _decide(_spec(), _seen(job=JobState.ABSENT, channel_ready=False, due_since=NOW - 2 * WAIT))
    assert (late.phase, late.action, late.reason) == ("Failed", Action.NONE, "ChannelNotReady")


def test_a_campaign_failed_before_start_stays_failed_when_the_channel_recovers() -> None:
    d = _decide(_spec(), _seen(job=JobState.ABSENT, status_phase="Failed"))
    assert (d.phase, d.action) == ("Failed", Action.NONE)


def test_cancel_before_start_sends_nothing() -> None:
    d = _decide(_spec(cancel=True), _seen(job=JobState.ABSENT))
    assert (d.phase, d.action) == ("Cancelled", Action.NONE)


def test_suspend_while_sending_pauses_and_resume_continues() -> None:
    paused = _decide(_spec(suspend=True), _seen(_row()))
    assert (paused.phase, paused.action) == ("Paused", Action.SUSPEND)
    still = _decide(_spec(suspend=True), _seen(_row(phase="Paused"), job=JobState.SUSPENDED))
    assert (still.phase, still.action) == ("Paused", Action.NONE)
    resumed = _decide(_spec(), _seen(_row(phase="Paused"), job=JobState.SUSPENDED))
    assert (resumed.phase, resumed.action) == ("Sending", Action.RESUME)


def test_paused_campaign_whose_job_is_still_running_suspends_it_again() -> None:
    d = _decide(_spec(suspend=True), _seen(_row(phase="Paused"), job=JobState.ACTIVE))
    assert d.action is Action.SUSPEND


def test_cancel_while_sending_stops_and_reports_unsent() -> None:
    d = _decide(_spec(cancel=True), _seen(_row(), Counts(total=10, pending=4, sent=6)))
    assert (d.phase, d.action) == ("Cancelled", Action.CANCEL)
    assert "4 unsent deliveries are cancelled" in d.message


def test_settled_campaign_finishes_whatever_the_job_says() -> None:
    for job in JobState:
        d = _decide(_spec(), _seen(_row(), Counts(total=10, sent=9, blocked=1), job=job))
        assert (d.phase, d.action) == ("Completed", Action.FINISH)


@pytest.mark.parametrize(("counts", "phase"), [
    (Counts(total=3, sent=2, blocked=1), "Completed"),
    (Counts(total=3, sent=2, failed=1), "PartiallyFailed"),
    (Counts(total=3, failed=3), "Failed"),
    (Counts(total=3, blocked=3), "Completed"),
    (Counts(), "Completed"),
])
def test_outcome_of_a_settled_campaign(counts: Counts, phase: str) -> None:
    assert outcome(counts) == phase


def test_missing_job_of_the_current_run_is_created() -> None:
    d = _decide(_spec(), _seen(_row(), job=JobState.ABSENT))
    assert (d.phase, d.action) == ("Sending", Action.CREATE_JOB)


def test_failed_job_with_unsent_deliveries_fails_the_campaign() -> None:
    d = _decide(_spec(), _seen(_row(), Counts(total=10, pending=3, sent=7), job=JobState.FAILED))
    assert (d.phase, d.action, d.reason) == ("Failed", Action.FAIL, "SenderJobFailed")


def test_job_that_ended_early_gets_a_new_run_a_bounded_number_of_times() -> None:
    again = _decide(_spec(), _seen(_row(recovery_runs=2), job=JobState.SUCCEEDED))
    assert (again.phase, again.action) == ("Sending", Action.RECOVER)
    stop = _decide(_spec(), _seen(_row(recovery_runs=3), job=JobState.SUCCEEDED))
    assert (stop.phase, stop.action) == ("Failed", Action.FAIL)


def test_retry_failed_after_completion_starts_a_new_run() -> None:
    row = _row(phase="PartiallyFailed")
    seen = _seen(row, Counts(total=10, sent=8, failed=2), job=JobState.SUCCEEDED)
    d = _decide(_spec(retry_failed=1), seen)
    assert (d.phase, d.action) == ("Sending", Action.RETRY)


def test_retry_failed_with_nothing_failed_is_only_noted() -> None:
    d = _decide(_spec(retry_failed=1), _seen(_row(phase="Completed"), Counts(total=10, sent=10)))
    assert (d.phase, d.action) == ("Completed", Action.NOTE_RETRY)


def test_retry_already_observed_changes_nothing() -> None:
    row = _row(phase="PartiallyFailed", retry_observed=1)
    d = _decide(_spec(retry_failed=1), _seen(row, Counts(total=10, sent=8, failed=2)))
    assert (d.phase, d.action) == ("PartiallyFailed", Action.NONE)


def test_retry_waits_while_the_campaign_is_still_sending() -> None:
    d = _decide(_spec(retry_failed=1), _seen(_row(), Counts(total=10, pending=2, failed=1, sent=7)))
    assert (d.phase, d.action) == ("Sending", Action.NONE)


def test_cancelled_campaign_is_never_retried() -> None:
    seen = _seen(_row(phase="Cancelled"), Counts(total=10, sent=7, cancelled=3))
    d = _decide(_spec(retry_failed=5, cancel=True), seen)
    assert (d.phase, d.action) == ("Cancelled", Action.NONE)


def test_deliveries_given_back_after_a_cancel_are_cancelled_too() -> None:
    seen = _seen(_row(phase="Cancelled"), Counts(total=10, sent=5, cancelled=2, pending=2, sending=1))
    d = _decide(_spec(cancel=True), seen)
    assert (d.phase, d.action) == ("Cancelled", Action.CANCEL_UNSENT)


def test_local_start_time_is_read_in_the_time_zone() -> None:
    tokyo = _spec(schedule={"at": "2026-12-01T09:00:00", "timeZone": "Asia/Tokyo"})
    assert tokyo.start_at == datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    offset = _spec(schedule={"at": "2026-12-01T09:00:00+01:00", "timeZone": "Asia/Tokyo"})
    assert offset.start_at == datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    assert _spec().start_at is None


def test_content_hash_changes_with_message_or_audience_only() -> None:
    same = _spec().content_hash()
    assert _spec(suspend=True, retry_failed=3).content_hash() == same
    assert _spec(message={"text": "hi", "parseMode": "None", "buttons": []}).content_hash() == same
    assert _spec(message={"text": "hello"}).content_hash() != same
    assert _spec(audience={"tags": ["a"]}).content_hash() != same


@pytest.mark.parametrize(("conditions", "suspended", "state"), [
    ([], False, JobState.ACTIVE),
    ([], True, JobState.SUSPENDED),
    ([("Complete", "True")], False, JobState.SUCCEEDED),
    ([("Failed", "True")], False, JobState.FAILED),
    ([("Failed", "False")], False, JobState.ACTIVE),
])
def test_job_state_from_the_job_conditions(conditions: list[tuple[str, str]], suspended: bool,
                                           state: JobState) -> None:
    assert job_state(conditions, suspended) is state


def _status(decision: Decision, counts: Counts, rate: float, *, row: CampaignRow | None = None,
            old: BroadcastCampaignStatus | None = None) -> BroadcastCampaignStatus:
    return campaign_status(old or BroadcastCampaignStatus(), _spec(), decision, row or _row(), counts,
                           job_name="c-r1", drift=False, rate=rate, generation=3, now=NOW)


def test_rate_is_smoothed_and_eta_follows_it() -> None:
    first = next_rate(None, 0, NOW)
    second = next_rate(first, 30, NOW + timedelta(seconds=1))
    assert second.rate == 30
    third = next_rate(second, 40, NOW + timedelta(seconds=2))
    assert third.rate == 20
    counts = Counts(total=100, pending=50, sent=40, failed=5, blocked=5)
    sending = Decision(Phase.SENDING, Action.NONE, "Sending", "sending")  # type: ignore[arg-type]
    status = _status(sending, counts, third.rate)
    assert (status.progress, status.pending, status.rate_per_second) == (50, 50, 20)
    assert status.eta == NOW + timedelta(seconds=2.5)
    assert status.to_k8s()["eta"] == "2026-11-23T12:00:02Z"
    assert (status.observed_generation, status.job_name, status.run) == (3, "c-r1", 1)


def test_a_stalled_campaign_has_no_eta_rather_than_one_past_the_calendar() -> None:
    sending = Decision(Phase.SENDING, Action.NONE, "Sending", "sending")  # type: ignore[arg-type]
    status = _status(sending, Counts(total=3000, pending=2000, sent=1000), 1e-12)
    assert status.eta is None and status.pending == 2000


def test_rate_restarts_cleanly_after_a_retry_resets_counts() -> None:
    before = RateSample(NOW, 100, 10.0)
    after = next_rate(before, 80, NOW + timedelta(seconds=1))
    assert after.settled == 80


def test_finished_campaign_reports_no_rate_or_eta() -> None:
    done = Decision(Phase.COMPLETED, Action.NONE, "Completed", "done")  # type: ignore[arg-type]
    status = _status(done, Counts(total=3, sent=3), 12.0)
    assert (status.progress, status.rate_per_second, status.eta) == (100, 0.0, None)


def test_conditions_summarise_the_phase_and_report_an_edit() -> None:
    d = _decide(_spec(), _seen(_row(), Counts(total=10, sent=10)))
    conds = {c.type: c for c in campaign_conditions(d, drift=True)}
    assert conds["Complete"].status == "True"
    assert conds["Progressing"].status == "False"
    assert conds["SpecDrift"].reason == "EditedAfterStart"


def test_cancelled_campaign_stays_progressing_while_its_senders_still_hold_deliveries() -> None:
    cancelled = Decision(Phase.CANCELLED, Action.NONE, "Cancelled", "cancelled")  # type: ignore[arg-type]
    holding = _status(cancelled, Counts(total=10, cancelled=5, sending=3, sent=2), 0.0)
    conds = {c.type: c for c in holding.conditions}
    assert (conds["Progressing"].status, conds["Progressing"].reason) == ("True", "SendersStopping")
    assert conds["Ready"].status == "False"
    assert live(_spec(cancel=True), holding)
    settled = _status(cancelled, Counts(total=10, cancelled=8, sent=2), 0.0, old=holding)
    assert {c.type: c for c in settled.conditions}["Progressing"].status == "False"
    assert not live(_spec(cancel=True), settled)
    assert (settled.sent, settled.cancelled, settled.pending, settled.total) == (2, 8, 0, 10)


def test_conditions_keep_their_transition_time_while_the_status_holds() -> None:
    sending = Decision(Phase.SENDING, Action.NONE, "Sending", "sending")  # type: ignore[arg-type]
    first = _status(sending, Counts(total=10, pending=10), 0.0)
    later = campaign_status(first, _spec(), sending, _row(), Counts(total=10, pending=5, sent=5),
                            job_name="c-r1", drift=False, rate=1.0, generation=3,
                            now=NOW + timedelta(minutes=1))
    assert [c.last_transition_time for c in later.conditions] == [NOW] * 4
