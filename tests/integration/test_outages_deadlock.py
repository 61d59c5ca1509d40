"""`ride_out` against a real Postgres deadlock: the transaction Postgres rolls back to break it is run
again, so both writers finish and neither process dies (a campaign sender's flusher once did)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import asyncpg
import pytest
from clarion.outages import ride_out

pytestmark = pytest.mark.integration


async def test_the_deadlock_victim_s_transaction_is_run_again_and_both_writers_finish(
    db: asyncpg.Pool,
) -> None:
    await db.execute("CREATE TABLE locks_demo (id int PRIMARY KEY, writes int NOT NULL DEFAULT 0)")
    await db.execute("INSERT INTO locks_demo (id) VALUES (1), (2)")
    both_hold_one = asyncio.Barrier(2)
    tries = {"a": 0, "b": 0}

    def writer(name: str, first: int, second: int) -> Awaitable[None]:
        async def once() -> None:
            tries[name] += 1
            async with db.acquire() as conn, conn.transaction():
                await conn.execute("UPDATE locks_demo SET writes = writes + 1 WHERE id = $1", first)
                if tries[name] == 1:  # the first time, each holds one row and wants the other's
                    await both_hold_one.wait()
                await conn.execute("UPDATE locks_demo SET writes = writes + 1 WHERE id = $1", second)
        return ride_out(f"writer {name}", once, tolerance=30, first_wait=0.01, max_wait=0.05)

    await asyncio.wait_for(asyncio.gather(writer("a", 1, 2), writer("b", 2, 1)), 60)

    # Postgres broke the deadlock by rolling one back; that one ran again: each row was written twice,
    # once by each writer, and nothing of the rolled-back try was kept.
    assert sorted(tries.values()) == [1, 2]
    assert [r["writes"] for r in await db.fetch("SELECT writes FROM locks_demo ORDER BY id")] == [2, 2]
