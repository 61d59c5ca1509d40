"""BroadcastCampaign decisions without I/O: start time, phase and next action, status figures.

States and actions (see docs/operator.md for the diagram):

    no campaigns row: Draft (suspend) | Scheduled (waiting for the time or the channel) | Cancelled
                      | Failed (channel never became usable)  -> START when due
    row phase Sending: Paused (SUSPEND) | Cancelled (CANCEL) | settled -> FINISH
                       | Job missing -> CREATE_JOB | Job suspended -> RESUME
                       | Job failed -> FAIL | Job completed early -> RECOVER (new run)
    row phase Paused:  resume -> RESUME | cancel -> CANCEL
    terminal:          retryFailed bumped -> RETRY (new run) or NOTE_RETRY when nothing is left to send
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from clarion.models.campaign import parse_schedule_time

from clarion_operator.conditions import condition

TERMINAL = frozenset({"Completed", "PartiallyFailed", "Failed", "Cancelled"})
CANCEL_SETTLING = timedelta(seconds=60)
EDIT_CONDITION = "SpecDrift"


class Action(enum.Enum):
    NONE = "none"
    START = "start"
    CREATE_JOB = "create-job"
    SUSPEND = "suspend"
    RESUME = "resume"
    CANCEL = "cancel"
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
class Counts:
    """Deliveries of a campaign by status."""

    total: int = 0
    pending: int = 0
    sending: int = 0
    sent: int = 0
    failed: int = 0
    blocked: int = 0

    @property
    def unsettled(self) -> int:
        return self.pending + self.sending

    @property
    def settled(self) -> int:
        return self.sent + self.failed + self.blocked


@dataclass(frozen=True)
class CampaignRow:
    """The campaign's row in Postgres: what the operator started with."""

    id: int
    run: int
    phase: str
    total: int
    shards: int
    message_hash: str
    started_at: datetime | None
    completed_at: datetime | None
    retry_observed: int
    recovery_runs: int


@dataclass(frozen=True)
class Intent:
    """The parts of the spec that steer the lifecycle."""

    suspend: bool
    cancel: bool
    retry_failed: int
    start_at: datetime | None
    message_hash: str


@dataclass(frozen=True)
class Observed:
    """What the operator saw: its row, the delivery counts, the current run's Job, the channel."""

    status_phase: str | None
    row: CampaignRow | None
    counts: Counts
    job: JobState
    channel_ready: bool
    due_since: datetime


@dataclass(frozen=True)
class Decision:
    phase: str
    action: Action
    reason: str
    message: str


def intent_of(spec: dict[str, Any]) -> Intent:
    """The lifecycle switches of a BroadcastCampaign spec (camelCase dict, as the API server holds it)."""
    return Intent(
        suspend=bool(spec.get("suspend", False)),
        cancel=bool(spec.get("cancel", False)),
        retry_failed=int(spec.get("retryFailed") or 0),
        start_at=start_time(spec.get("schedule")),
        message_hash=message_hash(spec),
    )


def start_time(schedule: dict[str, Any] | None) -> datetime | None:
    """When sending starts, in UTC: a local `at` is read in `timeZone`, an offset in `at` wins."""
    if not schedule or not schedule.get("at"):
        return None
    return parse_schedule_time(str(schedule["at"]), str(schedule.get("timeZone") or "UTC"))


def message_hash(spec: dict[str, Any]) -> str:
    """sha256 of the message and audience as started: a later edit shows as a different hash."""
    frozen = {"message": spec.get("message"), "audience": spec.get("audience")}
    return hashlib.sha256(json.dumps(frozen, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def outcome(counts: Counts) -> str:
    """The final phase of a settled campaign: any failure makes it PartiallyFailed, Failed if none got out."""
    if counts.failed == 0:
        return "Completed"
    if counts.sent + counts.blocked == 0:
        return "Failed"
    return "PartiallyFailed"


def job_state(job: dict[str, Any] | None) -> JobState:
    """The state of a Job object read from the API."""
    if job is None:
        return JobState.ABSENT
    for cond in (job.get("status") or {}).get("conditions") or ():
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return JobState.SUCCEEDED
        if cond.get("type") == "Failed":
            return JobState.FAILED
    if (job.get("spec") or {}).get("suspend"):
        return JobState.SUSPENDED
    return JobState.ACTIVE


def decide(intent: Intent, seen: Observed, *, now: datetime, channel_wait: timedelta,
           max_recovery_runs: int) -> Decision:
    """What phase the campaign is in and the one action that moves it toward the spec."""
    row = seen.row
    if row is None:
        return _before_start(intent, seen, now=now, channel_wait=channel_wait)
    counts = seen.counts
    if row.phase in TERMINAL:
        if row.phase != "Cancelled" and intent.retry_failed > row.retry_observed:
            if counts.failed or counts.unsettled:
                return Decision("Sending", Action.RETRY, "RetryingFailed",
                                f"re-sending {counts.failed} failed and {counts.unsettled} unsent deliveries")
            return Decision(row.phase, Action.NOTE_RETRY, "NothingToRetry", "no failed deliveries to re-send")
        return Decision(row.phase, Action.NONE, row.phase, _summary(counts))
    if intent.cancel:
        return Decision("Cancelled", Action.CANCEL, "Cancelled",
                        f"cancelled; {counts.unsettled} deliveries left unsent")
    if counts.unsettled == 0:
        final = outcome(counts)
        return Decision(final, Action.FINISH, final, _summary(counts))
    if row.phase == "Paused":
        if not intent.suspend:
            return Decision("Sending", Action.RESUME, "Resumed", "sending resumed")
        if seen.job is JobState.ACTIVE:
            return Decision("Paused", Action.SUSPEND, "Paused", "suspending the sender Job")
        return Decision("Paused", Action.NONE, "Paused", f"paused with {counts.unsettled} deliveries unsent")
    if intent.suspend:
        return Decision("Paused", Action.SUSPEND, "Paused", "suspend requested while sending")
    if seen.job is JobState.ABSENT:
        return Decision("Sending", Action.CREATE_JOB, "Sending", f"starting sender Job for run {row.run}")
    if seen.job is JobState.SUSPENDED:
        return Decision("Sending", Action.RESUME, "Sending", "resuming the sender Job")
    if seen.job is JobState.FAILED:
        return Decision("Failed", Action.FAIL, "SenderJobFailed",
                        f"the sender Job failed with {counts.unsettled} deliveries unsent; "
                        "bump spec.retryFailed to send them")
    if seen.job is JobState.SUCCEEDED:
        if row.recovery_runs < max_recovery_runs:
            return Decision("Sending", Action.RECOVER, "SendersRestarted",
                            f"the sender Job ended with {counts.unsettled} deliveries unsent; "
                            f"starting run {row.run + 1}")
        return Decision("Failed", Action.FAIL, "SendersStopped",
                        f"sender Jobs kept ending with {counts.unsettled} deliveries unsent")
    return Decision("Sending", Action.NONE, "Sending", _summary(counts))


def _before_start(intent: Intent, seen: Observed, *, now: datetime, channel_wait: timedelta) -> Decision:
    if seen.status_phase in TERMINAL:
        return Decision(seen.status_phase, Action.NONE, seen.status_phase, "finished before it started")
    if intent.cancel:
        return Decision("Cancelled", Action.NONE, "Cancelled", "cancelled before it started")
    if intent.suspend:
        return Decision("Draft", Action.NONE, "Suspended", "spec.suspend is true; nothing is sent")
    if intent.start_at is not None and now < intent.start_at:
        return Decision("Scheduled", Action.NONE, "WaitingForStartTime",
                        f"sending starts at {intent.start_at.isoformat()}")
    if not seen.channel_ready:
        if now - seen.due_since > channel_wait:
            return Decision("Failed", Action.NONE, "ChannelNotReady",
                            "the channel did not become Ready in time; nothing was sent")
        return Decision("Scheduled", Action.NONE, "WaitingForChannel",
                        "waiting for the channel to become Ready")
    return Decision("Sending", Action.START, "Started", "audience snapshot taken, sender Job created")


def _summary(counts: Counts) -> str:
    return (f"{counts.sent} sent, {counts.failed} failed, {counts.blocked} blocked, "
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


def progress_status(counts: Counts, rate: float, *, sending: bool, now: datetime) -> dict[str, Any]:
    """Counts, progress %, rate and ETA as they appear in status."""
    progress = 100 if counts.total == 0 else (100 * counts.settled) // counts.total
    figures: dict[str, Any] = {
        "total": counts.total,
        "sent": counts.sent,
        "failed": counts.failed,
        "blocked": counts.blocked,
        "pending": counts.unsettled,
        "progress": progress,
        "ratePerSecond": round(rate, 2) if sending else 0.0,
        "eta": None,
    }
    if sending and rate > 0 and counts.unsettled:
        eta = now + timedelta(seconds=counts.unsettled / rate)
        figures["eta"] = eta.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return figures


def in_flight_after_cancel(phase: str, counts: Counts, completed_at: datetime | None, now: datetime) -> bool:
    """A cancelled campaign whose senders still hold deliveries (for at most CANCEL_SETTLING after the
    cancel): its figures still move, so status keeps following them."""
    return (phase == "Cancelled" and counts.sending > 0 and completed_at is not None
            and now - completed_at < CANCEL_SETTLING)


def campaign_conditions(decision: Decision, *, drift: bool, stopping: int = 0) -> list[dict[str, Any]]:
    """Ready, Progressing, Complete and Failed from the decision; SpecDrift when the spec was edited.

    `stopping`: deliveries still being sent after a cancel; Progressing stays True until they settle.
    """
    phase = decision.phase
    progressing = condition("Progressing", phase == "Sending", decision.reason, decision.message)
    if stopping:
        progressing = condition("Progressing", True, "SendersStopping",
                                f"cancelled; {stopping} deliveries were still being sent")
    conds = [
        condition("Ready", phase not in {"Failed", "Cancelled"}, decision.reason, decision.message),
        progressing,
        condition("Complete", phase in {"Completed", "PartiallyFailed"}, decision.reason, decision.message),
        condition("Failed", phase == "Failed", decision.reason, decision.message),
    ]
    if drift:
        conds.append(condition(
            EDIT_CONDITION, True, "EditedAfterStart",
            "spec.message or spec.audience changed after sending started; the edit is ignored and "
            "the original message is sent to the original audience"))
    return conds
