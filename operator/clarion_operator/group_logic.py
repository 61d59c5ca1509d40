"""ManagedGroup decisions without I/O: the admin rights a spec needs, the conditions and the status a
pass ends with, the lifecycle phase, and which maintenance work is due (ADR 0010).

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
    ManagedGroupSpec,
    ManagedGroupStatus,
    merge_conditions,
)
from clarion.models.base import ConditionStatus
from clarion.streams import GroupTaskKind

INVITE = "can_invite_users"
RESTRICT = "can_restrict_members"
DELETE = "can_delete_messages"


def required_rights(spec: ManagedGroupSpec) -> dict[str, str]:
    """Each administrator right the spec's policies need, with what it is needed for (in check order).

    can_invite_users always: every join policy decides requests (approve/declineChatJoinRequest) and
    the growth phase makes invite links; can_restrict_members for inactivity removal (ban, unban);
    can_delete_messages for a welcome message deleted after a while.
    """
    needed = {INVITE: f"join requests (policy {spec.join_requests.policy}) and invite links"}
    if spec.inactivity is not None:
        needed[RESTRICT] = "removing inactive members"
    welcome = spec.welcome_message
    if welcome is not None and welcome.delete_after_seconds is not None:
        needed[DELETE] = "deleting the welcome message"
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
class PhaseDecision:
    phase: GroupPhase
    changed_because: str | None = None
    """Why the phase moved this pass (the Event's message); None when it stayed."""


def decide_phase(spec: ManagedGroupSpec, current: GroupPhase | None, member_count: int | None,
                 now: datetime) -> PhaseDecision:
    """Growth -> Monitoring at growthUntilMembers members or at growthUntil, whichever comes first.

    A group without a phase yet starts in spec.lifecycle.phase; a later edit of that field does not
    move a running group.
    """
    lifecycle = spec.lifecycle
    phase: GroupPhase = current or lifecycle.phase
    if phase != "Growth":
        return PhaseDecision(phase)
    target = lifecycle.growth_until_members
    if target is not None and member_count is not None and member_count >= target:
        return PhaseDecision("Monitoring", f"{member_count} members reached growthUntilMembers ({target})")
    if lifecycle.growth_until is not None and now >= lifecycle.growth_until:
        return PhaseDecision("Monitoring", "growthUntil has passed")
    return PhaseDecision(phase)


def member_count_due(read_at: datetime | None, *, period_seconds: float, now: datetime) -> bool:
    """Whether getChatMemberCount should be asked again."""
    return read_at is None or now - read_at >= timedelta(seconds=period_seconds)


@dataclass(frozen=True)
class Periods:
    """Seconds between two maintenance tasks of each kind (operator settings)."""

    inactivity_sweep: float
    rotate_invite: float
    join_request_sweep: float


@dataclass(frozen=True)
class DueTask:
    kind: GroupTaskKind
    slot: int
    period_seconds: float


def due_tasks(spec: ManagedGroupSpec, phase: GroupPhase, periods: Periods, now: datetime) -> list[DueTask]:
    """The maintenance tasks of this period: one per kind that applies, keyed by its period's slot
    (floor(now / period)), so every tick of one period names the same task and only the first is added.

    inactivity-sweep in Monitoring with an inactivity policy; rotate-invite in Growth; join-request-sweep
    with the rules policy (its DM question has a deadline).
    """
    kinds: list[tuple[GroupTaskKind, float]] = []
    if phase == "Monitoring" and spec.inactivity is not None:
        kinds.append((GroupTaskKind.INACTIVITY_SWEEP, periods.inactivity_sweep))
    if phase == "Growth":
        kinds.append((GroupTaskKind.ROTATE_INVITE, periods.rotate_invite))
    if spec.join_requests.policy == "rules":
        kinds.append((GroupTaskKind.JOIN_REQUEST_SWEEP, periods.join_request_sweep))
    stamp = now.timestamp()
    return [DueTask(kind, int(stamp // period), period) for kind, period in kinds]


def group_status(old: ManagedGroupStatus, conditions: list[Condition], *, phase: GroupPhase | None,
                 title: str | None, member_count: int | None, activity: GroupActivity | None,
                 generation: int | None, now: datetime) -> ManagedGroupStatus:
    """The status after a pass; what the pass could not learn (Telegram or the channel down) is kept."""
    update: dict[str, Any] = {
        "conditions": merge_conditions(old.conditions, conditions, generation=generation, now=now),
        "observed_generation": generation,
        "phase": phase or old.phase,
        "title": title if title is not None else old.title,
        "member_count": member_count if member_count is not None else old.member_count,
    }
    if activity is not None:
        update |= {
            "pending_join_requests": activity.pending_join_requests,
            "warned_members": activity.warned_members,
            "removed_members": activity.removed_members,
            "last_activity_at": activity.last_activity_at.replace(microsecond=0)
            if activity.last_activity_at is not None else None,
        }
    return old.model_copy(update=update)
