"""ManagedGroup handlers: resolve the channel, check the bot's admin rights, record the group, report
status, and put due maintenance on the channel's group-maintenance stream (ADR 0010).

Each pass observes (the channel's row and token, getChatMember on the bot itself, getChat, and
getChatMemberCount when due, the member rows' counts, the row's lifecycle fields), decides with
`group_logic`, writes the row (the count into its history, the phase when a threshold moves it) and
the status `group_status` builds (with the workers' invite link and dry run from the row). An
expected refusal (no channel, a missing right, the chat taken, Telegram down) is a condition, not an
exception: the timer checks again every `group_check_seconds`, so granting a right or readying the
channel recovers the group without a spec change. The operator never acts on members; the workers
do, from the stream. Scheduled posts have their own timer (`group_schedule`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, get_args

import kopf
from clarion.db import groups as group_rows
from clarion.db.channels import get_channel
from clarion.db.groups import GroupActivity, GroupRecord, GroupTaken
from clarion.keys import channel_key
from clarion.metrics import counter
from clarion.models import (
    MANAGED_GROUP,
    GroupPhase,
    GroupReason,
    InvalidSpec,
    ManagedGroup,
    ResourceKey,
)
from clarion.streams import GroupTask, add_group_task, group_maintenance_stream
from clarion.telegram.botapi import UNREACHABLE, BotApi, BotApiError, InvalidTokenFormat

from clarion_operator.channels import secret_value
from clarion_operator.context import Context, context, object_lock
from clarion_operator.group_logic import (
    Check,
    CountSample,
    PhaseObservation,
    Recorded,
    decide_phase,
    dry_run_news,
    due_tasks,
    group_conditions,
    group_status,
    member_count_due,
    rights_check,
)
from clarion_operator.indexes import ChannelTokens, first
from clarion_operator.settings import OperatorSettings
from clarion_operator.status import announce_conditions, typed, write_status

GROUPS = MANAGED_GROUP.selector
CHECKS = counter("clarion_operator_group_checks_total",
                 "ManagedGroup passes by the Ready reason they ended with.", ["reason"])
TASKS = counter("clarion_operator_group_tasks_total",
                "Maintenance tasks put on group-maintenance streams, by kind.", ["kind"])


@dataclass(frozen=True)
class _Bot:
    """The channel's bot as a group pass needs it."""

    channel_id: int
    channel: str
    bot_id: int
    username: str | None
    token: str
    api_base_url: str


async def _resolve_channel(ctx: Context, group: ManagedGroup, tokens: ChannelTokens) -> _Bot | Check:
    """The bot of spec.channelRef, or the ChannelReady=False that says why there is none."""
    name = group.spec.channel_ref.name
    where = f"NotificationChannel {group.namespace}/{name}"
    record = await get_channel(ctx.db, channel_key(group.namespace, name))
    if record is None:
        return Check.failed(GroupReason.CHANNEL_NOT_FOUND, f"{where} does not exist")
    if record.type != "telegram":
        return Check.failed(GroupReason.CHANNEL_NOT_TELEGRAM,
                            f"{where} is of type {record.type}; a group needs a telegram channel")
    ref = first(tokens, ResourceKey(group.namespace, name))
    if not record.ready or record.bot_id is None or ref is None:
        return Check.failed(GroupReason.CHANNEL_NOT_READY, f"{where} is not Ready")
    token = await secret_value(ctx, group.namespace, ref)
    if not isinstance(token, str):
        return Check.failed(GroupReason.CHANNEL_NOT_READY, f"{where}: {token.message}")
    return _Bot(record.id, record.key, record.bot_id, record.bot_username, token,
                record.api_base_url or "https://api.telegram.org")


@dataclass(frozen=True)
class _Chat:
    """What Telegram said about the chat: the rights check, the title, the member count (None: not
    asked or not answered)."""

    rights: Check
    title: str | None = None
    member_count: int | None = None


def _refusal(exc: BotApiError, chat_id: int) -> Check:
    text = exc.description.lower()
    if exc.status in (400, 403) and ("chat not found" in text or "not a member" in text
                                     or "kicked" in text):
        return Check.failed(GroupReason.CHAT_NOT_FOUND,
                            f"the bot cannot see chat {chat_id} ({exc.method}: {exc.message}); add it to "
                            "the group as an administrator")
    return Check.failed(GroupReason.TELEGRAM_ERROR, f"{exc.method} failed: {exc.message}")


async def _observe_chat(bot: _Bot, group: ManagedGroup, *, count: bool, timeout_seconds: float) -> _Chat:
    """getChatMember on the bot itself, getChat, and getChatMemberCount when `count`."""
    chat_id = group.spec.chat_id
    try:
        api = BotApi(bot.token, bot.api_base_url, timeout_seconds=timeout_seconds)
    except InvalidTokenFormat:
        return _Chat(Check.failed(GroupReason.TELEGRAM_ERROR, "the channel's token is not a bot token"))
    async with api:
        try:
            member = await api.call("getChatMember", chat_id=chat_id, user_id=bot.bot_id)
            chat = await api.call("getChat", chat_id=chat_id)
            members = int(await api.call("getChatMemberCount", chat_id=chat_id)) if count else None
        except BotApiError as exc:
            return _Chat(_refusal(exc, chat_id))
        except UNREACHABLE as exc:
            unreachable = f"Telegram did not answer: {exc!r}"
            return _Chat(Check.undecided(GroupReason.TELEGRAM_UNREACHABLE, unreachable))
    title = chat.get("title") if isinstance(chat, dict) else None
    return _Chat(rights_check(group.spec, member), str(title)[:255] if title else None, members)


def _phase(stored: str) -> GroupPhase | None:
    """The row's phase as the model names it (None for a value it does not know)."""
    return next((p for p in get_args(GroupPhase) if p == stored), None)


async def _enqueue(ctx: Context, bot: _Bot, group: ManagedGroup, row: GroupRecord, phase: GroupPhase,
                   phase_since: datetime, now: datetime) -> None:
    stream = group_maintenance_stream(bot.channel)
    for due in due_tasks(group.spec, phase, phase_since,
                         inactivity_sweep_seconds=ctx.settings.group_inactivity_sweep_seconds, now=now):
        task = GroupTask(group_id=row.id, namespace=group.namespace, name=group.name, chat_id=row.chat_id,
                         kind=due.kind, slot=due.slot, trace_id=uuid.uuid4().hex)
        if await add_group_task(ctx.redis, stream, task, due.period_seconds):
            TASKS.labels(due.kind.value).inc()


async def _lifecycle(ctx: Context, body: kopf.Body, group: ManagedGroup, row: GroupRecord,
                     member_count: int | None, now: datetime) -> tuple[GroupPhase, Recorded]:
    """Record the count for the growth rate, move the phase when a threshold says so (a PhaseChanged
    Event), and read what the row holds for status."""
    if member_count is not None:
        await group_rows.record_member_count(ctx.db, row.id, member_count)
    lifecycle = group.spec.lifecycle
    stored = await group_rows.lifecycle(ctx.db, row.id, lifecycle.growth_window_days)
    if stored is None:  # deleted under us: the delete handler has it
        return _phase(row.phase) or lifecycle.phase, Recorded()
    sample = None
    if stored.window_start_at is not None and stored.window_start_count is not None:
        sample = CountSample(stored.window_start_at, stored.window_start_count)
    known = member_count if member_count is not None else row.member_count
    current = _phase(row.phase)
    decision = decide_phase(group.spec, PhaseObservation(current, stored.phase_since, known, sample), now)
    since = stored.phase_since
    if decision.changed_because is not None:
        moved = await group_rows.set_phase(ctx.db, row.id, decision.phase)
        if moved is not None:
            since = moved
            moves = f"{current or lifecycle.phase} -> {decision.phase}"
            kopf.event(body, type="Normal", reason=GroupReason.PHASE_CHANGED,
                       message=f"{moves}: {decision.changed_because}")
    recorded = Recorded(phase_since=since, invite_link=stored.invite_link,
                        invite_link_expires_at=stored.invite_link_expires_at,
                        dry_run_candidates=stored.dry_run_candidates,
                        dry_run_candidate_count=stored.dry_run_candidate_count)
    return decision.phase, recorded


async def reconcile_group(group: ManagedGroup, body: kopf.Body, memo: Any, patch: kopf.Patch,
                          logger: kopf.Logger, tokens: ChannelTokens, *, count: bool) -> None:
    """One observe-decide-act-report pass; `count` asks getChatMemberCount even when not due."""
    ctx = context(memo)
    settings = ctx.settings
    now = datetime.now(UTC)
    bot = await _resolve_channel(ctx, group, tokens)
    rights: Check | None = None
    taken: Check | None = None
    phase = group.status.phase
    title = member_count = None
    activity: GroupActivity | None = None
    recorded: Recorded | None = None
    if isinstance(bot, Check):
        channel = bot
    else:
        usable = f"NotificationChannel {group.spec.channel_ref.name} is Ready (@{bot.username})"
        channel = Check.passed(GroupReason.CHANNEL_READY, usable)
        start = phase or group.spec.lifecycle.phase
        row = await group_rows.upsert_group(
            ctx.db, namespace=group.namespace, name=group.name, uid=group.uid, channel_id=bot.channel_id,
            chat_id=group.spec.chat_id, spec=group.spec.to_k8s(), phase=start)
        if isinstance(row, GroupTaken):
            holder = f"ManagedGroup {row.namespace}/{row.name}"
            taken = Check.failed(GroupReason.CHAT_TAKEN,
                                 f"chat {group.spec.chat_id} is run by {holder} through the same channel")
        else:
            due = count or member_count_due(row.member_count_at, now=now,
                                            period_seconds=settings.group_member_count_seconds)
            chat = await _observe_chat(bot, group, count=due,
                                       timeout_seconds=settings.telegram_timeout_seconds)
            rights, title, member_count = chat.rights, chat.title, chat.member_count
            await group_rows.record_chat(ctx.db, row.id, title=title, member_count=member_count)
            phase, recorded = await _lifecycle(ctx, body, group, row, member_count, now)
            activity = await group_rows.activity(ctx.db, row.id)
            if rights.ok and recorded.phase_since is not None:
                await _enqueue(ctx, bot, group, row, phase, recorded.phase_since, now)
    fresh = group_conditions(channel, rights, taken)
    status = group_status(group.status, fresh, spec=group.spec, phase=phase, title=title,
                          member_count=member_count, activity=activity, recorded=recorded,
                          generation=group.generation, now=now)
    write_status(patch, group.status, status)
    dry_run = dry_run_news(group.spec, group.status, status)
    if dry_run is not None:
        kopf.event(body, type="Normal", reason=GroupReason.DRY_RUN, message=dry_run)
    announce_conditions(body, group.status.conditions, fresh)
    ready = fresh[-1]
    CHECKS.labels(ready.reason).inc()
    logger.info("group %s checked: ready=%s (%s)", group.key, ready.status, ready.reason)


@kopf.on.resume(*GROUPS)
@kopf.on.create(*GROUPS)
@kopf.on.update(*GROUPS)
@typed(ManagedGroup)
async def group_changed(group: ManagedGroup, *, body: kopf.Body, memo: Any, patch: kopf.Patch,
                        logger: kopf.Logger, channel_token_refs: ChannelTokens, **_: Any) -> None:
    """Created, edited, or the operator restarted: check, record, and read the member count."""
    async with object_lock(memo), context(memo).reconciling:
        await reconcile_group(group, body, memo, patch, logger, channel_token_refs, count=True)


@typed(ManagedGroup)
async def group_tick(group: ManagedGroup, *, body: kopf.Body, memo: Any, patch: kopf.Patch,
                     logger: kopf.Logger, channel_token_refs: ChannelTokens, **_: Any) -> None:
    """Every group_check_seconds: rights and channel again, member count when due, due maintenance."""
    async with object_lock(memo), context(memo).reconciling:
        await reconcile_group(group, body, memo, patch, logger, channel_token_refs, count=False)


def register(settings: OperatorSettings) -> None:
    """Register the timer, whose interval is a setting (`group_check_seconds`)."""
    kopf.timer(*GROUPS, interval=settings.group_check_seconds,
               initial_delay=settings.group_check_seconds)(group_tick)


@kopf.on.delete(*GROUPS)
async def group_deleted(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Mark the row deleted and drop its member rows; kopf stops the timer once deletion starts.

    A spec that does not parse still names the row by its metadata.
    """
    try:
        meta = ManagedGroup.parse(body).metadata
    except InvalidSpec as error:
        meta = error.meta
    if await group_rows.mark_group_deleted(context(memo).db, meta.namespace, meta.name, meta.uid):
        logger.info("group %s/%s deleted: row marked, member rows dropped", meta.namespace, meta.name)
