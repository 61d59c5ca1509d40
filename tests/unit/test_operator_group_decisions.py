"""ManagedGroup decisions (clarion_operator.group_logic): rights, conditions, phase, due maintenance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from clarion.db.groups import GroupActivity
from clarion.models import GroupReason, ManagedGroupSpec, ManagedGroupStatus
from clarion.streams import GroupTaskKind
from clarion_operator.group_logic import (
    Check,
    CountSample,
    DueTask,
    PhaseObservation,
    Recorded,
    decide_phase,
    dry_run_news,
    due_tasks,
    group_conditions,
    group_status,
    member_count_due,
    required_rights,
    rights_check,
)

pytestmark = pytest.mark.unit

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CHAT = -1001234567890


def _spec(**extra: Any) -> ManagedGroupSpec:
    return ManagedGroupSpec.model_validate({"channelRef": {"name": "community"}, "chatId": CHAT, **extra})


FULL = _spec(inactivity={"warnAfterDays": 10, "removeAfterDays": 20},
             welcomeMessage={"text": "Hi {name}", "deleteAfterSeconds": 60})


def _admin(**rights: bool) -> dict[str, Any]:
    return {"status": "administrator", "user": {"id": 1, "is_bot": True, "first_name": "bot"}, **rights}


def test_rights_follow_the_policies_of_the_spec() -> None:
    assert list(required_rights(_spec())) == ["can_invite_users"]
    assert list(required_rights(FULL)) == ["can_invite_users", "can_restrict_members", "can_delete_messages"]
    no_deletion = _spec(welcomeMessage={"text": "Hi"})
    assert "can_delete_messages" not in required_rights(no_deletion)
    pinned = _spec(scheduledPosts=[{"name": "rules", "cron": "0 9 * * 1", "text": "Read them", "pin": True}])
    assert required_rights(pinned)["can_pin_messages"] == "pinning scheduled posts"


def test_every_missing_right_is_named_with_what_needs_it() -> None:
    check = rights_check(FULL, _admin(can_invite_users=True, can_restrict_members=False))
    assert (check.status, check.reason) == ("False", GroupReason.MISSING_RIGHTS)
    assert "can_restrict_members (removing inactive members)" in check.message
    assert "can_delete_messages (deleting the welcome message)" in check.message
    assert "can_invite_users" not in check.message.split("without")[1]


def test_a_bot_that_is_no_administrator_is_told_every_right_it_needs() -> None:
    check = rights_check(FULL, {"status": "member", "user": {"id": 1}})
    assert (check.status, check.reason) == ("False", GroupReason.NOT_ADMINISTRATOR)
    assert all(right in check.message for right in required_rights(FULL))


def test_an_administrator_with_the_rights_or_the_owner_passes() -> None:
    granted = rights_check(FULL, _admin(can_invite_users=True, can_restrict_members=True,
                                        can_delete_messages=True))
    assert granted.ok and granted.reason == GroupReason.RIGHTS_GRANTED
    assert rights_check(FULL, {"status": "creator"}).ok


def test_ready_needs_the_channel_and_the_rights_and_says_what_fails_first() -> None:
    channel = Check.passed(GroupReason.CHANNEL_READY, "ready")
    rights = Check.passed(GroupReason.RIGHTS_GRANTED, "all there")
    ready = group_conditions(channel, rights)
    assert [(c.type, c.status) for c in ready] == [("ChannelReady", "True"), ("BotHasRights", "True"),
                                                   ("Ready", "True")]
    missing = Check.failed(GroupReason.CHANNEL_NOT_FOUND, "NotificationChannel ns/x does not exist")
    waiting = group_conditions(missing, None)
    assert [(c.type, c.status, c.reason) for c in waiting] == [
        ("ChannelReady", "False", "ChannelNotFound"), ("BotHasRights", "Unknown", "NotChecked"),
        ("Ready", "False", "ChannelNotFound")]
    taken = Check.failed(GroupReason.CHAT_TAKEN, "chat is run by another group")
    assert group_conditions(channel, None, taken)[-1].reason == GroupReason.CHAT_TAKEN
    lacking = Check.failed(GroupReason.MISSING_RIGHTS, "without can_invite_users")
    assert group_conditions(channel, lacking)[-1].message == "without can_invite_users"


def _seen(phase: str | None, count: int | None, *, days_in_phase: float = 1,
          window_start: tuple[float, int] | None = None) -> PhaseObservation:
    sample = CountSample(NOW - timedelta(days=window_start[0]), window_start[1]) if window_start else None
    return PhaseObservation(phase, NOW - timedelta(days=days_in_phase), count, sample)  # type: ignore[arg-type]


# (lifecycle, observation, expected phase, the Event's reason contains)
PHASES: list[tuple[dict[str, Any], PhaseObservation, str, str | None]] = [
    # a group without a phase starts in the spec's
    ({"growthUntilMembers": 100}, _seen(None, 10), "Growth", None),
    ({"phase": "Monitoring"}, _seen(None, None), "Monitoring", None),
    # growthUntilMembers
    ({"growthUntilMembers": 100}, _seen("Growth", 99), "Growth", None),
    ({"growthUntilMembers": 100}, _seen("Growth", 100), "Monitoring",
     "100 members reached growthUntilMembers (100)"),
    ({"growthUntilMembers": 100}, _seen("Growth", None), "Growth", None),
    # growthUntil: only for a Growth phase that began before it
    ({"growthUntil": "2025-02-01T00:00:00Z"}, _seen("Growth", 5, days_in_phase=40), "Monitoring",
     "growthUntil (2025-02-01T00:00:00+00:00) has passed"),
    ({"growthUntil": "2025-03-02T00:00:00Z"}, _seen("Growth", 5, days_in_phase=40), "Growth", None),
    ({"growthUntil": "2025-02-01T00:00:00Z"}, _seen("Growth", 5, days_in_phase=2), "Growth", None),
    # growthForDays, from phase_since
    ({"growthForDays": 30}, _seen("Growth", 5, days_in_phase=29.9), "Growth", None),
    ({"growthForDays": 30}, _seen("Growth", 5, days_in_phase=30), "Monitoring",
     "30.0 days in Growth reached growthForDays (30)"),
    # minGrowthPerDay over growthWindowDays (7): 40 -> 43 in 7 days is 0.43/day
    ({"minGrowthPerDay": 1}, _seen("Growth", 43, days_in_phase=8, window_start=(7, 40)), "Monitoring",
     "grew 0.43 members/day over the last 7.0 days (40 -> 43), below minGrowthPerDay (1)"),
    ({"minGrowthPerDay": 1}, _seen("Growth", 50, days_in_phase=8, window_start=(7, 40)), "Growth", None),
    # ... measured only once the phase lasted a full window, and over a window's worth of counts
    ({"minGrowthPerDay": 1}, _seen("Growth", 40, days_in_phase=6, window_start=(6, 40)), "Growth", None),
    ({"minGrowthPerDay": 1}, _seen("Growth", 40, days_in_phase=9, window_start=(2, 40)), "Growth", None),
    ({"minGrowthPerDay": 1}, _seen("Growth", 40, days_in_phase=9), "Growth", None),
    ({"minGrowthPerDay": 1}, _seen("Growth", 40, days_in_phase=9, window_start=(6.97, 40)), "Monitoring",
     "below minGrowthPerDay"),
    ({"minGrowthPerDay": 2, "growthWindowDays": 3},
     _seen("Growth", 45, days_in_phase=3, window_start=(3, 40)), "Monitoring",
     "grew 1.67 members/day over the last 3.0 days"),
    # Monitoring -> Growth below regrowBelowMembers
    ({"regrowBelowMembers": 50}, _seen("Monitoring", 50), "Monitoring", None),
    ({"regrowBelowMembers": 50}, _seen("Monitoring", 49), "Growth",
     "49 members fell below regrowBelowMembers (50)"),
    ({"regrowBelowMembers": 50}, _seen("Monitoring", None), "Monitoring", None),
    # no threshold: the phase stays
    ({}, _seen("Growth", 10**5, days_in_phase=1000), "Growth", None),
    ({}, _seen("Monitoring", 0), "Monitoring", None),
]


@pytest.mark.parametrize(("lifecycle", "seen", "phase", "because"), PHASES)
def test_phase_moves_at_its_thresholds_with_the_figures(lifecycle: dict[str, Any], seen: PhaseObservation,
                                                        phase: str, because: str | None) -> None:
    decision = decide_phase(_spec(lifecycle=lifecycle), seen, NOW)
    assert decision.phase == phase
    if because is None:
        assert decision.changed_because is None
    else:
        assert because in (decision.changed_because or "")


def test_a_group_regrown_after_growth_until_is_not_sent_straight_back() -> None:
    spec = _spec(lifecycle={"growthUntil": "2025-02-01T00:00:00Z", "regrowBelowMembers": 10})
    assert decide_phase(spec, _seen("Monitoring", 9), NOW).phase == "Growth"
    regrown = PhaseObservation("Growth", NOW, 9)
    assert decide_phase(spec, regrown, NOW + timedelta(minutes=1)).phase == "Growth"


def test_member_count_is_read_again_after_its_period() -> None:
    assert member_count_due(None, period_seconds=300, now=NOW)
    assert not member_count_due(NOW - timedelta(seconds=299), period_seconds=300, now=NOW)
    assert member_count_due(NOW - timedelta(seconds=300), period_seconds=300, now=NOW)


LINKS = _spec(inactivity={"warnAfterDays": 10, "removeAfterDays": 20}, inviteLinks={"rotateEveryHours": 6})


def _kinds(spec: ManagedGroupSpec, phase: str, since: datetime = NOW, now: datetime = NOW) -> list[str]:
    return [t.kind for t in due_tasks(spec, phase, since, inactivity_sweep_seconds=3600, now=now)]  # type: ignore[arg-type]


def test_due_tasks_depend_on_phase_and_spec() -> None:
    assert _kinds(LINKS, "Growth") == [GroupTaskKind.ROTATE_INVITE]
    assert _kinds(LINKS, "Monitoring") == [GroupTaskKind.ROTATE_INVITE, GroupTaskKind.INACTIVITY_SWEEP]
    assert _kinds(FULL, "Growth") == []  # no inviteLinks: no links made
    assert _kinds(FULL, "Monitoring") == [GroupTaskKind.INACTIVITY_SWEEP]
    dry = _spec(inactivity={"warnAfterDays": 10, "removeAfterDays": 20, "dryRun": True})
    assert _kinds(dry, "Monitoring") == [GroupTaskKind.INACTIVITY_SWEEP]  # the worker lists instead


def test_one_period_names_one_task_and_a_phase_change_starts_new_periods_with_larger_slots() -> None:
    since = NOW - timedelta(hours=13)

    def rotation(phase_since: datetime, now: datetime) -> DueTask:
        return due_tasks(LINKS, "Growth", phase_since, inactivity_sweep_seconds=3600, now=now)[0]

    first = rotation(since, NOW)
    assert first.slot == int((since + timedelta(hours=12)).timestamp()) and first.period_seconds == 6 * 3600
    assert rotation(since, NOW + timedelta(hours=4, minutes=59)).slot == first.slot
    assert rotation(since, NOW + timedelta(hours=5)).slot == first.slot + 6 * 3600
    moved = NOW + timedelta(minutes=30)  # the phase changed: a rotation at once, and later than any before
    assert rotation(moved, moved).slot == int(moved.timestamp()) > first.slot
    sweep = due_tasks(LINKS, "Monitoring", moved, inactivity_sweep_seconds=3600, now=moved)[1]
    assert (sweep.kind, sweep.slot) == (GroupTaskKind.INACTIVITY_SWEEP, int(moved.timestamp()))


def test_status_keeps_what_a_pass_could_not_learn_and_reads_member_activity() -> None:
    old = ManagedGroupStatus(phase="Growth", title="Runners", member_count=42)
    conds = group_conditions(Check.failed(GroupReason.CHANNEL_NOT_READY, "not Ready"), None)
    kept = group_status(old, conds, spec=_spec(), phase="Growth", title=None, member_count=None,
                        activity=None, recorded=None, generation=3, now=NOW)
    assert (kept.title, kept.member_count, kept.observed_generation) == ("Runners", 42, 3)
    seen = NOW - timedelta(minutes=5, microseconds=7)
    fresh = group_status(old, conds, spec=_spec(lifecycle={"growthUntilMembers": 60}), phase="Monitoring",
                         title="Runners club", member_count=50, activity=GroupActivity(2, 1, 4, seen),
                         recorded=Recorded(phase_since=seen), generation=3, now=NOW)
    assert (fresh.phase, fresh.title, fresh.member_count) == ("Monitoring", "Runners club", 50)
    assert (fresh.pending_join_requests, fresh.warned_members, fresh.removed_members) == (2, 1, 4)
    assert fresh.last_activity_at == fresh.phase_since == seen.replace(microsecond=0)
    assert fresh.target_members == 60


DRY = _spec(inactivity={"warnAfterDays": 10, "removeAfterDays": 20, "dryRun": True},
            inviteLinks={"rotateEveryHours": 24})
WORKERS_WROTE = Recorded(phase_since=NOW, invite_link="https://t.me/+abc",
                         invite_link_expires_at=NOW + timedelta(hours=24, microseconds=5),
                         dry_run_candidates=[11, 12], dry_run_candidate_count=2)


def _pass(spec: ManagedGroupSpec, old: ManagedGroupStatus, recorded: Recorded) -> ManagedGroupStatus:
    return group_status(old, [], spec=spec, phase="Monitoring", title=None, member_count=None,
                        activity=None, recorded=recorded, generation=1, now=NOW)


def test_invite_link_and_dry_run_come_from_the_row_only_while_the_spec_asks_for_them() -> None:
    shown = _pass(DRY, ManagedGroupStatus(), WORKERS_WROTE)
    assert shown.invite_link == "https://t.me/+abc"
    assert shown.invite_link_expires_at == NOW + timedelta(hours=24)
    assert (shown.dry_run_candidates, shown.dry_run_candidate_count) == ([11, 12], 2)
    acting = _pass(FULL, shown, WORKERS_WROTE)  # dryRun off, no inviteLinks
    assert (acting.invite_link, acting.invite_link_expires_at) == (None, None)
    assert (acting.dry_run_candidates, acting.dry_run_candidate_count) == (None, None)
    not_run_yet = _pass(DRY, ManagedGroupStatus(), Recorded(phase_since=NOW))
    assert (not_run_yet.dry_run_candidates, not_run_yet.dry_run_candidate_count) == (None, None)


def test_a_dry_run_event_tells_each_new_candidate_list_once() -> None:
    before = ManagedGroupStatus()
    listed = _pass(DRY, before, WORKERS_WROTE)
    assert dry_run_news(DRY, before, listed) == "would remove 2 members: 11, 12"
    assert dry_run_news(DRY, listed, _pass(DRY, listed, WORKERS_WROTE)) is None
    many = Recorded(phase_since=NOW, dry_run_candidates=list(range(1, 101)), dry_run_candidate_count=130)
    news = dry_run_news(DRY, listed, _pass(DRY, listed, many)) or ""
    assert news.startswith("would remove 130 members: 1, 2, 3") and news.endswith("100 and 30 more")
    nobody = Recorded(phase_since=NOW, dry_run_candidates=[], dry_run_candidate_count=0)
    assert dry_run_news(DRY, listed, _pass(DRY, listed, nobody)) == "would remove 0 members"
    assert dry_run_news(FULL, before, _pass(FULL, before, WORKERS_WROTE)) is None
