"""ManagedGroup decisions (clarion_operator.group_logic): rights, conditions, phase, due maintenance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from clarion.db.groups import GroupActivity
from clarion.models import GroupReason, ManagedGroupSpec, ManagedGroupStatus
from clarion.streams import GroupTaskKind
from clarion_operator.group_logic import (
    Check,
    Periods,
    decide_phase,
    due_tasks,
    group_conditions,
    group_status,
    member_count_due,
    required_rights,
    rights_check,
)

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


def test_phase_starts_from_the_spec_and_moves_to_monitoring_at_a_threshold() -> None:
    spec = _spec(lifecycle={"growthUntilMembers": 100})
    assert decide_phase(spec, None, 10, NOW).phase == "Growth"
    moved = decide_phase(spec, "Growth", 100, NOW)
    assert moved.phase == "Monitoring" and "100" in (moved.changed_because or "")
    assert decide_phase(spec, "Monitoring", 5, NOW).changed_because is None
    dated = _spec(lifecycle={"growthUntil": "2025-02-01T00:00:00Z"})
    assert decide_phase(dated, "Growth", None, NOW).phase == "Monitoring"
    assert decide_phase(_spec(lifecycle={"phase": "Monitoring"}), None, None, NOW).phase == "Monitoring"


def test_member_count_is_read_again_after_its_period() -> None:
    assert member_count_due(None, period_seconds=300, now=NOW)
    assert not member_count_due(NOW - timedelta(seconds=299), period_seconds=300, now=NOW)
    assert member_count_due(NOW - timedelta(seconds=300), period_seconds=300, now=NOW)


def test_due_tasks_depend_on_phase_and_policies_and_one_period_names_one_task() -> None:
    periods = Periods(inactivity_sweep=3600, rotate_invite=86400, join_request_sweep=60)
    assert [t.kind for t in due_tasks(FULL, "Monitoring", periods, NOW)] == [GroupTaskKind.INACTIVITY_SWEEP]
    assert [t.kind for t in due_tasks(FULL, "Growth", periods, NOW)] == [GroupTaskKind.ROTATE_INVITE]
    rules = _spec(joinRequests={"policy": "rules", "rules": {"requireUsername": True}})
    assert GroupTaskKind.JOIN_REQUEST_SWEEP in [t.kind for t in due_tasks(rules, "Growth", periods, NOW)]
    first = due_tasks(FULL, "Monitoring", periods, NOW)[0]
    assert due_tasks(FULL, "Monitoring", periods, NOW + timedelta(seconds=59))[0].slot == first.slot
    assert due_tasks(FULL, "Monitoring", periods, NOW + timedelta(hours=1))[0].slot == first.slot + 1


def test_status_keeps_what_a_pass_could_not_learn_and_reads_member_activity() -> None:
    old = ManagedGroupStatus(phase="Growth", title="Runners", member_count=42)
    conds = group_conditions(Check.failed(GroupReason.CHANNEL_NOT_READY, "not Ready"), None)
    kept = group_status(old, conds, phase="Growth", title=None, member_count=None, activity=None,
                        generation=3, now=NOW)
    assert (kept.title, kept.member_count, kept.observed_generation) == ("Runners", 42, 3)
    seen = NOW - timedelta(minutes=5, microseconds=7)
    fresh = group_status(old, conds, phase="Monitoring", title="Runners club", member_count=50,
                         activity=GroupActivity(2, 1, 4, seen), generation=3, now=NOW)
    assert (fresh.phase, fresh.title, fresh.member_count) == ("Monitoring", "Runners club", 50)
    assert (fresh.pending_join_requests, fresh.warned_members, fresh.removed_members) == (2, 1, 4)
    assert fresh.last_activity_at == seen.replace(microsecond=0)
