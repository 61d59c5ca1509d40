"""`ride_out` across real Postgres restarts while transactions are in flight on a pool.

A clean shutdown cuts connections mid-reply. asyncpg then raises whatever state the connection was in:
refused connects, "connection was closed in the middle of operation", a closed `Transaction.__aexit__`,
and `InternalClientError("cannot switch to state 15; another operation (2) is in progress")` when the
ROLLBACK of a transaction block meets a protocol still reading the cut reply. The last one once killed
a campaign sender (the chaos test); each of them must be waited out.
"""

from __future__ import annotations

import asyncio
import functools
import itertools

import asyncpg
import pytest
from clarion.outages import ride_out
from clarion_dev.testing.servers import PrivatePostgres

pytestmark = pytest.mark.integration

RESTARTS = 6


async def test_transactions_in_flight_through_restarts_all_finish_exactly_once(
    private_postgres: PrivatePostgres,
) -> None:
    pool = await asyncpg.create_pool(private_postgres.dsn(), min_size=8, max_size=8)
    assert pool is not None
    try:
        await pool.execute("CREATE TABLE writes (call int PRIMARY KEY, rows int NOT NULL)")
        calls = itertools.count()
        done: list[int] = []
        restarting = True

        async def write(call: int) -> None:
            async with pool.acquire() as conn, conn.transaction():
                # a reply long enough to be cut in the middle, then an idempotent write
                await conn.fetch("SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g")
                await conn.execute("INSERT INTO writes VALUES ($1, 1) ON CONFLICT (call) DO NOTHING", call)

        async def writer() -> None:
            while restarting:
                call = next(calls)
                await ride_out("write", functools.partial(write, call), tolerance=60,
                               first_wait=0.05, max_wait=0.5)
                done.append(call)

        writers = [asyncio.create_task(writer()) for _ in range(8)]
        for _ in range(RESTARTS):
            await asyncio.sleep(0.5)
            await asyncio.to_thread(private_postgres.stop)
            await asyncio.sleep(0.3)
            await asyncio.to_thread(private_postgres.start)
        restarting = False
        await asyncio.wait_for(asyncio.gather(*writers), 120)  # no writer died of an error

        written = {r["call"] for r in await pool.fetch("SELECT call FROM writes")}
        assert written == set(done)  # every call that returned is written, once (the primary key)
        assert len(done) > RESTARTS * 8
    finally:
        await pool.close()
