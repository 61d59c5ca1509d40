"""The schema migrations apply to an empty database and are safe to re-run."""

from __future__ import annotations

import asyncpg
import pytest
from clarion.db import apply_migrations
from clarion.db.migrations import MigrationError, load_migrations

pytestmark = pytest.mark.integration


async def test_migrations_apply_to_empty_database_and_rerun_is_a_no_op(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        # The template was migrated already: a second run applies nothing and changes nothing.
        assert await apply_migrations(conn) == []
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = {r["tablename"] for r in rows}
        assert {"channels", "subscribers", "campaigns", "deliveries", "notifications", "managed_groups",
                "group_members", "audit_log", "schema_migrations"} <= tables
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")
        versions = [r["version"] for r in rows]
        assert versions == [m.version for m in load_migrations()]
    finally:
        await conn.close()


async def test_migrations_from_scratch_create_every_table(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        applied = await apply_migrations(conn)
        assert applied == [m.version for m in load_migrations()]
        assert await apply_migrations(conn) == []
    finally:
        await conn.close()


async def test_an_edited_applied_migration_is_refused(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE schema_migrations SET checksum = 'tampered' WHERE version = 1")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await apply_migrations(conn)
    finally:
        await conn.close()


async def test_delivery_is_unique_per_campaign_and_chat(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        channel = await conn.fetchval(
            "INSERT INTO channels (namespace, name, type) VALUES ('ns', 'c', 'telegram') RETURNING id")
        campaign = await conn.fetchval(
            "INSERT INTO campaigns (namespace, name, uid, channel_id, spec, message_hash)"
            " VALUES ('ns', 'bc', 'u1', $1, '{}', 'h') RETURNING id", channel)
        await conn.execute("INSERT INTO deliveries (campaign_id, chat_id) VALUES ($1, 42)", campaign)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO deliveries (campaign_id, chat_id) VALUES ($1, 42)", campaign)
