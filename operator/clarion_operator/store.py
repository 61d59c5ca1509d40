"""The operator's Postgres writes and reads: channel rows and the campaign lifecycle.

Every write is idempotent or guarded by a compare-and-set on the campaign's run, so a handler that
runs twice (a retry, a restart, a timer racing an update) changes nothing the second time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from clarion.db import campaigns as campaign_queries
from clarion.db.campaigns import CampaignCounts, CampaignRow, campaign_row
from clarion.db.pool import Db  # here: the pool, or one connection held for a whole reconcile pass
from clarion.models import BroadcastCampaign, Phase


def _maybe_row(record: Any) -> CampaignRow | None:
    return None if record is None else campaign_row(record)


@asynccontextmanager
async def _transaction(db: Db) -> AsyncIterator[Any]:
    """A transaction on the given connection, or on one taken from the pool."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn, conn.transaction():
            yield conn
    else:
        async with db.transaction():
            yield db


async def upsert_channel(
    db: asyncpg.Pool,
    *,
    namespace: str,
    name: str,
    type_: str,
    uid: str,
    bot_id: int | None,
    bot_username: str | None,
    api_base_url: str | None,
    webhook_secret_sha256: str | None,
    config: dict[str, Any],
    webapp_secret: bytes | None = None,
    templates: list[dict[str, Any]],
    ready: bool,
) -> int:
    """Insert or refresh the channel's row (reviving a deleted one); bot facts are kept when unknown.

    `templates` are `StoredTemplate.to_json()` entries (migration 0010). `webapp_secret` is the Mini App
    key derived from a bot token that getMe accepted (clarion.telegram.webapp), kept like the bot facts
    when unknown.
    """
    channel_id: int = await db.fetchval(
        """INSERT INTO channels (namespace, name, type, uid, bot_id, bot_username, api_base_url,
                                 webhook_secret_sha256, config, ready, templates, webapp_secret)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
           ON CONFLICT (namespace, name) DO UPDATE SET
               type = EXCLUDED.type, uid = EXCLUDED.uid,
               bot_id = COALESCE(EXCLUDED.bot_id, channels.bot_id),
               bot_username = COALESCE(EXCLUDED.bot_username, channels.bot_username),
               api_base_url = EXCLUDED.api_base_url,
               webhook_secret_sha256 = COALESCE(EXCLUDED.webhook_secret_sha256,
                                                channels.webhook_secret_sha256),
               config = EXCLUDED.config, ready = EXCLUDED.ready, templates = EXCLUDED.templates,
               webapp_secret = COALESCE(EXCLUDED.webapp_secret, channels.webapp_secret),
               deleted_at = NULL, updated_at = now()
           RETURNING id""",
        namespace, name, type_, uid, bot_id, bot_username, api_base_url, webhook_secret_sha256, config, ready,
        templates, webapp_secret,
    )
    return channel_id


async def mark_channel_deleted(db: asyncpg.Pool, namespace: str, name: str, uid: str) -> None:
    """The channel is gone: not ready, deleted_at set (rows that refer to it stay for audit)."""
    await db.execute(
        """UPDATE channels SET ready = false, deleted_at = COALESCE(deleted_at, now()), updated_at = now()
           WHERE namespace = $1 AND name = $2 AND uid = $3""",
        namespace, name, uid,
    )


async def usable_channel(db: Db, namespace: str, name: str) -> int | None:
    """The id of the channel when it exists, is not deleted and is Ready."""
    channel_id: int | None = await db.fetchval(
        "SELECT id FROM channels WHERE namespace = $1 AND name = $2 AND deleted_at IS NULL AND ready",
        namespace, name,
    )
    return channel_id


async def get_campaign(db: Db, uid: str) -> CampaignRow | None:
    return _maybe_row(await db.fetchrow("SELECT * FROM campaigns WHERE uid = $1", uid))


async def counts(db: Db, campaign_id: int) -> CampaignCounts:
    return await campaign_queries.counts(db, campaign_id)


async def start_campaign(db: Db, campaign: BroadcastCampaign, *, channel_id: int) -> CampaignRow:
    """Insert the campaign (phase Sending) and snapshot its audience, in one transaction.

    The row stores the spec as the model dumps it (every default filled in), which the senders
    parse back with the same model. It is keyed by the resource's uid: when it already exists
    nothing is inserted or snapshotted again, and the existing row is returned.
    """
    spec = campaign.spec
    async with _transaction(db) as conn:
        record = await conn.fetchrow(
            """INSERT INTO campaigns (namespace, name, uid, channel_id, spec, message_hash, phase, run,
                                      shards, started_at)
                VALUES ($1, $2, $3, $4, $5, $6, 'Sending', 1, $7, now())
                ON CONFLICT (uid) DO NOTHING
                RETURNING *""",
            campaign.namespace, campaign.name, campaign.uid, channel_id, spec.to_k8s(), spec.content_hash(),
            spec.delivery.parallelism,
        )
        if record is None:
            return campaign_row(await conn.fetchrow("SELECT * FROM campaigns WHERE uid = $1", campaign.uid))
        total = await campaign_queries.snapshot_audience(conn, record["id"], channel_id, spec.audience,
                                                         spec.delivery.parallelism)
    await campaign_queries.analyze_after_snapshot(db, total)
    return campaign_row({**record, "total": total})


async def set_phase(db: Db, campaign_id: int, phase: Phase, *, finished: bool = False) -> CampaignRow | None:
    """Record the phase the senders read (Paused and Cancelled make them stop); the row afterwards."""
    return _maybe_row(await db.fetchrow(
        """UPDATE campaigns SET phase = $2,
                  completed_at = CASE WHEN $3 THEN COALESCE(completed_at, now()) ELSE NULL END
           WHERE id = $1 RETURNING *""",
        campaign_id, phase, finished,
    ))


async def cancel(db: Db, campaign_id: int) -> CampaignRow | None:
    """Phase Cancelled (senders stop at their next check) and the unsent deliveries cancelled, at once."""
    async with _transaction(db) as conn:
        after = await set_phase(conn, campaign_id, Phase.CANCELLED, finished=True)
        await campaign_queries.cancel_unsent(conn, campaign_id)
    return after


async def cancel_unsent(db: Db, campaign_id: int) -> int:
    """Cancel what the senders of a cancelled campaign gave back since (or left with a lapsed lease)."""
    return await campaign_queries.cancel_unsent(db, campaign_id)


async def resume(db: Db, campaign_id: int) -> CampaignRow | None:
    """Back to Sending after a pause; the count of early-ended runs starts over. The row afterwards."""
    return _maybe_row(await db.fetchrow(
        "UPDATE campaigns SET phase = 'Sending', recovery_runs = 0 WHERE id = $1 RETURNING *", campaign_id))


async def next_run(db: Db, row: CampaignRow, *, retry_observed: int | None) -> CampaignRow | None:
    """Start run `row.run + 1` (phase Sending); with `retry_observed`, first put failed deliveries back.

    Compare-and-set on the run number: when another call already moved the run on, nothing changes
    and None is returned.
    """
    async with _transaction(db) as conn:
        record = await conn.fetchrow(
            """UPDATE campaigns SET run = run + 1, phase = 'Sending', completed_at = NULL,
                       retry_observed = COALESCE($3, retry_observed),
                       recovery_runs = CASE WHEN $3::integer IS NULL THEN recovery_runs + 1 ELSE 0 END
                WHERE id = $1 AND run = $2
                RETURNING *""",
            row.id, row.run, retry_observed,
        )
        if record is None:
            return None
        if retry_observed is not None:
            await campaign_queries.reset_failed(conn, row.id)
        return campaign_row(record)


async def note_retry(db: Db, campaign_id: int, retry_observed: int) -> CampaignRow | None:
    return _maybe_row(await db.fetchrow(
        "UPDATE campaigns SET retry_observed = $2 WHERE id = $1 RETURNING *", campaign_id, retry_observed))


async def forget_campaign(db: Db, uid: str, *, keep_deliveries: bool) -> None:
    """The resource is being deleted: stop senders, and drop delivery rows unless they are kept."""
    async with _transaction(db) as conn:
        campaign_id = await conn.fetchval(
            """UPDATE campaigns SET deleted_at = COALESCE(deleted_at, now()),
                      phase = CASE WHEN phase IN ('Sending', 'Paused') THEN 'Cancelled' ELSE phase END
               WHERE uid = $1 RETURNING id""",
            uid,
        )
        if campaign_id is not None and not keep_deliveries:
            await conn.execute("DELETE FROM deliveries WHERE campaign_id = $1", campaign_id)

