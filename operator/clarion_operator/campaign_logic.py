"""BroadcastCampaign decisions without I/O: phase and next action, then the status to write.

States and actions (see docs/operator.md for the diagram):

    no campaigns row: Draft (suspend) | Scheduled (waiting for the time or the channel) | Cancelled
                      | Failed (channel never became usable)  -> START when due
    row phase Sending: Paused (SUSPEND) | Cancelled (CANCEL) | settled -> FINISH
                       | Job missing -> CREATE_JOB | Job suspended -> RESUME
                       | Job failed -> FAIL | Job completed early -> RECOVER (new run)
    row phase Paused:  resume -> RESUME | cancel -> CANCEL
    row phase Cancelled, deliveries a stopping sender gave back -> CANCEL_UNSENT
    terminal:          retryFailed bumped -> RETRY (new run) or NOTE_RETRY when nothing is left to send

Everything here takes the typed spec (`BroadcastCampaignSpec`) and what the operator observed,
and returns typed values; `campaign_status` builds the whole status the operator writes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from clarion.db.campaigns import CampaignCounts, CampaignRow
from clarion.models import (
    FINISHED_PHASES,
    BroadcastCampaignSpec,
    BroadcastCampaignStatus,
    CampaignReason,
    Condition,
    ConditionType,
    Phase,
    merge_conditions,
)

Reason = CampaignReason


class Action(enum.Enum):
    NONE = "none"
    START = "start"
    CREATE_JOB = "create-job"
    SUSPEND = "suspend"
    RESUME = "resume"
    CANCEL = "cancel"
    CANCEL_UNSENT = "cancel-unsent"
    FINISH = "finish"
    FAIL = "fail"
    RECOVER = "recover"
    RETRY = "retry"
    NOTE_RETRY = "note-retry"


class JobState(enum.Enum):
    ABSENT = "absent"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class Observed:
    """What the operator saw: the phase in status, its row, the delivery counts, the current run's Job,
    whether the channel is usable, and since when the campaign has been due."""

    status_phase: Phase | None
    row: CampaignRow | None
    counts: CampaignCounts
    job: JobState
    channel_ready: bool
    due_since: datetime


@dataclass(frozen=True)
class Decision:
    phase: Phase
    action: Action
    reason: CampaignReason
    message: str


def outcome(counts: CampaignCounts) -> Phase:
    """The final phase of a settled campaign: any failure makes it PartiallyFailed, Failed if none got out."""
    if counts.failed == 0:
        return Phase.COMPLETED
    if counts.sent + counts.blocked == 0:
        return Phase.FAILED
    return Phase.PARTIALLY_FAILED


def decide(spec: BroadcastCampaignSpec, seen: Observed, *, now: datetime, channel_wait: timedelta,
           max_recovery_runs: int) -> Decision:
    """What phase the campaign is in and the one action that moves it toward the spec."""
    row = seen.row
    if row is None:
        return _before_start(spec, seen, now=now, channel_wait=channel_wait)
    counts = seen.counts
    if row.phase is Phase.CANCELLED:
        if counts.unsettled:
            return Decision(Phase.CANCELLED, Action.CANCEL_UNSENT, Reason.CANCELLED,
                            f"cancelled; {counts.unsettled} deliveries were still with the senders")
        return Decision(Phase.CANCELLED, Action.NONE, Reason.CANCELLED, _summary(counts))
    if row.phase in FINISHED_PHASES:
        if spec.retry_failed > row.retry_observed:
            if counts.failed or counts.unsettled:
                return Decision(Phase.SENDING, Action.RETRY, Reason.RETRYING_FAILED,
                                f"re-sending {counts.failed} failed and {counts.unsettled} unsent deliveries")
            return Decision(row.phase, Action.NOTE_RETRY, Reason.NOTHING_TO_RETRY,
                            "no failed deliveries to re-send")
        return Decision(row.phase, Action.NONE, Reason(row.phase.value), _summary(counts))
    if spec.cancel:
        return Decision(Phase.CANCELLED, Action.CANCEL, Reason.CANCELLED,
                        f"cancelled; {counts.unsettled} unsent deliveries are cancelled")
    if counts.unsettled == 0:
        final = outcome(counts)
        return Decision(final, Action.FINISH, Reason(final.value), _summary(counts))
    if row.phase is Phase.PAUSED:
        if not spec.suspend:
            return Decision(Phase.SENDING, Action.RESUME, Reason.RESUMED, "sending resumed")
        if seen.job is JobState.ACTIVE:
            return Decision(Phase.PAUSED, Action.SUSPEND, Reason.PAUSED, "suspending the sender Job")
        return Decision(Phase.PAUSED, Action.NONE, Reason.PAUSED,
                        f"paused with {counts.unsettled} deliveries unsent")
    if spec.suspend:
        return Decision(Phase.PAUSED, Action.SUSPEND, Reason.PAUSED, "suspend requested while sending")
    if seen.job is JobState.ABSENT:
        return Decision(Phase.SENDING, Action.CREATE_JOB, Reason.SENDING,
                        f"starting sender Job for run {row.run}")
    if seen.job is JobState.SUSPENDED:
        return Decision(Phase.SENDING, Action.RESUME, Reason.SENDING, "resuming the sender Job")
    if seen.job is JobState.FAILED:
        return Decision(Phase.FAILED, Action.FAIL, Reason.SENDER_JOB_FAILED,
                        f"the sender Job failed with {counts.unsettled} deliveries unsent; "
                        "bump spec.retryFailed to send them")
    if seen.job is JobState.SUCCEEDED:
        if row.recovery_runs < max_recovery_runs:
            return Decision(Phase.SENDING, Action.RECOVER, Reason.SENDERS_RESTARTED,
                            f"the sender Job ended with {counts.unsettled} deliveries unsent; "
                            f"starting run {row.run + 1}")
        return Decision(Phase.FAILED, Action.FAIL, Reason.SENDERS_STOPPED,
                        f"sender Jobs kept ending with {counts.unsettled} deliveries unsent")
    return Decision(Phase.SENDING, Action.NONE, Reason.SENDING, _summary(counts))


def _before_start(spec: BroadcastCampaignSpec, seen: Observed, *, now: datetime,
                  channel_wait: timedelta) -> Decision:
    if seen.status_phase in FINISHED_PHASES:
        return Decision(seen.status_phase, Action.NONE, Reason(seen.status_phase.value),
                        "finished before it started")
    if spec.cancel:
        return Decision(Phase.CANCELLED, Action.NONE, Reason.CANCELLED, "cancelled before it started")
    if spec.suspend:
        return Decision(Phase.DRAFT, Action.NONE, Reason.SUSPENDED, "spec.suspend is true; nothing is sent")
    start_at = spec.start_at
    if start_at is not None and now < start_at:
        return Decision(Phase.SCHEDULED, Action.NONE, Reason.WAITING_FOR_START_TIME,
                        f"sending starts at {start_at.isoformat()}")
    if not seen.channel_ready:
        if now - seen.due_since > channel_wait:
            return Decision(Phase.FAILED, Action.NONE, Reason.CHANNEL_NOT_READY,
                            "the channel did not become Ready in time; nothing was sent")
        return Decision(Phase.SCHEDULED, Action.NONE, Reason.WAITING_FOR_CHANNEL,
                        "waiting for the channel to become Ready")
    return Decision(Phase.SENDING, Action.START, Reason.STARTED,
                    "audience snapshot taken, sender Job created")


def due(spec: BroadcastCampaignSpec, now: datetime) -> bool:
    """Whether a campaign that has not started should start now (its time has come, it is not held)."""
    start_at = spec.start_at
    return not spec.suspend and not spec.cancel and (start_at is None or start_at <= now)


def waiting(spec: BroadcastCampaignSpec, phase: Phase | None, now: datetime) -> bool:
    """A Draft or Scheduled campaign whose time has not come: nothing to observe until it does."""
    start_at = spec.start_at
    return phase in (Phase.DRAFT, Phase.SCHEDULED) and (
        spec.suspend or (start_at is not None and now < start_at))


def live(spec: BroadcastCampaignSpec, status: BroadcastCampaignStatus) -> bool:
    """Whether the campaign can still change by itself: not finished, senders still stopping after a
    cancel (Progressing stays True), or a retry was requested (the status timer runs only then)."""
    if status.phase not in FINISHED_PHASES:
        return True
    if any(c.type == ConditionType.PROGRESSING and c.is_true for c in status.conditions):
        return True
    return spec.retry_failed > (status.retry_failed_observed or 0)


def job_state(conditions: list[tuple[str, str]], suspended: bool) -> JobState:
    """The state of a Job from its (type, status) conditions and spec.suspend."""
    for type_, status in conditions:
        if status != "True":
            continue
        if type_ == "Complete":
            return JobState.SUCCEEDED
        if type_ == "Failed":
            return JobState.FAILED
    return JobState.SUSPENDED if suspended else JobState.ACTIVE


def _summary(counts: CampaignCounts) -> str:
    cancelled = f", {counts.cancelled} cancelled" if counts.cancelled else ""
    return (f"{counts.sent} sent, {counts.failed} failed, {counts.blocked} blocked{cancelled}, "
            f"{counts.unsettled} pending of {counts.total}")


@dataclass(frozen=True)
class RateSample:
    """Settled deliveries at a moment, for the sending rate."""

    at: datetime
    settled: int
    rate: float = 0.0


def next_rate(previous: RateSample | None, settled: int, now: datetime) -> RateSample:
    """The smoothed rate (deliveries per second) after a new sample."""
    if previous is None or now <= previous.at or settled < previous.settled:
        return RateSample(now, settled, previous.rate if previous else 0.0)
    instant = (settled - previous.settled) / (now - previous.at).total_seconds()
    smoothed = instant if previous.rate == 0.0 else 0.5 * instant + 0.5 * previous.rate
    return RateSample(now, settled, smoothed)


def campaign_conditions(decision: Decision, *, drift: bool, stopping: int = 0) -> list[Condition]:
    """Ready, Progressing, Complete and Failed from the decision; SpecDrift when the spec was edited.

    `stopping`: deliveries still held by senders after a cancel; Progressing stays True until they
    settle or are given back.
    """
    phase, reason, message = decision.phase, decision.reason, decision.message
    progressing = Condition.of(ConditionType.PROGRESSING, phase is Phase.SENDING, reason, message)
    if stopping:
        progressing = Condition.of(ConditionType.PROGRESSING, True, Reason.SENDERS_STOPPING,
                                   f"cancelled; {stopping} deliveries were still being sent")
    conds = [
        Condition.of(ConditionType.READY, phase not in (Phase.FAILED, Phase.CANCELLED), reason, message),
        progressing,
        Condition.of(ConditionType.COMPLETE, phase in (Phase.COMPLETED, Phase.PARTIALLY_FAILED), reason,
                     message),
        Condition.of(ConditionType.FAILED, phase is Phase.FAILED, reason, message),
    ]
    if drift:
        conds.append(Condition.of(
            ConditionType.SPEC_DRIFT, True, Reason.EDITED_AFTER_START,
            "spec.message or spec.audience changed after sending started; the edit is ignored and "
            "the original message is sent to the original audience"))
    return conds


#: A stalled campaign's rate decays towards 0; past this its ETA says nothing (and would overflow).
MAX_ETA = timedelta(days=365)


def campaign_status(old: BroadcastCampaignStatus, spec: BroadcastCampaignSpec, decision: Decision,
                    row: CampaignRow | None, counts: CampaignCounts, *, job_name: str | None, drift: bool,
                    rate: float, generation: int | None, now: datetime) -> BroadcastCampaignStatus:
    """The whole status after a pass: phase, conditions, counts, progress, rate, ETA, run facts."""
    stopping = counts.sending if decision.phase is Phase.CANCELLED else 0
    fresh = campaign_conditions(decision, drift=drift, stopping=stopping)
    conditions = merge_conditions(old.conditions, fresh, generation=generation, now=now)
    status = BroadcastCampaignStatus(
        phase=decision.phase, message=decision.message, observed_generation=generation,
        conditions=conditions, scheduled_at=spec.start_at)
    if row is None:
        return status
    sending = decision.phase is Phase.SENDING
    eta = None
    if sending and rate > 0 and counts.unsettled and counts.unsettled / rate <= MAX_ETA.total_seconds():
        eta = now + timedelta(seconds=counts.unsettled / rate)
    return status.model_copy(update={
        "total": counts.total, "sent": counts.sent, "failed": counts.failed, "blocked": counts.blocked,
        "cancelled": counts.cancelled, "pending": counts.unsettled,
        "progress": 100 if counts.total == 0 else (100 * counts.settled) // counts.total,
        "rate_per_second": round(rate, 2) if sending else 0.0, "eta": eta,
        "started_at": row.started_at, "completed_at": row.completed_at, "job_name": job_name,
        "run": row.run, "retry_failed_observed": row.retry_observed,
    })
