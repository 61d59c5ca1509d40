"""BroadcastCampaign handlers: observe (Postgres row and counts, the run's Job, the channel), decide
with `campaign_logic.decide`, carry out the one action, write status.

Change handlers react at once to spec edits (suspend, cancel, retryFailed); a timer refreshes
status every few seconds while the campaign is live. Both take the campaign's lock, and every
action is idempotent (uid-keyed row, deterministic Job names, compare-and-set on the run number), so
neither a retry nor an operator restart creates a second snapshot or a second Job.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from clarion.metrics import counter

from clarion_operator import builders, store
from clarion_operator.campaign_logic import (
    TERMINAL,
    Action,
    CampaignRow,
    Counts,
    Decision,
    JobState,
    Observed,
    RateSample,
    campaign_conditions,
    decide,
    intent_of,
    job_state,
    next_rate,
    progress_status,
)
from clarion_operator.conditions import merge_conditions, parse_rfc3339, rfc3339, transitions
from clarion_operator.startup import Context, context

CAMPAIGNS = ("clarion.io", "v1alpha1", "broadcastcampaigns")
STATUS_SECONDS = 2.5
ACTIONS = counter("clarion_operator_campaign_actions_total",
                  "Lifecycle actions the operator carried out on campaigns (start, suspend, finish, ...).",
                  ["action"])


def _lock(memo: Any) -> asyncio.Lock:
    lock: asyncio.Lock | None = memo.get("campaign_lock")
    if lock is None:
        lock = memo["campaign_lock"] = asyncio.Lock()
    return lock


def _live(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    """The timer runs while the campaign can still change: not finished, or a retry was requested."""
    if status.get("phase") not in TERMINAL:
        return True
    return int(spec.get("retryFailed") or 0) > int(status.get("retryFailedObserved") or 0)


async def _channel_token_ref(ctx: Context, namespace: str, channel: str) -> dict[str, Any] | None:
    """The bot token Secret reference of a Telegram channel, None when there is no such channel."""
    body = await ctx.kube.read_resource("notificationchannels", namespace, channel)
    if body is None or (body.get("spec") or {}).get("type") != "telegram":
        return None
    ref: dict[str, Any] = body["spec"]["telegram"]["botTokenSecretRef"]
    return ref


async def _create_job(ctx: Context, body: kopf.Body, row: CampaignRow) -> None:
    """Make sure the run's Job exists, and the runtime Secret its pods read."""
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    ref = await _channel_token_ref(ctx, namespace, body.spec["channelRef"]["name"])
    if ref is None:
        raise kopf.TemporaryError("the campaign's Telegram channel is gone; cannot start senders", delay=30)
    database_url, redis_url = ctx.runtime_urls()
    await ctx.kube.apply_secret(builders.runtime_secret(namespace, ctx.settings.runtime_secret_name,
                                                        database_url, redis_url))
    job = builders.sender_job(
        namespace=namespace, campaign=name, run=row.run, campaign_id=row.id, shards=row.shards,
        token_secret=ref["name"], token_key=ref.get("key", "token"), image=ctx.settings.image,
        pull_policy=ctx.settings.image_pull_policy, runtime_secret_name=ctx.settings.runtime_secret_name,
        backoff_limit=ctx.settings.sender_backoff_limit)
    kopf.append_owner_reference(job, owner=body)
    await ctx.kube.create_job(job)


async def _observe(ctx: Context, body: kopf.Body, row: CampaignRow | None, now: datetime) -> Observed:
    namespace = body.metadata.namespace or ""
    intent = intent_of(dict(body.spec))
    created = parse_rfc3339(body.metadata.get("creationTimestamp")) or now
    due_since = intent.start_at or created
    counts = Counts()
    job = JobState.ABSENT
    channel_ready = False
    if row is not None:
        counts = await store.counts(ctx.db, row.id)
        job = job_state(await ctx.kube.read_job(namespace, builders.sender_job_name(body.metadata.name or "",
                                                                                    row.run)))
    elif not intent.suspend and not intent.cancel and (intent.start_at is None or intent.start_at <= now):
        channel = body.spec["channelRef"]["name"]
        channel_ready = (await store.usable_channel(ctx.db, namespace, channel) is not None
                         and await _channel_token_ref(ctx, namespace, channel) is not None)
    return Observed(status_phase=body.status.get("phase"), row=row, counts=counts, job=job,
                    channel_ready=channel_ready, due_since=due_since)


async def _act(ctx: Context, body: kopf.Body, decision: Decision,
               row: CampaignRow | None) -> CampaignRow | None:
    """Carry out the decision's action; return the campaign row as it is afterwards."""
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    action = decision.action
    if action is Action.START:
        spec = dict(body.spec)
        channel_id = await store.usable_channel(ctx.db, namespace, spec["channelRef"]["name"])
        if channel_id is None:
            raise kopf.TemporaryError("the channel stopped being Ready before the start", delay=10)
        intent = intent_of(spec)
        row = await store.start_campaign(
            ctx.db, uid=body.metadata.uid or "", namespace=namespace, name=name, channel_id=channel_id,
            spec=spec, message_hash=intent.message_hash,
            shards=int((spec.get("delivery") or {}).get("parallelism", 2)))
        if row.total > 0:
            await _create_job(ctx, body, row)
        kopf.event(body, type="Normal", reason="Started",
                   message=f"audience snapshot of {row.total} recipients; sender Job of run {row.run}")
        return row
    if row is None:
        return None
    job_name = builders.sender_job_name(name, row.run)
    if action is Action.CREATE_JOB:
        await _create_job(ctx, body, row)
    elif action is Action.SUSPEND:
        await ctx.kube.suspend_job(namespace, job_name, True)
        await store.set_phase(ctx.db, row.id, "Paused")
        kopf.event(body, type="Normal", reason="Paused", message=decision.message)
    elif action is Action.RESUME:
        await store.resume(ctx.db, row.id)
        await ctx.kube.suspend_job(namespace, job_name, False)
        kopf.event(body, type="Normal", reason="Resumed", message=decision.message)
    elif action is Action.CANCEL:
        await store.set_phase(ctx.db, row.id, "Cancelled", finished=True)
        await ctx.kube.delete_job(namespace, job_name)
        kopf.event(body, type="Normal", reason="Cancelled", message=decision.message)
    elif action in (Action.FINISH, Action.FAIL):
        await store.set_phase(ctx.db, row.id, decision.phase, finished=True)
        level = "Normal" if decision.phase == "Completed" else "Warning"
        kopf.event(body, type=level, reason=decision.reason, message=decision.message)
    elif action in (Action.RECOVER, Action.RETRY):
        retry = int(body.spec.get("retryFailed") or 0) if action is Action.RETRY else None
        moved = await store.next_run(ctx.db, row, retry_observed=retry)
        if moved is not None:
            await _create_job(ctx, body, moved)
            kopf.event(body, type="Normal", reason=decision.reason, message=decision.message)
    elif action is Action.NOTE_RETRY:
        await store.note_retry(ctx.db, row.id, int(body.spec.get("retryFailed") or 0))
    return await store.get_campaign(ctx.db, body.metadata.uid or "")


def _status(body: kopf.Body, decision: Decision, row: CampaignRow | None, counts: Counts,
            rate: float, now: datetime) -> dict[str, Any]:
    intent = intent_of(dict(body.spec))
    drift = row is not None and intent.message_hash != row.message_hash
    generation = body.metadata.get("generation")
    old = list(body.status.get("conditions") or [])
    status: dict[str, Any] = {
        "phase": decision.phase,
        "message": decision.message,
        "observedGeneration": generation,
        "conditions": merge_conditions(old, campaign_conditions(decision, drift=drift),
                                       generation=generation, now=now),
        "scheduledAt": rfc3339(intent.start_at) if intent.start_at else None,
    }
    if row is not None:
        status |= progress_status(counts, rate, sending=decision.phase == "Sending", now=now)
        status |= {
            "startedAt": rfc3339(row.started_at) if row.started_at else None,
            "completedAt": rfc3339(row.completed_at) if row.completed_at else None,
            "jobName": builders.sender_job_name(body.metadata.name or "", row.run),
            "run": row.run,
            "retryFailedObserved": row.retry_observed,
        }
    return status


async def reconcile_campaign(body: kopf.Body, memo: Any, patch: kopf.Patch) -> None:
    """One observe-decide-act-report pass (at most `max_concurrent_reconciles` at once)."""
    async with context(memo).reconciling:
        await _reconcile_campaign(body, memo, patch)


async def _reconcile_campaign(body: kopf.Body, memo: Any, patch: kopf.Patch) -> None:
    ctx = context(memo)
    now = datetime.now(UTC)
    intent = intent_of(dict(body.spec))
    row = await store.get_campaign(ctx.db, body.metadata.uid or "")
    seen = await _observe(ctx, body, row, now)
    wait = timedelta(seconds=ctx.settings.channel_wait_seconds)
    decision = decide(intent, seen, now=now, channel_wait=wait,
                      max_recovery_runs=ctx.settings.max_recovery_runs)
    row = await _act(ctx, body, decision, row)
    if decision.action is not Action.NONE:
        ACTIONS.labels(decision.action.value).inc()
    counts = seen.counts
    if decision.action is not Action.NONE and row is not None:
        counts = await store.counts(ctx.db, row.id)
    sample: RateSample | None = memo.get("rate_sample")
    sample = next_rate(sample, counts.settled, now)
    memo["rate_sample"] = sample
    status = _status(body, decision, row, counts, sample.rate, now)
    if row is not None and intent.message_hash != row.message_hash:
        for cond in transitions(body.status.get("conditions"), status["conditions"]):
            if cond["type"] == "SpecDrift":
                kopf.event(body, type="Warning", reason=cond["reason"], message=cond["message"])
    for key, value in status.items():
        if body.status.get(key) != value:
            patch.status[key] = value


@kopf.on.resume(*CAMPAIGNS)
@kopf.on.create(*CAMPAIGNS)
@kopf.on.update(*CAMPAIGNS)
async def campaign_changed(body: kopf.Body, memo: Any, patch: kopf.Patch, **_: Any) -> None:
    """A new campaign, an edit (suspend, cancel, retryFailed, ...) or an operator restart."""
    async with _lock(memo):
        await reconcile_campaign(body, memo, patch)


@kopf.timer(*CAMPAIGNS, interval=STATUS_SECONDS, when=_live)
async def campaign_tick(body: kopf.Body, memo: Any, patch: kopf.Patch, **_: Any) -> None:
    """Status from Postgres every few seconds; starts scheduled campaigns when their time comes."""
    intent = intent_of(dict(body.spec))
    now = datetime.now(UTC)
    waiting = body.status.get("phase") in (None, "Draft", "Scheduled") and (
        intent.suspend or (intent.start_at is not None and now < intent.start_at))
    if waiting and body.status.get("phase") is not None:
        return
    async with _lock(memo):
        await reconcile_campaign(body, memo, patch)


@kopf.on.delete(*CAMPAIGNS)
async def campaign_deleted(body: kopf.Body, memo: Any, **_: Any) -> None:
    """Senders stop (the Job goes with its owner); delivery rows stay unless retention says otherwise."""
    keep = bool((body.spec.get("retention") or {}).get("keepDeliveries", True))
    await store.forget_campaign(context(memo).db, body.metadata.uid or "", keep_deliveries=keep)
