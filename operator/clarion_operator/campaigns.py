"""BroadcastCampaign handlers: observe (Postgres row and counts, the run's Job, the channel), decide
with `campaign_logic.decide`, carry out the one action, write status.

Change handlers react at once to spec edits (suspend, cancel, retryFailed); a timer refreshes
status every few seconds while the campaign is live. Both take the campaign's lock, and every
action is idempotent (uid-keyed row, deterministic Job names, compare-and-set on the run number), so
neither a retry nor an operator restart creates a second snapshot or a second Job.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
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
    in_flight_after_cancel,
    intent_of,
    job_state,
    next_rate,
    progress_status,
)
from clarion_operator.channels import CHANNEL_TOKENS
from clarion_operator.conditions import merge_conditions, parse_rfc3339, rfc3339, transitions
from clarion_operator.startup import Context, context

CAMPAIGNS = ("clarion.io", "v1alpha1", "broadcastcampaigns")
STATUS_SECONDS = 2.5
SENDER_JOBS = "sender_jobs"
ACTIONS = counter("clarion_operator_campaign_actions_total",
                  "Lifecycle actions the operator carried out on campaigns (start, suspend, finish, ...).",
                  ["action"])


def _lock(memo: Any) -> asyncio.Lock:
    lock: asyncio.Lock | None = memo.get("campaign_lock")
    if lock is None:
        lock = memo["campaign_lock"] = asyncio.Lock()
    return lock


def _live(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    """The timer runs while the campaign can still change: not finished, senders still stopping after a
    cancel (Progressing stays True), or a retry was requested."""
    if status.get("phase") not in TERMINAL:
        return True
    conditions = status.get("conditions") or ()
    if any(c.get("type") == "Progressing" and c.get("status") == "True" for c in conditions):
        return True
    return int(spec.get("retryFailed") or 0) > int(status.get("retryFailedObserved") or 0)


def _token_ref(channels: kopf.Index[tuple[str, str], dict[str, Any]], namespace: str,
               channel: str) -> dict[str, Any] | None:
    """The bot token Secret reference of a Telegram channel, None when there is no such channel."""
    for ref in channels.get((namespace, channel), []):
        return ref
    return None


async def _create_job(ctx: Context, body: kopf.Body, row: CampaignRow,
                      token_ref: dict[str, Any] | None) -> None:
    """Make sure the run's Job exists, and the runtime Secret its pods read (once per namespace)."""
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    if token_ref is None:
        raise kopf.TemporaryError("the campaign's Telegram channel is gone; cannot start senders", delay=30)
    if namespace not in ctx.runtime_secret_namespaces:
        database_url, redis_url = ctx.runtime_urls()
        await ctx.kube.apply_secret(builders.runtime_secret(namespace, ctx.settings.runtime_secret_name,
                                                            database_url, redis_url))
        ctx.runtime_secret_namespaces.add(namespace)
    job = builders.sender_job(
        namespace=namespace, campaign=name, run=row.run, campaign_id=row.id, shards=row.shards,
        token_secret=token_ref["name"], token_key=token_ref.get("key", "token"), image=ctx.settings.image,
        pull_policy=ctx.settings.image_pull_policy, runtime_secret_name=ctx.settings.runtime_secret_name,
        backoff_limit=ctx.settings.sender_backoff_limit)
    kopf.append_owner_reference(job, owner=body)
    await ctx.kube.create_job(job)


@dataclass(frozen=True)
class _Pass:
    """What one pass works with besides the body: its connection, the channel's token ref, the sender
    Jobs' states (from the index), the channel's row id once looked up."""

    ctx: Context
    db: store.Db
    token_ref: dict[str, Any] | None
    jobs: kopf.Index[tuple[str, str], JobState]
    channel_id: int | None = None


async def _observe(run: _Pass, body: kopf.Body, row: CampaignRow | None,
                   now: datetime) -> tuple[Observed, _Pass]:
    """The observation, and the pass with the channel's row id when the campaign is due to start."""
    namespace = body.metadata.namespace or ""
    intent = intent_of(dict(body.spec))
    created = parse_rfc3339(body.metadata.get("creationTimestamp")) or now
    due_since = intent.start_at or created
    counts = Counts()
    job = JobState.ABSENT
    channel_ready = False
    if row is not None:
        counts = await store.counts(run.db, row.id)
        job_name = builders.sender_job_name(body.metadata.name or "", row.run)
        for state in run.jobs.get((namespace, job_name), []):
            job = state
    elif not intent.suspend and not intent.cancel and (intent.start_at is None or intent.start_at <= now):
        if run.token_ref is not None:
            run = replace(run, channel_id=await store.usable_channel(
                run.db, namespace, body.spec["channelRef"]["name"]))
        channel_ready = run.channel_id is not None
    seen = Observed(status_phase=body.status.get("phase"), row=row, counts=counts, job=job,
                    channel_ready=channel_ready, due_since=due_since)
    return seen, run


async def _act(run: _Pass, body: kopf.Body, decision: Decision, row: CampaignRow | None,
               counts: Counts) -> tuple[CampaignRow | None, Counts]:
    """Carry out the decision's action; return the campaign row and the counts as they are afterwards."""
    ctx, db = run.ctx, run.db
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    action = decision.action
    if action is Action.START:
        if run.channel_id is None:
            raise kopf.TemporaryError("the channel stopped being Ready before the start", delay=10)
        spec = dict(body.spec)
        intent = intent_of(spec)
        row = await store.start_campaign(
            db, uid=body.metadata.uid or "", namespace=namespace, name=name, channel_id=run.channel_id,
            spec=spec, message_hash=intent.message_hash,
            shards=int((spec.get("delivery") or {}).get("parallelism", 2)))
        if row.total > 0:
            await _create_job(ctx, body, row, run.token_ref)
            kopf.event(body, type="Normal", reason="Started",
                       message=f"audience snapshot of {row.total} recipients; sender Job of run {row.run}")
        return row, Counts(total=row.total, pending=row.total)
    if row is None or action is Action.NONE:
        return row, counts
    job_name = builders.sender_job_name(name, row.run)
    after: CampaignRow | None = row
    if action is Action.CREATE_JOB:
        await _create_job(ctx, body, row, run.token_ref)
    elif action is Action.SUSPEND:
        await ctx.kube.suspend_job(namespace, job_name, True)
        after = await store.set_phase(db, row.id, "Paused")
        kopf.event(body, type="Normal", reason="Paused", message=decision.message)
    elif action is Action.RESUME:
        after = await store.resume(db, row.id)
        await ctx.kube.suspend_job(namespace, job_name, False)
        kopf.event(body, type="Normal", reason="Resumed", message=decision.message)
    elif action is Action.CANCEL:
        after = await store.set_phase(db, row.id, "Cancelled", finished=True)
        await ctx.kube.delete_job(namespace, job_name)
        kopf.event(body, type="Normal", reason="Cancelled", message=decision.message)
    elif action in (Action.FINISH, Action.FAIL):
        after = await store.set_phase(db, row.id, decision.phase, finished=True)
        level = "Normal" if decision.phase == "Completed" else "Warning"
        kopf.event(body, type=level, reason=decision.reason, message=decision.message)
    elif action in (Action.RECOVER, Action.RETRY):
        retry = int(body.spec.get("retryFailed") or 0) if action is Action.RETRY else None
        moved = await store.next_run(db, row, retry_observed=retry)
        if moved is not None:
            await _create_job(ctx, body, moved, run.token_ref)
            kopf.event(body, type="Normal", reason=decision.reason, message=decision.message)
            return moved, await store.counts(db, moved.id)
        after = await store.get_campaign(db, body.metadata.uid or "")
    elif action is Action.NOTE_RETRY:
        after = await store.note_retry(db, row.id, int(body.spec.get("retryFailed") or 0))
    # Senders may have settled more while the action ran (a cancel lets in-flight sends finish).
    return after, await store.counts(db, row.id)


def _status(body: kopf.Body, decision: Decision, row: CampaignRow | None, counts: Counts,
            rate: float, now: datetime) -> dict[str, Any]:
    intent = intent_of(dict(body.spec))
    drift = row is not None and intent.message_hash != row.message_hash
    stopping = 0
    if row is not None and in_flight_after_cancel(decision.phase, counts, row.completed_at, now):
        stopping = counts.sending
    generation = body.metadata.get("generation")
    old = list(body.status.get("conditions") or [])
    status: dict[str, Any] = {
        "phase": decision.phase,
        "message": decision.message,
        "observedGeneration": generation,
        "conditions": merge_conditions(old, campaign_conditions(decision, drift=drift, stopping=stopping),
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


async def reconcile_campaign(body: kopf.Body, memo: Any, patch: kopf.Patch, indexes: dict[str, Any]) -> None:
    """One observe-decide-act-report pass (at most `max_concurrent_reconciles` at once) on one connection.

    `indexes` are the handler's kwargs: the channels' token refs and the sender Jobs' states come from
    kopf indexes (kept current by watches), so a pass reads nothing from the API server.
    """
    ctx = context(memo)
    namespace = body.metadata.namespace or ""
    token_ref = _token_ref(indexes[CHANNEL_TOKENS], namespace, body.spec["channelRef"]["name"])
    async with ctx.reconciling, ctx.db.acquire() as conn:
        await _reconcile_campaign(_Pass(ctx, conn, token_ref, indexes[SENDER_JOBS]), body, memo, patch)


async def _reconcile_campaign(run: _Pass, body: kopf.Body, memo: Any, patch: kopf.Patch) -> None:
    ctx = run.ctx
    now = datetime.now(UTC)
    intent = intent_of(dict(body.spec))
    row = await store.get_campaign(run.db, body.metadata.uid or "")
    seen, run = await _observe(run, body, row, now)
    wait = timedelta(seconds=ctx.settings.channel_wait_seconds)
    decision = decide(intent, seen, now=now, channel_wait=wait,
                      max_recovery_runs=ctx.settings.max_recovery_runs)
    row, counts = await _act(run, body, decision, row, seen.counts)
    if decision.action is not Action.NONE:
        ACTIONS.labels(decision.action.value).inc()
    if decision.action is Action.START and row is not None and counts.unsettled == 0:
        # An empty audience: nothing to send, so the same pass finishes it (no Job, one status write).
        started = Observed(status_phase=decision.phase, row=row, counts=counts, job=JobState.ABSENT,
                           channel_ready=True, due_since=seen.due_since)
        decision = decide(intent, started, now=now, channel_wait=wait,
                          max_recovery_runs=ctx.settings.max_recovery_runs)
        row, counts = await _act(run, body, decision, row, counts)
        ACTIONS.labels(decision.action.value).inc()
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
async def campaign_changed(body: kopf.Body, memo: Any, patch: kopf.Patch, **kwargs: Any) -> None:
    """A new campaign, an edit (suspend, cancel, retryFailed, ...) or an operator restart."""
    async with _lock(memo):
        await reconcile_campaign(body, memo, patch, kwargs)


@kopf.timer(*CAMPAIGNS, interval=STATUS_SECONDS, when=_live)
async def campaign_tick(body: kopf.Body, memo: Any, patch: kopf.Patch, **kwargs: Any) -> None:
    """Status from Postgres every few seconds; starts scheduled campaigns when their time comes.

    A campaign without a phase is left to the change handlers: a tick racing the first pass would
    write a stale status that can land after the newer one (kopf patches after the lock is released).
    """
    intent = intent_of(dict(body.spec))
    now = datetime.now(UTC)
    phase = body.status.get("phase")
    waiting = phase in ("Draft", "Scheduled") and (
        intent.suspend or (intent.start_at is not None and now < intent.start_at))
    if phase is None or waiting:
        return
    async with _lock(memo):
        await reconcile_campaign(body, memo, patch, kwargs)


@kopf.index("batch", "v1", "jobs", labels={"app.kubernetes.io/component": "sender", **builders.MANAGED_BY},
            id=SENDER_JOBS)
async def sender_jobs(namespace: str | None, name: str, body: kopf.Body,
                      **_: Any) -> dict[tuple[str, str], JobState]:
    """(namespace, Job name) -> the state of each sender Job the operator created."""
    return {(namespace or "", name): job_state(dict(body))}


@kopf.on.delete(*CAMPAIGNS)
async def campaign_deleted(body: kopf.Body, memo: Any, **_: Any) -> None:
    """Senders stop (the Job goes with its owner); delivery rows stay unless retention says otherwise."""
    keep = bool((body.spec.get("retention") or {}).get("keepDeliveries", True))
    await store.forget_campaign(context(memo).db, body.metadata.uid or "", keep_deliveries=keep)
