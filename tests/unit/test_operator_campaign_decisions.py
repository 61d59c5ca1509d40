"""The campaign lifecycle as a pure function of spec and observed state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from clarion_operator.campaign_logic import (
    Action,
    CampaignRow,
    Counts,
    Decision,
    Intent,
    JobState,
    Observed,
    RateSample,
    campaign_conditions,
    decide,
    in_flight_after_cancel,
    intent_of,
    job_state,
    message_hash,
    next_rate,
    outcome,
    progress_status,
    start_time,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
WAIT = timedelta(minutes=5)


def _intent(**kw: object) -> Intent:
    base: dict[str, object] = {"suspend": False, "cancel": False, "retry_failed": 0, "start_at": None,
                               "message_hash": "h"}
    return Intent(**(base | kw))  # type: ignore[arg-type]


def _row(**kw: object) -> CampaignRow:
    base: dict[str, object] = {"id": 1, "run": 1, "phase": "Sending", "total": 10, "shards": 2,
                               "message_hash": "h", "started_at": NOW, "completed_at": None,
                               "retry_observed": 0, "recovery_runs": 0}
    return CampaignRow(**(base | kw))  # type: ignore[arg-type]


def _seen(row: CampaignRow | None = None, counts: Counts | None = None, job: JobState = JobState.ACTIVE,
          channel_ready: bool = True, status_phase: str | None = None,
          due_since: datetime = NOW) -> Observed:
    return Observed(status_phase=status_phase, row=row, counts=counts or Counts(total=10, pending=10),
                    job=job, channel_ready=channel_ready, due_since=due_since)


def _decide(intent: Intent, seen: Observed, max_recovery_runs: int = 3):  # type: ignore[no-untyped-def]
    return decide(intent, seen, now=NOW, channel_wait=WAIT, max_recovery_runs=max_recovery_runs)


def test_suspended_campaign_that_never_started_is_a_draft() -> None:
    d = _decide(_intent(suspend=True), _seen(job=JobState.ABSENT))
    assert (d.phase, d.action) == ("Draft", Action.NONE)


def test_future_start_time_waits_in_scheduled() -> None:
    d = _decide(_intent(start_at=NOW + timedelta(hours=1)), _seen(job=JobState.ABSENT))
    assert (d.phase, d.action, d.reason) == ("Scheduled", Action.NONE, "WaitingForStartTime")


def test_due_campaign_with_ready_channel_starts() -> None:
    d = _decide(_intent(start_at=NOW - timedelta(seconds=1)), _seen(job=JobState.ABSENT))
    assert (d.phase, d.action) == ("Sending", Action.START)


def test_due_campaign_waits_for_its_channel_then_fails() -> None:
    waiting = _decide(_intent(), _seen(job=JobState.ABSENT, channel_ready=False))
    assert (waiting.phase, waiting.reason) == ("Scheduled", "WaitingForChannel")
    late = _decide(_intent(), _seen(job=JobState.ABSENT, channel_ready=False, due_since=NOW - 2 * WAIT))
    assert (late.phase, late.action, late.reason) == ("Failed", Action.NONE, "ChannelNotReady")


def test_a_campaign_failed_before_start_stays_failed_when_the_channel_recovers() -> None:
    d = _decide(_intent(), _seen(job=JobState.ABSENT, status_phase="Failed"))
    assert (d.phase, d.action) == ("Failed", Action.NONE)


def test_cancel_before_start_sends_nothing() -> None:
    d = _decide(_intent(cancel=True), _seen(job=JobState.ABSENT))
    assert (d.phase, d.action) == ("Cancelled", Action.NONE)


def test_suspend_while_sending_pauses_and_resume_continues() -> None:
    paused = _decide(_intent(suspend=True), _seen(_row()))
    assert (paused.phase, paused.action) == ("Paused", Action.SUSPEND)
    still = _decide(_intent(suspend=True), _seen(_row(phase="Paused"), job=JobState.SUSPENDED))
    assert (still.phase, still.action) == ("Paused", Action.NONE)
    resumed = _decide(_intent(), _seen(_row(phase="Paused"), job=JobState.SUSPENDED))
    assert (resumed.phase, resumed.action) == ("Sending", Action.RESUME)


def test_paused_campaign_whose_job_is_still_running_suspends_it_again() -> None:
    d = _decide(_intent(suspend=True), _seen(_row(phase="Paused"), job=JobState.ACTIVE))
    assert d.action is Action.SUSPEND


def test_cancel_while_sending_stops_and_reports_unsent() -> None:
    d = _decide(_intent(cancel=True), _seen(_row(), Counts(total=10, pending=4, sent=6)))
    assert (d.phase, d.action) == ("Cancelled", Action.CANCEL)
    assert "4 deliveries left unsent" in d.message


def test_settled_campaign_finishes_whatever_the_job_says() -> None:
    for job in JobState:
        d = _decide(_intent(), _seen(_row(), Counts(total=10, sent=9, blocked=1), job=job))
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
    d = _decide(_intent(), _seen(_row(), job=JobState.ABSENT))
    assert (d.phase, d.action) == ("Sending", Action.CREATE_JOB)


def test_failed_job_with_unsent_deliveries_fails_the_campaign() -> None:
    d = _decide(_intent(), _seen(_row(), Counts(total=10, pending=3, sent=7), job=JobState.FAILED))
    assert (d.phase, d.action, d.reason) == ("Failed", Action.FAIL, "SenderJobFailed")


def test_job_that_ended_early_gets_a_new_run_a_bounded_number_of_times() -> None:
    again = _decide(_intent(), _seen(_row(recovery_runs=2), job=JobState.SUCCEEDED))
    assert (again.phase, again.action) == ("Sending", Action.RECOVER)
    stop = _decide(_intent(), _seen(_row(recovery_runs=3), job=JobState.SUCCEEDED))
    assert (stop.phase, stop.action) == ("Failed", Action.FAIL)


def test_retry_failed_after_completion_starts_a_new_run() -> None:
    row = _row(phase="PartiallyFailed")
    seen = _seen(row, Counts(total=10, sent=8, failed=2), job=JobState.SUCCEEDED)
    d = _decide(_intent(retry_failed=1), seen)
    assert (d.phase, d.action) == ("Sending", Action.RETRY)


def test_retry_failed_with_nothing_failed_is_only_noted() -> None:
    d = _decide(_intent(retry_failed=1), _seen(_row(phase="Completed"), Counts(total=10, sent=10)))
    assert (d.phase, d.action) == ("Completed", Action.NOTE_RETRY)


def test_retry_already_observed_changes_nothing() -> None:
    row = _row(phase="PartiallyFailed", retry_observed=1)
    d = _decide(_intent(retry_failed=1), _seen(row, Counts(total=10, sent=8, failed=2)))
    assert (d.phase, d.action) == ("PartiallyFailed", Action.NONE)


def test_retry_waits_while_the_campaign_is_still_sending() -> None:
    d = _decide(_intent(retry_failed=1), _seen(_row(), Counts(total=10, pending=2, failed=1, sent=7)))
    assert (d.phase, d.action) == ("Sending", Action.NONE)


def test_cancelled_campaign_is_never_retried() -> None:
    seen = _seen(_row(phase="Cancelled"), Counts(total=10, pending=3))
    d = _decide(_intent(retry_failed=5, cancel=True), seen)
    assert (d.phase, d.action) == ("Cancelled", Action.NONE)


def test_local_start_time_is_read_in_the_time_zone() -> None:
    assert start_time({"at": "2026-12-01T09:00:00", "timeZone": "Asia/Tokyo"}) == datetime(
        2026, 12, 1, 0, 0, tzinfo=UTC)
    assert start_time({"at": "2026-12-01T09:00:00+01:00", "timeZone": "Asia/Tokyo"}) == datetime(
        2026, 12, 1, 8, 0, tzinfo=UTC)
    assert start_time(None) is None


def test_message_hash_changes_with_message_or_audience_only() -> None:
    spec = {"message": {"text": "hi"}, "audience": {"allSubscribers": True}, "suspend": False}
    same = message_hash(spec)
    assert message_hash(spec | {"suspend": True, "retryFailed": 3}) == same
    assert message_hash(spec | {"message": {"text": "hello"}}) != same
    assert message_hash(spec | {"audience": {"tags": ["a"]}}) != same


def test_intent_reads_the_camelcase_spec() -> None:
    intent = intent_of({"suspend": True, "cancel": False, "retryFailed": 2, "message": {"text": "x"},
                        "audience": {"allSubscribers": True},
                        "schedule": {"at": "2026-01-01T00:00:00Z", "timeZone": "UTC"}})
    assert (intent.suspend, intent.cancel, intent.retry_failed) == (True, False, 2)
    assert intent.start_at == datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("job", "state"), [
    (None, JobState.ABSENT),
    ({"spec": {"suspend": False}, "status": {}}, JobState.ACTIVE),
    ({"spec": {"suspend": True}, "status": {}}, JobState.SUSPENDED),
    ({"spec": {}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}, JobState.SUCCEEDED),
    ({"spec": {}, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}, JobState.FAILED),
    ({"spec": {}, "status": {"conditions": [{"type": "Failed", "status": "False"}]}}, JobState.ACTIVE),
])
def test_job_state_from_the_job_object(job: dict[str, object] | None, state: JobState) -> None:
    assert job_state(job) is state


def test_rate_is_smoothed_and_eta_follows_it() -> None:
    first = next_rate(None, 0, NOW)
    second = next_rate(first, 30, NOW + timedelta(seconds=1))
    assert second.rate == 30
    third = next_rate(second, 40, NOW + timedelta(seconds=2))
    assert third.rate == 20
    figures = progress_status(Counts(total=100, pending=50, sent=40, failed=5, blocked=5), third.rate,
                              sending=True, now=NOW)
    assert figures["progress"] == 50
    assert figures["pending"] == 50
    assert figures["eta"] == "2026-11-23T12:00:02Z"


def test_rate_restarts_cleanly_after_a_retry_resets_counts() -> None:
    before = RateSample(NOW, 100, 10.0)
    after = next_rate(before, 80, NOW + timedelta(seconds=1))
    assert after.settled == 80


def test_finished_campaign_reports_no_rate_or_eta() -> None:
    figures = progress_status(Counts(total=3, sent=3), 12.0, sending=False, now=NOW)
    assert (figures["progress"], figures["ratePerSecond"], figures["eta"]) == (100, 0.0, None)


def test_conditions_summarise_the_phase_and_report_an_edit() -> None:
    d = _decide(_intent(), _seen(_row(), Counts(total=10, sent=10)))
    conds = {c["type"]: c for c in campaign_conditions(d, drift=True)}
    assert conds["Complete"]["status"] == "True"
    assert conds["Progressing"]["status"] == "False"
    assert conds["SpecDrift"]["reason"] == "EditedAfterStart"


def test_cancelled_campaign_stays_progressing_while_its_senders_still_hold_deliveries() -> None:
    holding = Counts(total=10, pending=5, sending=3, sent=2)
    assert in_flight_after_cancel("Cancelled", holding, NOW - timedelta(seconds=5), NOW)
    assert not in_flight_after_cancel("Cancelled", Counts(total=10, pending=8, sent=2), NOW, NOW)
    assert not in_flight_after_cancel("Cancelled", holding, NOW - timedelta(minutes=5), NOW)
    assert not in_flight_after_cancel("Completed", holding, NOW, NOW)
    cancelled = Decision("Cancelled", Action.NONE, "Cancelled", "cancelled")
    conds = {c["type"]: c for c in campaign_conditions(cancelled, drift=False, stopping=3)}
    assert (conds["Progressing"]["status"], conds["Progressing"]["reason"]) == ("True", "SendersStopping")
    assert conds["Ready"]["status"] == "False"
