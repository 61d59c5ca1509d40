"""BroadcastCampaign handlers: observe (Postgres row and counts, the run's Job, the channel), decide
with `campaign_logic.decide`, carry out the one action, write the status `campaign_status` builds.

Change handlers react at once to spec edits (suspend, cancel, retryFailed); a timer refreshes
status every `campaign_status_seconds` while the campaign is live. Both take the campaign's lock, and
every action is idempotent (uid-keyed row, deterministic Job names, compare-and-set on the run
number), so neither a retry nor an operator restart creates a second snapshot or a second Job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from clarion.db.campaigns import CampaignCounts, CampaignRow
from clarion.db.pool import Db
from clarion.metrics import counter
from clarion.models import (
    BROADCAST_CAMPAIGN,
    BroadcastCampaign,
    BroadcastCampaignSpec,
    CampaignReason,
    ConditionType,
    InvalidSpec,
    Phase,
    ResourceKey,
    SecretKeyRef,
    changed_conditions,
)

from clarion_operator import builders, store, tenancy
from clarion_operator.campaign_logic import (
    Action,
    Decision,
    JobState,
    Observed,
    RateSample,
    campaign_status,
    decide,
    due,
    live,
    next_rate,
    waiting,
)
from clarion_operator.context import Context, context, object_lock
from clarion_operator.indexes import ChannelTokens, SenderJobs, first
from clarion_operator.settings import OperatorSettings
from clarion_operator.status import typed, write_status

CAMPAIGNS = BROADCAST_CAMPAIGN.selector
ACTIONS = counter("clarion_operator_campaign_actions_total",
                  "Lifecycle actions the operator carried out on campaigns (start, suspend, finish, ...).",
                  ["action"])


@dataclass(frozen=True)
class _Pass:
    """One observe-decide-act pass over one campaign: the parsed resource, its connection, the
    channel's token ref and the sender Jobs (from indexes), and the time the pass started."""

    ctx: Context
    db: Db
    campaign: BroadcastCampaign
    token_ref: SecretKeyRef | None
    jobs: SenderJobs
    now: datetime

    @property
    def spec(self) -> BroadcastCampaignSpec:
        return self.campaign.spec

    def job_name(self, row: CampaignRow) -> str:
        return builders.sender_job_name(self.campaign.name, row.run)

    def decide(self, seen: Observed) -> Decision:
        settings = self.ctx.settings
        wait = timedelta(seconds=settings.channel_wait_seconds)
        return decide(self.spec, seen, now=self.now, channel_wait=wait,
                      max_recovery_runs=settings.max_recovery_runs)


async def _create_job(run: _Pass, body: kopf.Body, row: CampaignRow) -> None:
    """Make sure the run's Job exists, and the runtime Secret its pods read (once per namespace)."""
    ctx, campaign = run.ctx, run.campaign
    if run.token_ref is None:
        raise kopf.TemporaryError("the campaign's Telegram channel is gone; cannot start senders", delay=30)
    if campaign.namespace not in ctx.runtime_secret_namespaces:
        await tenancy.ensure_runtime_secret(ctx, campaign.namespace, run.db)
    job = builders.sender_job(
        namespace=campaign.namespace, campaign=campaign.name, run=row.run, campaign_id=row.id,
        shards=row.shards, token=run.token_ref, image=ctx.settings.image,
        pull_policy=ctx.settings.image_pull_policy, runtime_secret_name=ctx.settings.runtime_secret_name,
        backoff_limit=ctx.settings.sender_backoff_limit)
    kopf.append_owner_reference(job, owner=body)
    await ctx.kube.create_job(job)


async def _observe(run: _Pass, row: CampaignRow | None) -> tuple[Observed, int | None]:
    """The observation, and the channel's row id when the campaign is due to start."""
    campaign = run.campaign
    counts = CampaignCounts()
    job = JobState.ABSENT
    channel_id = None
    if row is not None:
        counts = await store.counts(run.db, row.id)
        job = first(run.jobs, ResourceKey(campaign.namespace, run.job_name(row))) or JobState.ABSENT
    elif due(run.spec, run.now) and run.token_ref is not None:
        channel_id = await store.usable_channel(run.db, campaign.namespace, run.spec.channel_ref.name)
    seen = Observed(status_phase=campaign.status.phase, row=row, counts=counts, job=job,
                    channel_ready=channel_id is not None,
                    due_since=run.spec.start_at or campaign.created_at or run.now)
    return seen, channel_id


async def _act(run: _Pass, body: kopf.Body, decision: Decision, row: CampaignRow | None,
               counts: CampaignCounts, channel_id: int | None) -> tuple[CampaignRow | None, CampaignCounts]:
    """Carry out the decision's action; return the campaign row and the counts as they are afterwards."""
    ctx, db, campaign, spec = run.ctx, run.db, run.campaign, run.spec
    action = decision.action
    if action is Action.START:
        if channel_id is None:
            raise kopf.TemporaryError("the channel stopped being Ready before the start", delay=10)
        row = await store.start_campaign(db, campaign, channel_id=channel_id)
        if row.total > 0:
            await _create_job(run, body, row)
            kopf.event(body, type="Normal", reason=decision.reason,
                       message=f"audience snapshot of {row.total} recipients; sender Job of run {row.run}")
        return row, CampaignCounts(total=row.total, pending=row.total)
    if row is None or action is Action.NONE:
        return row, counts
    job_name = run.job_name(row)
    after: CampaignRow | None = row
    if action is Action.CREATE_JOB:
        await _create_job(run, body, row)
    elif action is Action.SUSPEND:
        await ctx.kube.suspend_job(campaign.namespace, job_name, True)
        after = await store.set_phase(db, row.id, Phase.PAUSED)
        kopf.event(body, type="Normal", reason=decision.reason, message=decision.message)
    elif action is Action.RESUME:
        after = await store.resume(db, row.id)
        await ctx.kube.suspend_job(campaign.namespace, job_name, False)
        kopf.event(body, type="Normal", reason=CampaignReason.RESUMED, message=decision.message)
    elif action is Action.CANCEL:
        after = await store.cancel(db, row.id)
        await ctx.kube.delete_job(campaign.namespace, job_name)
        kopf.event(body, type="Normal", reason=decision.reason, message=decision.message)
    elif action is Action.CANCEL_UNSENT:
        await store.cancel_unsent(db, row.id)
    elif action in (Action.FINISH, Action.FAIL):
        after = await store.set_phase(db, row.id, decision.phase, finished=True)
        level = "Normal" if decision.phase is Phase.COMPLETED else "Warning"
        kopf.event(body, type=level, reason=decision.reason, message=decision.message)
    elif action in (Action.RECOVER, Action.RETRY):
        retry = spec.retry_failed if action is Action.RETRY else None
        moved = await store.next_run(db, row, retry_observed=retry)
        if moved is not None:
            await _create_job(run, body, moved)
            kopf.event(body, type="Normal", reason=decision.reason, message=decision.message)
            return moved, await store.counts(db, moved.id)
        after = await store.get_campaign(db, campaign.uid)
    elif action is Action.NOTE_RETRY:
        after = await store.note_retry(db, row.id, spec.retry_failed)
    # Senders may have settled more while the action ran (a cancel lets in-flight sends finish).
    return after, await store.counts(db, row.id)


def _drifted(run: _Pass, row: CampaignRow) -> bool:
    """Whether message or audience were edited after the start (the edit is ignored).

    Rows started by an earlier release hashed the spec as the API server held it, without the
    model's defaults: when the hashes differ, the stored spec is hashed the current way to be sure.
    """
    current = run.spec.content_hash()
    if row.message_hash == current:
        return False
    try:
        stored = BroadcastCampaignSpec.model_validate(row.spec)
    except ValueError:
        return True
    return stored.content_hash() != current


async def reconcile_campaign(run: _Pass, body: kopf.Body, memo: Any, patch: kopf.Patch) -> None:
    """One observe-decide-act-report pass on one connection (at most `max_concurrent_reconciles` at once)."""
    campaign = run.campaign
    row = await store.get_campaign(run.db, campaign.uid)
    seen, channel_id = await _observe(run, row)
    decision = run.decide(seen)
    row, counts = await _act(run, body, decision, row, seen.counts, channel_id)
    if decision.action is not Action.NONE:
        ACTIONS.labels(decision.action.value).inc()
    if decision.action is Action.START and row is not None and counts.unsettled == 0:
        # An empty audience: nothing to send, so the same pass finishes it (no Job, one status write).
        started = Observed(status_phase=decision.phase, row=row, counts=counts, job=JobState.ABSENT,
                           channel_ready=True, due_since=seen.due_since)
        decision = run.decide(started)
        row, counts = await _act(run, body, decision, row, counts, channel_id)
        ACTIONS.labels(decision.action.value).inc()
    sample: RateSample = next_rate(memo.get("rate_sample"), counts.settled, run.now)
    memo["rate_sample"] = sample
    drift = row is not None and _drifted(run, row)
    status = campaign_status(
        campaign.status, run.spec, decision, row, counts, job_name=run.job_name(row) if row else None,
        drift=drift, rate=sample.rate, generation=campaign.generation, now=run.now)
    for cond in changed_conditions(campaign.status.conditions, status.conditions):
        if cond.type == ConditionType.SPEC_DRIFT and cond.is_true:
            kopf.event(body, type="Warning", reason=cond.reason, message=cond.message)
    write_status(patch, campaign.status, status)


async def _pass(campaign: BroadcastCampaign, body: kopf.Body, memo: Any, patch: kopf.Patch,
                channel_token_refs: ChannelTokens, sender_jobs: SenderJobs) -> None:
    ctx = context(memo)
    token_ref = first(channel_token_refs, ResourceKey(campaign.namespace, campaign.spec.channel_ref.name))
    async with object_lock(memo), ctx.reconciling, ctx.db.acquire() as conn:
        run = _Pass(ctx, conn, campaign, token_ref, sender_jobs, datetime.now(UTC))
        await reconcile_campaign(run, body, memo, patch)


@kopf.on.resume(*CAMPAIGNS)
@kopf.on.create(*CAMPAIGNS)
@kopf.on.update(*CAMPAIGNS)
@typed(BroadcastCampaign)
async def campaign_changed(campaign: BroadcastCampaign, *, body: kopf.Body, memo: Any, patch: kopf.Patch,
                           channel_token_refs: ChannelTokens, sender_jobs: SenderJobs, **_: Any) -> None:
    """A new campaign, an edit (suspend, cancel, retryFailed, ...) or an operator restart."""
    await _pass(campaign, body, memo, patch, channel_token_refs, sender_jobs)


@typed(BroadcastCampaign)
async def campaign_tick(campaign: BroadcastCampaign, *, body: kopf.Body, memo: Any, patch: kopf.Patch,
                        channel_token_refs: ChannelTokens, sender_jobs: SenderJobs, **_: Any) -> None:
    """Status from Postgres every few seconds; starts scheduled campaigns when their time comes.

    A campaign without a phase is left to the change handlers: a tick racing the first pass would
    write a stale status that can land after the newer one (kopf patches after the lock is released).
    """
    phase = campaign.status.phase
    if phase is None or waiting(campaign.spec, phase, datetime.now(UTC)):
        return
    await _pass(campaign, body, memo, patch, channel_token_refs, sender_jobs)


def _live(body: kopf.Body, **_: Any) -> bool:
    try:
        campaign = BroadcastCampaign.parse(body)
    except InvalidSpec:
        return False  # reported by the change handlers; nothing to follow until the spec is fixed
    return live(campaign.spec, campaign.status)


def register(settings: OperatorSettings) -> None:
    """Register the status timer, whose interval is a setting (`campaign_status_seconds`)."""
    kopf.timer(*CAMPAIGNS, interval=settings.campaign_status_seconds, when=_live)(campaign_tick)


@kopf.on.delete(*CAMPAIGNS)
async def campaign_deleted(body: kopf.Body, memo: Any, **_: Any) -> None:
    """Senders stop (the Job goes with its owner); delivery rows stay unless retention says otherwise.

    A spec that no longer parses keeps the rows: deleting them is what retention has to ask for.
    """
    ctx = context(memo)
    try:
        campaign = BroadcastCampaign.parse(body)
    except InvalidSpec as error:
        await store.forget_campaign(ctx.db, error.meta.uid, keep_deliveries=True)
        await tenancy.release_if_unused(ctx, error.meta.namespace)
        return
    await store.forget_campaign(ctx.db, campaign.uid, keep_deliveries=campaign.spec.retention.keep_deliveries)
    await tenancy.release_if_unused(ctx, campaign.namespace)
