"""`clarion.outages`: which errors are waited out, and for how long."""

from __future__ import annotations

import asyncpg
import pytest
import redis.exceptions as redis_errors
from clarion.outages import database_unavailable, redis_unavailable, ride_out
from clarion_webhook.errors import DATABASE_ERRORS
from clarion_webhook.inbox import postgres_away

pytestmark = pytest.mark.unit


def test_connection_level_errors_are_outages_and_query_errors_are_not() -> None:
    assert database_unavailable(ConnectionRefusedError())
    assert database_unavailable(asyncpg.CannotConnectNowError("the database system is starting up"))
    assert database_unavailable(asyncpg.InterfaceError("connection is closed"))
    assert not database_unavailable(asyncpg.InterfaceError("cannot perform operation: another operation"))
    # seen when Postgres stopped while a sender's transaction was reading a reply (the chaos test)
    assert database_unavailable(asyncpg.InternalClientError(
        "cannot switch to state 15; another operation (2) is in progress"))
    assert not database_unavailable(asyncpg.InternalClientError("unexpected codec"))
    assert not database_unavailable(asyncpg.UniqueViolationError("duplicate key"))
    assert redis_unavailable(redis_errors.AuthenticationError("WRONGPASS"))
    assert redis_unavailable(redis_errors.BusyLoadingError("LOADING"))
    assert not redis_unavailable(redis_errors.ResponseError("WRONGTYPE"))


def test_the_api_takes_a_connection_cut_mid_reply_for_postgres_away_not_for_a_crash() -> None:
    # The API's accept path catches DATABASE_ERRORS and, for Postgres away, stores into the inbox;
    # before, this error escaped as a 500 (seen in the acceptance run while Postgres was stopped).
    cut = asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress")
    assert isinstance(cut, DATABASE_ERRORS)
    assert postgres_away(cut)


async def test_an_outage_is_waited_out_and_the_call_goes_on() -> None:
    failures = [ConnectionResetError(), redis_errors.ConnectionError("refused")]

    async def call() -> str:
        if failures:
            raise failures.pop()
        return "done"

    assert await ride_out("test", call, tolerance=10, first_wait=0.01, max_wait=0.02) == "done"
    assert failures == []


async def test_other_errors_are_raised_at_once() -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        await ride_out("test", call, tolerance=10, first_wait=0.01)
    assert calls == 1


async def test_a_call_on_a_pool_this_process_closed_fails_at_once_instead_of_waiting_out_an_outage() -> None:
    # asyncpg says "pool is closed" (a stopping process closed it), which once counted as Postgres away
    # and held the stop for the whole tolerance (300 s by default)
    pool = await asyncpg.create_pool("postgresql://nobody@127.0.0.1:1/none", min_size=0)
    await pool.close()
    calls = 0

    async def call() -> object:
        nonlocal calls
        calls += 1
        return await pool.fetchval("SELECT 1")

    with pytest.raises(asyncpg.InterfaceError, match="pool is closed"):
        await ride_out("test", call, tolerance=10, first_wait=0.01)
    assert calls == 1


async def test_an_outage_longer_than_the_tolerance_raises_the_last_error() -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise asyncpg.CannotConnectNowError("starting up")

    with pytest.raises(asyncpg.CannotConnectNowError):
        await ride_out("test", call, tolerance=0.2, first_wait=0.01, max_wait=0.02)
    assert calls > 1
