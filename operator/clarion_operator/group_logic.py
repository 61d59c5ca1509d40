"""ManagedGroup decisions without I/O: the admin rights a spec needs, the conditions and the status a
pass ends with, the lifecycle phase (`decide_phase`), which maintenance work is due, and the dry run's
Event (ADR 0010). Scheduled posts: `group_schedule`.

A pass observes (the channel's row, getChatMember on the bot itself, getChat, getChatMemberCount
when due, the member rows' counts) and hands the observations here:

    channel missing / not telegram / not Ready  -> ChannelReady=False, BotHasRights=Unknown, Ready=False
    chat run by another ManagedGroup             -> ChannelReady=True, Ready=False (ChatTaken)
    bot not an administrator / a right missing   -> BotHasRights=False naming each right, Ready=False
    Telegram unreachable                         -> BotHasRights=Unknown, Ready keeps no promise (False)
    otherwise                                    -> BotHasRights=True, Ready=True; maintenance is enqueued
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from clarion.db.groups import GroupActivity
from clarion.models import (
    Condition,
    ConditionType,
    GroupPhase,
    GroupReason,
    Lifecycle,
    ManagedGroupSpec,
    ManagedGroupStatus,
    merge_conditions,
)
from clarion.models.base import ConditionStatus
from clarion.streams import GroupTaskKind

INVITE = "can_invite_users"
RESTRICT = "can_restrict_members"
DELETE = "can_delete_messages"
PIN = "can_pin_messages"


def required_rights(spec: ManagedGroupSpec) -> dict[str, str]:
    """Each administrator right the spec's policies need, with what it is needed for (in check order).

    can_invite_users always: every join policy decides requests (approve/declineChatJoinRequest) and
    the growth phase makes invite links; can_restrict_members for inactivity removal (ban, unban);
    can_delete_messages for a welcome message deleted after a while; can_pin_messages for a scheduled
    post with pin.
    """
    needed = {INVITE: f"join requests (policy {spec.join_requests.policy}) and invite links"}
    if spec.inactivity is not None:
        needed[RESTRICT] = "removing inactive members"
    welcome = spec.welcome_message
    if welcome is not None and welcome.delete_after_seconds is not None:
        needed[DELETE] = "deleting the welcome message"
    if any(post.pin for post in spec.scheduled_posts):
        needed[PIN] = "pinning scheduled posts"
    return needed


@dataclass(frozen=True)
class Check:
    """Outcome of one check, as the condition it becomes (Unknown: it could not be decided)."""

    status: ConditionStatus
    reason: GroupReason
    message: str

    @classmethod
    def passed(cls, reason: GroupReason, message: str) -> Check:
        return cls("True", reason, message)

    @classmethod
    def failed(cls, reason: GroupReason, message: str) -> Check:
        return cls("False", reason, message)

    @classmethod
    def undecided(cls, reason: GroupReason, message: str) -> Check:
        return cls("Unknown", reason, message)

    @property
    def ok(self) -> bool:
        return self.status == "True"

    def condition(self, type_: ConditionType) -> Condition:
        return Condition.of(type_, self.status, self.reason, self.message)


def _named(rights: Mapping[str, str], names: list[str]) -> str:
    return ", ".join(f"{name} ({rights[name]})" for name in names)


def rights_check(spec: ManagedGroupSpec, member: Mapping[str, Any]) -> Check:
    """BotHasRights from getChatMember's answer about the bot itself (a ChatMember object)."""
    needed = required_rights(spec)
    status = str(member.get("status"))
    chat = spec.chat_id
    if status == "creator":
        return Check.passed(GroupReason.RIGHTS_GRANTED, f"the bot owns chat {chat}")
    if status != "administrator":
        return Check.failed(GroupReason.NOT_ADMINISTRATOR,
                            f"the bot is not an administrator of chat {chat} (status {status}); make it one "
                            f"with {_named(needed, list(needed))}")
    missing = [right for right in needed if member.get(right) is not True]
    if missing:
        return Check.failed(GroupReason.MISSING_RIGHTS,
                            f"the bot is an administrator of chat {chat} without {_named(needed, missing)}")
    return Check.passed(GroupReason.RIGHTS_GRANTED,
                        f"the bot is an administrator of chat {chat} with {', '.join(needed)}")


def group_conditions(channel: Check, rights: Check | None, taken: Check | None = None) -> list[Condition]:
    """ChannelReady, BotHasRights and the Ready summary (last). `rights` is None when the channel was
    not usable, so nobody asked Telegram; `taken` is the ChatTaken refusal of the row."""
    if rights is None:
        rights = Check.undecided(GroupReason.NOT_CHECKED, "waiting for the channel to be Ready")
    conds = [channel.condition(ConditionType.CHANNEL_READY), rights.condition(ConditionType.BOT_HAS_RIGHTS)]
    failing = next((c for c in (channel, taken, rights) if c is not None and not c.ok), None)
    if failing is None:
        conds.append(Condition.of(ConditionType.READY, True, GroupReason.GROUP_READY, rights.message))
    else:
        conds.append(Condition.of(ConditionType.READY, False, failing.reason, failing.message))
    return conds


@dataclass(frozen=True)
class CountSample:
    """A member count as read at `at` (a `group_member_counts` row)."""

    at: datetime
    member_count: int


@dataclass(frozen=True)
class PhaseObservation:
    """What the phase decision reads: the row's phase and since when, the member count now, and the
    oldest count recorded within the last growthWindowDays (None: none recorded)."""

    phase: GroupPhase | None
    since: datetime
    member_count: int | None
    window_start: CountSample | None = None


@dataclass(frozen=True)
class PhaseDecision:
    phase: GroupPhase
    changed_because: str | None = None
    """Why the phase moved this pass (the Event's message); None when it stayed."""


SAMPLE_SLACK = timedelta(hours=1)
"""Counts are recorded at most hourly: a window's oldest count may be this much younger than the window."""


def _days(delta: timedelta) -> float:
    return delta.total_seconds() / 86400


def _growth_ended(lifecycle: Lifecycle, seen: PhaseObservation, now: datetime) -> str | None:
    """The first Growth threshold reached, with its figures; None while none is."""
    count = seen.member_count
    target = lifecycle.growth_until_members
    if target is not None and count is not None and count >= target:
        return f"{count} members reached growthUntilMembers ({target})"
    until = lifecycle.growth_until
    if until is not None and seen.since < until <= now:
        return f"growthUntil ({until.isoformat()}) has passed"
    in_growth = now - seen.since
    if lifecycle.growth_for_days is not None and in_growth >= timedelta(days=lifecycle.growth_for_days):
        return f"{_days(in_growth):.1f} days in Growth reached growthForDays ({lifecycle.growth_for_days})"
    floor, window = lifecycle.min_growth_per_day, timedelta(days=lifecycle.growth_window_days)
    sample = seen.window_start
    if (floor is not None and count is not None and sample is not None and in_growth >= window
            and now - sample.at >= window - SAMPLE_SLACK):
        rate = (count - sample.member_count) / _days(now - sample.at)
        if rate < floor:
            return (f"grew {rate:.2f} members/day over the last {_days(now - sample.at):.1f} days "
                    f"({sample.member_count} -> {count}), below minGrowthPerDay ({floor:g})")
    return None


def decide_phase(spec: ManagedGroupSpec, seen: PhaseObservation, now: datetime) -> PhaseDecision:
    """The phase after this pass; at most one move per pass.

        Growth     -> Monitoring  the first Growth threshold reached, in this order:
                                  memberCount >= growthUntilMembers;
                                  growthUntil passed (only for a Growth phase that began before it, so a
                                  group that regrew later is not sent straight back);
                                  growthForDays in Growth (since phase_since);
                                  growth over the last growthWindowDays below minGrowthPerDay (measured
                                  only once the phase has lasted a full window, from the oldest count
                                  recorded in it)
        Monitoring -> Growth      memberCount < regrowBelowMembers
        otherwise                 stays

    A group without a phase yet starts in spec.lifecycle.phase; a later edit of that field does not
    move a running group.
    """
    lifecycle = spec.lifecycle
    phase: GroupPhase = seen.phase or lifecycle.phase
    if phase == "Growth":
        reached = _growth_ended(lifecycle, seen, now)
        return PhaseDecision("Monitoring", reached) if reached else PhaseDecision(phase)
    floor, count = lifecycle.regrow_below_members, seen.member_count
    if floor is not None and count is not None and count < floor:
        return PhaseDecision("Growth", f"{count} members fell below regrowBelowMembers ({floor})")
    return PhaseDecision(phase)


def member_count_due(read_at: datetime | None, *, period_seconds: float, now: datetime) -> bool:
    """Whether getChatMemberCount should be asked again."""
    return read_at is None or now - read_at >= timedelta(seconds=period_seconds)


@dataclass(frozen=True)
class DueTask:
    kind: GroupTaskKind
    slot: int
    period_seconds: float


def period_start(since: datetime, period_seconds: float, now: datetime) -> int:
    """Unix time (s) at which the period holding `now` began, periods counted from `since`."""
    elapsed = max(0.0, (now - since).total_seconds())
    return int(since.timestamp() + elapsed // period_seconds * period_seconds)


def due_tasks(spec: ManagedGroupSpec, phase: GroupPhase, phase_since: datetime, *,
              inactivity_sweep_seconds: float, now: datetime) -> list[DueTask]:
    """The maintenance tasks of this period: one per kind that applies, its slot the Unix time its
    period began, so every tick of one period names the same task and only the first is added.

    rotate-invite with spec.inviteLinks, in both phases, every inviteLinks.rotateEveryHours;
    inactivity-sweep in Monitoring with spec.inactivity (a dry run too: the worker then lists), every
    `inactivity_sweep_seconds`. Periods are counted from phase_since, so entering a phase starts a
    new period of each kind at once: the link changes with the phase (Growth's admits, Monitoring's
    asks to join) and Monitoring sweeps right away. Slots only grow across phases, which is what the
    worker's "a link only for a later slot" check needs.
    """
    kinds: list[tuple[GroupTaskKind, float]] = []
    if spec.invite_links is not None:
        kinds.append((GroupTaskKind.ROTATE_INVITE, spec.invite_links.rotate_every_hours * 3600.0))
    if phase == "Monitoring" and spec.inactivity is not None:
        kinds.append((GroupTaskKind.INACTIVITY_SWEEP, inactivity_sweep_seconds))
    return [DueTask(kind, period_start(phase_since, period, now), period) for kind, period in kinds]


@dataclass(frozen=True)
class Recorded:
    """What the row holds beyond the phase: when the phase began, the workers' invite link and dry run."""

    phase_since: datetime | None = None
    invite_link: str | None = None
    invite_link_expires_at: datetime | None = None
    dry_run_candidates: list[int] | None = None
    dry_run_candidate_count: int | None = None


def dry_run_news(spec: ManagedGroupSpec, old: ManagedGroupStatus, new: ManagedGroupStatus) -> str | None:
    """The DryRun Event's message when the dry run's list changed; None when it did not (or no dry run)."""
    inactivity = spec.inactivity
    if inactivity is None or not inactivity.dry_run or new.dry_run_candidate_count is None:
        return None
    if (old.dry_run_candidates, old.dry_run_candidate_count) == (new.dry_run_candidates,
                                                                  new.dry_run_candidate_count):
        return None
    ids = ", ".join(str(user) for user in new.dry_run_candidates or [])
    more = new.dry_run_candidate_count - len(new.dry_run_candidates or [])
    listed = f": {ids}" + (f" and {more} more" if more > 0 else "") if ids else ""
    return f"would remove {new.dry_run_candidate_count} members{listed}"


def group_status(old: ManagedGroupStatus, conditions: list[Condition], *, spec: ManagedGroupSpec,
                 phase: GroupPhase | None, title: str | None, member_count: int | None,
                 activity: GroupActivity | None, recorded: Recorded | None, generation: int | None,
                 now: datetime) -> ManagedGroupStatus:
    """The status after a pass; what the pass could not learn (Telegram or the channel down) is kept.

    The dry run's list shows only while spec.inactivity.dryRun is set; the invite link only while
    spec.inviteLinks is.
    """
    update: dict[str, Any] = {
        "conditions": merge_conditions(old.conditions, conditions, generation=generation, now=now),
        "observed_generation": generation,
        "phase": phase or old.phase,
        "title": title if title is not None else old.title,
        "member_count": member_count if member_count is not None else old.member_count,
        "target_members": spec.lifecycle.growth_until_members,
    }
    if activity is not None:
        update |= {
            "pending_join_requests": activity.pending_join_requests,
            "warned_members": activity.warned_members,
            "removed_members": activity.removed_members,
            "last_activity_at": _seconds(activity.last_activity_at),
        }
    if recorded is not None:
        dry_run = spec.inactivity is not None and spec.inactivity.dry_run
        links = spec.invite_links is not None
        update |= {
            "phase_since": _seconds(recorded.phase_since),
            "invite_link": recorded.invite_link if links else None,
            "invite_link_expires_at": _seconds(recorded.invite_link_expires_at) if links else None,
            "dry_run_candidates": (recorded.dry_run_candidates or [])[:100]
            if dry_run and recorded.dry_run_candidate_count is not None else None,
            "dry_run_candidate_count": recorded.dry_run_candidate_count if dry_run else None,
        }
    return old.model_copy(update=update)


def _seconds(moment: datetime | None) -> datetime | None:
    return moment.replace(microsecond=0) if moment is not None else None
