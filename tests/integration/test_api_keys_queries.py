"""API key rows in Postgres: sync, revoke and refuse are idempotent and audited; reads by id and hash."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import asyncpg
import pytest
from clarion.db import api_keys as q
from clarion.models import ApiKeySecret

pytestmark = pytest.mark.integration


def key(name: str = "backend", *, secret: bytes = b"k" * 32, uid: str = "uid-1",
        **changes: Any) -> ApiKeySecret:
    return ApiKeySecret(namespace="shop", name=name, uid=uid, channels=("orders",),
                        key_sha256=hashlib.sha256(secret).hexdigest()).model_copy(update=changes)


async def audit(db: asyncpg.Pool, subject: str = "shop/backend") -> list[tuple[str, dict[str, Any]]]:
    rows = await db.fetch("SELECT actor, action, details FROM audit_log WHERE subject = $1 ORDER BY id",
                          subject)
    assert {r["actor"] for r in rows} <= {"operator"}
    return [(r["action"], r["details"]) for r in rows]


async def test_syncing_the_same_secret_twice_writes_one_row_and_one_audit_entry(db: asyncpg.Pool) -> None:
    first = await q.sync_api_key(db, key(rate_per_minute=600))
    again = await q.sync_api_key(db, key(rate_per_minute=600))

    assert first is not None and again is None
    assert (first.namespace, first.name, first.secret_uid, first.channels, first.rate_per_minute,
            first.revoked) == ("shop", "backend", "uid-1", ("orders",), 600, False)
    assert first.key_sha256 == hashlib.sha256(b"k" * 32).hexdigest()
    entries = await audit(db)
    assert [a for a, _ in entries] == ["api_key.synced"]
    details = entries[0][1]
    assert details["fingerprint"] == first.key_sha256[:12] and details["channels"] == ["orders"]
    assert first.key_sha256 not in str(details)


async def test_a_changed_secret_updates_the_same_row(db: asyncpg.Pool) -> None:
    first = await q.sync_api_key(db, key())
    rotated = await q.sync_api_key(db, key(secret=b"n" * 40, channels=("*",), uid="uid-2"))
    assert first is not None and rotated is not None and rotated.id == first.id
    assert rotated.channels == ("*",) and rotated.secret_uid == "uid-2"
    assert await q.find_api_key(db, first.key_sha256) is None
    assert await q.find_api_key(db, rotated.key_sha256) == rotated
    assert [a for a, _ in await audit(db)] == ["api_key.synced", "api_key.synced"]


async def test_the_revoked_annotation_is_audited_as_a_revocation_once(db: asyncpg.Pool) -> None:
    await q.sync_api_key(db, key())
    revoked = await q.sync_api_key(db, key(revoked=True))
    assert revoked is not None and revoked.revoked
    assert await q.sync_api_key(db, key(revoked=True)) is None
    reinstated = await q.sync_api_key(db, key())
    assert reinstated is not None and not reinstated.revoked
    assert [a for a, _ in await audit(db)] == ["api_key.synced", "api_key.revoked", "api_key.synced"]


async def test_revoking_is_idempotent_and_keeps_the_row(db: asyncpg.Pool) -> None:
    synced = await q.sync_api_key(db, key())
    assert synced is not None
    revoked = await q.revoke_api_key(db, "shop", "backend", reason="the Secret was deleted",
                                     secret_uid="uid-1")
    assert revoked is not None and revoked.revoked and revoked.id == synced.id
    assert await q.revoke_api_key(db, "shop", "backend", reason="again") is None
    assert await q.revoke_api_key(db, "shop", "nothing", reason="no row") is None
    assert await q.get_api_key(db, synced.id) == revoked
    entries = await audit(db)
    assert [a for a, _ in entries] == ["api_key.synced", "api_key.revoked"]
    assert entries[1][1]["reason"] == "the Secret was deleted"


async def test_a_deleted_secrets_revocation_leaves_a_recreated_secrets_key_alone(db: asyncpg.Pool) -> None:
    await q.sync_api_key(db, key(uid="new-uid"))
    assert await q.revoke_api_key(db, "shop", "backend", reason="old deleted", secret_uid="old-uid") is None
    row = await q.find_api_key(db, key().key_sha256)
    assert row is not None and not row.revoked


async def test_a_refusal_revokes_a_usable_key_and_is_audited_once_per_problem(db: asyncpg.Pool) -> None:
    await q.sync_api_key(db, key())
    assert await q.refuse_api_key(db, "shop", "backend", secret_uid="uid-1", reason="data.key is missing")
    assert not await q.refuse_api_key(db, "shop", "backend", secret_uid="uid-1", reason="data.key is missing")
    assert await q.refuse_api_key(db, "shop", "backend", secret_uid="uid-1", reason="another problem")
    row = await q.find_api_key(db, key().key_sha256)
    assert row is not None and row.revoked
    entries = await audit(db)
    assert [a for a, _ in entries] == ["api_key.synced", "api_key.invalid", "api_key.invalid"]
    assert entries[1][1] == {"secret_uid": "uid-1", "reason": "data.key is missing", "revoked": True}
    assert entries[2][1]["revoked"] is False


async def test_a_refusal_without_a_row_writes_only_the_audit_entry(db: asyncpg.Pool) -> None:
    assert await q.refuse_api_key(db, "shop", "fresh", secret_uid="u", reason="too short")
    assert await q.list_api_keys(db) == []
    assert [a for a, _ in await audit(db, "shop/fresh")] == ["api_key.invalid"]


async def test_the_same_key_in_two_secrets_is_refused_without_a_write(db: asyncpg.Pool) -> None:
    await q.sync_api_key(db, key("first"))
    with pytest.raises(q.KeyInUse):
        await q.sync_api_key(db, key("second"))
    assert [r.name for r in await q.list_api_keys(db)] == ["first"]
    assert await audit(db, "shop/second") == []


async def test_reads_by_id_by_hash_and_all(db: asyncpg.Pool) -> None:
    a = await q.sync_api_key(db, key("a", secret=b"a" * 32))
    b = await q.sync_api_key(db, key("b", secret=b"b" * 32, revoked=True))
    assert a is not None and b is not None
    assert await q.get_api_key(db, a.id) == a and await q.get_api_key(db, 999_999) is None
    assert await q.find_api_key(db, b.key_sha256) == b and await q.find_api_key(db, "0" * 64) is None
    assert await q.list_api_keys(db) == [a, b]
    assert await q.list_api_keys(db, usable_only=True) == [a]


async def test_every_write_that_changes_a_row_is_announced_with_its_id(db: asyncpg.Pool,
                                                                         database_url: str) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(database_url)
    try:
        await listener.add_listener(q.API_KEYS_NOTIFY, lambda *args: heard.put_nowait(args[3]))
        row = await q.sync_api_key(db, key())
        assert row is not None
        assert await asyncio.wait_for(heard.get(), 5) == str(row.id)
        await q.sync_api_key(db, key())  # nothing changed: nothing announced ...
        other = await q.sync_api_key(db, key("other", secret=b"o" * 32))
        assert other is not None
        assert await asyncio.wait_for(heard.get(), 5) == str(other.id)  # ... so the next one is the other row
        await q.revoke_api_key(db, "shop", "backend", reason="test")
        assert await asyncio.wait_for(heard.get(), 5) == str(row.id)
    finally:
        await listener.close()


async def test_concurrent_syncs_of_one_secret_write_one_row_and_one_audit_entry(db: asyncpg.Pool) -> None:
    results = await asyncio.gather(*(q.sync_api_key(db, key()) for _ in range(8)))
    assert sum(r is not None for r in results) == 1
    assert len(await q.list_api_keys(db)) == 1
    assert len(await audit(db)) == 1
