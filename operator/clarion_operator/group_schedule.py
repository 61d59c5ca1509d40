"""Scheduled group posts (spec.scheduledPosts, ADR 0010): a timer per ManagedGroup queues each
occurrence that came due since the last look, once.

Every `group_posts_check_seconds` (30 s) the timer reads `managed_groups.posts_checked_at` (up to
when it last looked) and `plan_posts` lists the occurrences in (checked_at, now]:

    occurrence at most `group_posts_catch_up_seconds` (1 h) old  -> queued, a PostQueued Event
    occurrence older than that (operator down, group not Ready)   -> skipped, one PostSkipped Warning
                                                                     per post with how many and since when

then posts_checked_at becomes now. A post's times are those that pass while the group is run: a new
group looks from its creation, and a post added (or an `at` edited) to a time already past is not
made up for. Queuing is idempotent: `clarion.db.group_posts.queue_post` stores the notification (lane
`group-posts`, recipient the group's chat) and the `group_posts` row, unique per (group, name, due
time), and returns None for an occurrence stored before, so a pass repeated after a crash between
the queue and the checked_at update queues nothing twice.

Times: `at` is read by `parse_schedule_time` (RFC 3339, or local time in timeZone); `cron` (five
fields) runs in its IANA timeZone with croniter. Across DST: a time the clock skips (02:30 on a
spring-forward night) fires at the end of the gap (03:00); a time the clock passes twice (02:30 on a
fall-back night) fires once, at its first pass, unless the hour field is `*` (an hourly or finer
schedule runs through both passes) — what Vixie cron does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import kopf
import structlog
from clarion.db import groups as group_rows
from clarion.db.group_posts import queue_post as store_post
from clarion.db.groups import GroupRecord
from clarion.metrics import counter
from clarion.models import MANAGED_GROUP, ConditionType, GroupReason, ManagedGroup, ScheduledPost
from clarion.models.campaign import parse_schedule_time
from clarion.streams import add_tasks
from croniter import CroniterError, croniter

from clarion_operator.context import Context, context, object_lock
from clarion_operator.settings import OperatorSettings
from clarion_operator.status import typed

log = structlog.get_logger(__name__)

POSTS = counter("clarion_operator_group_posts_total",
                "Scheduled group post occurrences by outcome (queued, skipped).", ["outcome"])
SKIP_COUNT_CAP = 1000
"""Skipped occurrences counted per post and pass (a minutely cron missed for days stops counting here)."""


def _repeated_wall_time(moment: datetime) -> bool:
    """Whether `moment` (local, from croniter) is the second pass of a wall time the clock went through
    twice (the hour after a fall-back)."""
    return moment.fold == 1 and moment.replace(fold=0).utcoffset() != moment.utcoffset()


def occurrences(post: ScheduledPost, after: datetime, until: datetime) -> Iterator[datetime]:
    """The post's times in (after, until], in UTC, oldest first."""
    if post.at is not None:
        once = parse_schedule_time(post.at, post.time_zone)
        if after < once <= until:
            yield once
        return
    assert post.cron is not None
    hourly = post.cron.split()[1] == "*"
    times = croniter(post.cron, after.astimezone(ZoneInfo(post.time_zone)))
    while True:
        try:
            moment: datetime = times.get_next(datetime)
        except CroniterError:  # no later time at all (the model refuses schedules that never come)
            return
        if moment > until:
            return
        if hourly or not _repeated_wall_time(moment):
            yield moment.astimezone(UTC)


@dataclass(frozen=True)
class Skipped:
    post: ScheduledPost
    count: int
    """How many occurrences were skipped (at most SKIP_COUNT_CAP)."""
    first: datetime


@dataclass(frozen=True)
class PostPlan:
    due: list[tuple[ScheduledPost, datetime]] = field(default_factory=list)
    """Occurrences to queue, by time."""
    skipped: list[Skipped] = field(default_factory=list)


def plan_posts(posts: list[ScheduledPost], checked_at: datetime, now: datetime,
               catch_up: timedelta) -> PostPlan:
    """What to do with the occurrences in (checked_at, now]: queue those not older than `catch_up`,
    skip the older ones."""
    late = now - catch_up
    plan = PostPlan()
    for post in posts:
        missed: list[datetime] = []
        for moment in occurrences(post, checked_at, late):
            missed.append(moment)
            if len(missed) >= SKIP_COUNT_CAP:
                break
        if missed:
            plan.skipped.append(Skipped(post, len(missed), missed[0]))
        plan.due.extend((post, moment) for moment in occurrences(post, max(checked_at, late), now))
    plan.due.sort(key=lambda item: item[1])
    return plan


async def queue_post(ctx: Context, group: GroupRecord, post: ScheduledPost,
                     due_at: datetime) -> uuid.UUID | None:
    """Store the occurrence as a notification on lane group-posts and put it on the channel's
    group-posts stream; its id, or None when the occurrence was queued before.

    As the API does with an accepted notification: the row is committed (`queued`, as on its stream),
    then added to the stream (`add_tasks`); an XADD that fails leaves the row to the workers'
    replayer, which adds a `queued` row whose entry was not read in time.
    """
    async with ctx.db.acquire() as conn:
        row = await store_post(conn, group, name=post.name, due_at=due_at, text=post.text,
                               parse_mode=post.parse_mode, pin=post.pin, trace_id=uuid.uuid4().hex)
    if row is None:
        return None
    try:
        await add_tasks(ctx.redis, [row.entry()])
    except Exception as exc:  # the row is stored: the replayer adds it
        log.warning("group_post_enqueue_failed", notification_id=str(row.id), error=type(exc).__name__)
    post_id: uuid.UUID = row.id
    return post_id


def _ready(group: ManagedGroup) -> bool:
    return any(c.type == ConditionType.READY and c.is_true for c in group.status.conditions)


async def post_due(group: ManagedGroup, body: kopf.Body, ctx: Context) -> None:
    """One look: queue the due occurrences, report the skipped, move posts_checked_at to now."""
    row = await group_rows.get_group_by_name(ctx.db, group.namespace, group.name)
    if row is None or row.chat_id != group.spec.chat_id or not _ready(group):
        return  # not recorded yet, or not Ready: nothing is queued, and late occurrences are skipped later
    checked_at = await group_rows.posts_checked_at(ctx.db, row.id)
    if checked_at is None:
        return
    now = datetime.now(UTC)
    catch_up = timedelta(seconds=ctx.settings.group_posts_catch_up_seconds)
    plan = plan_posts(group.spec.scheduled_posts, checked_at, now, catch_up)
    for skipped in plan.skipped:
        POSTS.labels("skipped").inc(skipped.count)
        more = "+" if skipped.count >= SKIP_COUNT_CAP else ""
        kopf.event(body, type="Warning", reason=GroupReason.POST_SKIPPED,
                   message=f"post {skipped.post.name}: {skipped.count}{more} occurrences from "
                           f"{skipped.first.isoformat()} skipped, found more than {catch_up} late")
    for post, due_at in plan.due:
        queued = await queue_post(ctx, row, post, due_at)
        if queued is not None:
            POSTS.labels("queued").inc()
            kopf.event(body, type="Normal", reason=GroupReason.POST_QUEUED,
                       message=f"post {post.name} due {due_at.isoformat()} queued (notification {queued})")
    await group_rows.set_posts_checked(ctx.db, row.id, now)


@typed(ManagedGroup)
async def posts_tick(group: ManagedGroup, *, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Every group_posts_check_seconds: queue the scheduled posts that came due."""
    async with object_lock(memo):
        await post_due(group, body, context(memo))


def register(settings: OperatorSettings) -> None:
    """Register the timer, whose interval is a setting (`group_posts_check_seconds`)."""
    kopf.timer(*MANAGED_GROUP.selector, interval=settings.group_posts_check_seconds,
               initial_delay=settings.group_posts_check_seconds)(posts_tick)
