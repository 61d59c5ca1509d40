"""Scheduled group posts (clarion_operator.group_schedule): which occurrences are due, across DST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from clarion.models import InvalidSpec, ManagedGroupSpec, ScheduledPost
from clarion_operator.group_schedule import occurrences, plan_posts
from pydantic import ValidationError

pytestmark = pytest.mark.unit

HOUR = timedelta(hours=1)


def _post(**fields: Any) -> ScheduledPost:
    return ScheduledPost.model_validate({"name": "news", "text": "Hello group", **fields})


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def _times(post: ScheduledPost, after: datetime, until: datetime) -> list[datetime]:
    return list(occurrences(post, after, until))


def test_a_one_off_post_is_due_once_in_the_window_that_holds_its_time() -> None:
    post = _post(at="2025-06-01T09:00:00", timeZone="Europe/Berlin")  # local time: 07:00 UTC
    assert _times(post, _utc(2025, 6, 1, 6), _utc(2025, 6, 1, 7)) == [_utc(2025, 6, 1, 7)]
    assert _times(post, _utc(2025, 6, 1, 7), _utc(2025, 6, 1, 8)) == []  # (after, until]: not twice
    offset = _post(at="2025-06-01T09:00:00-04:00", timeZone="Europe/Berlin")  # its own offset wins
    assert _times(offset, _utc(2025, 6, 1, 12), _utc(2025, 6, 1, 14)) == [_utc(2025, 6, 1, 13)]


def test_a_daily_post_keeps_its_local_hour_across_the_berlin_clock_changes() -> None:
    daily = _post(cron="0 9 * * *", timeZone="Europe/Berlin")
    assert _times(daily, _utc(2025, 3, 28, 12), _utc(2025, 3, 31, 12)) == [
        _utc(2025, 3, 29, 8), _utc(2025, 3, 30, 7), _utc(2025, 3, 31, 7)]  # CET, then CEST
    assert _times(daily, _utc(2025, 10, 25, 0), _utc(2025, 10, 27, 12)) == [
        _utc(2025, 10, 25, 7), _utc(2025, 10, 26, 8), _utc(2025, 10, 27, 8)]


def test_a_time_the_clock_skips_fires_at_the_end_of_the_gap_and_a_repeated_one_fires_once() -> None:
    night = _post(cron="30 2 * * *", timeZone="Europe/Berlin")
    # 30 March 2025: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist, the post goes at 03:00 CEST.
    assert _times(night, _utc(2025, 3, 29, 12), _utc(2025, 3, 30, 12)) == [_utc(2025, 3, 30, 1)]
    # 26 October 2025: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice, the post goes once.
    assert _times(night, _utc(2025, 10, 25, 12), _utc(2025, 10, 26, 12)) == [_utc(2025, 10, 26, 0, 30)]


def test_an_hourly_or_finer_schedule_runs_through_both_passes_of_the_repeated_hour() -> None:
    half_hourly = _post(cron="*/30 * * * *", timeZone="Europe/Berlin")
    times = _times(half_hourly, _utc(2025, 10, 25, 23, 59), _utc(2025, 10, 26, 2, 1))
    assert times == [_utc(2025, 10, 26, 0), _utc(2025, 10, 26, 0, 30), _utc(2025, 10, 26, 1),
                     _utc(2025, 10, 26, 1, 30), _utc(2025, 10, 26, 2)]  # every half hour of real time


def test_new_york_clock_changes() -> None:
    daily = _post(cron="0 9 * * *", timeZone="America/New_York")
    assert _times(daily, _utc(2025, 3, 8, 0), _utc(2025, 3, 10, 0)) == [
        _utc(2025, 3, 8, 14), _utc(2025, 3, 9, 13)]  # EST, then EDT from 9 March
    early = _post(cron="30 1 * * *", timeZone="America/New_York")
    # 2 November 2025: 02:00 EDT goes back to 01:00 EST; 01:30 EDT (05:30 UTC) only, not 01:30 EST.
    assert _times(early, _utc(2025, 11, 1, 12), _utc(2025, 11, 2, 12)) == [_utc(2025, 11, 2, 5, 30)]
    skipped = _post(cron="30 2 * * *", timeZone="America/New_York")
    # 9 March 2025: 02:00 EST jumps to 03:00 EDT; 02:30 goes at 03:00 EDT (07:00 UTC).
    assert _times(skipped, _utc(2025, 3, 8, 12), _utc(2025, 3, 9, 12)) == [_utc(2025, 3, 9, 7)]


def test_due_occurrences_are_queued_in_time_order_and_those_found_too_late_are_skipped() -> None:
    hourly = _post(name="hourly", cron="0 * * * *")
    once = _post(name="once", at="2025-06-01T11:30:00Z")
    early = _post(name="early", at="2025-06-01T08:00:00Z")
    checked, now = _utc(2025, 6, 1, 9, 5), _utc(2025, 6, 1, 12, 10)  # the operator was away 3 h
    plan = plan_posts([hourly, once, early], checked, now, HOUR)
    assert [(p.name, t) for p, t in plan.due] == [("once", _utc(2025, 6, 1, 11, 30)),
                                                  ("hourly", _utc(2025, 6, 1, 12))]
    # 10:00 and 11:00 came more than an hour before 12:10; 08:00 passed before the last look.
    assert [(s.post.name, s.count, s.first) for s in plan.skipped] == [("hourly", 2, _utc(2025, 6, 1, 10))]
    fresh = plan_posts([hourly, once, early], _utc(2025, 6, 1, 11, 45), now, HOUR)
    assert [(p.name, t) for p, t in fresh.due] == [("hourly", _utc(2025, 6, 1, 12))] and not fresh.skipped


def test_a_minutely_schedule_missed_for_days_is_counted_up_to_a_cap() -> None:
    minutely = _post(cron="* * * * *")
    plan = plan_posts([minutely], _utc(2025, 6, 1), _utc(2025, 6, 8), HOUR)
    assert plan.skipped[0].count == 1000 and len(plan.due) == 60


@pytest.mark.parametrize(("cron", "error"), [
    ("61 * * * *", "not a valid five-field schedule"),
    ("0 9 31 2 *", "never comes"),
])
def test_a_cron_that_cannot_run_is_refused_with_the_reason(cron: str, error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        _post(cron=cron)
    with pytest.raises((InvalidSpec, ValidationError)):
        ManagedGroupSpec.model_validate({"channelRef": {"name": "c"}, "chatId": -100,
                                         "scheduledPosts": [{"name": "x", "text": "t", "cron": cron}]})
