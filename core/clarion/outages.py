"""Riding out a Postgres or Redis outage: which errors mean "the server is away", and a retry loop.

A restart, a failover or a lost connection must not kill a process that holds work: it waits for the
server with capped exponential backoff (tenacity) and goes on where it was. Only an outage longer than
the caller's tolerance, or an error that is not an outage, ends the wait with the original exception.

- Postgres unreachable: OS errors and timeouts (refused, reset, pool acquire or connect timeout),
  asyncpg's connection errors (class 08: `ConnectionDoesNotExistError`, …), `CannotConnectNowError`
  (57P03: starting up, shutting down), `AdminShutdownError` (57P01), `CrashShutdownError` (57P02),
  `TooManyConnectionsError` (53300), `InterfaceError` raised on a connection the pool lost, and
  `InternalClientError` from a connection the server cut while a reply was being read.
- Redis unreachable: redis-py's `ConnectionError` (refused, reset, `AuthenticationError` while the
  operator re-creates a lost ACL user), `TimeoutError` and `BusyLoadingError` (loading its data).
- A transaction Postgres rolled back to break a deadlock or a serialization conflict
  (`TransactionRollbackError`, class 40: 40P01, 40001): Postgres's documented remedy is to run the
  transaction again, so `ride_out` retries it too (`transaction_rolled_back`); nothing of it was kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import redis.exceptions as redis_errors
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

log = structlog.get_logger("clarion.outages")

T = TypeVar("T")

_DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)

_REDIS_UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
)


def database_unavailable(exc: BaseException) -> bool:
    """True when `exc` says Postgres could not be reached or dropped the connection."""
    if isinstance(exc, asyncpg.InterfaceError):
        # A pooled connection closed under us ("connection is closed", "cannot call ... connection
        # was closed in the middle of operation"); misuse of the API raises other interface errors.
        # Our own pool closed ("pool is closed": the process is stopping) is no outage to wait out.
        message = str(exc)
        return "closed" in message and not message.startswith("pool is")
    if isinstance(exc, asyncpg.InternalClientError):
        # "cannot switch to state N; another operation (M) is in progress": the server ended the
        # connection while its reply was being read (an admin shutdown) and the next statement on it
        # (the ROLLBACK of the transaction block) found the protocol mid-operation. Our connections
        # run one statement at a time, so only a connection the server cut gets here.
        return "another operation" in str(exc)
    return isinstance(exc, _DATABASE_UNAVAILABLE)


def redis_unavailable(exc: BaseException) -> bool:
    """True when `exc` says Redis could not be reached, refused our credentials or is loading."""
    return isinstance(exc, _REDIS_UNAVAILABLE)


def transaction_rolled_back(exc: BaseException) -> bool:
    """True when Postgres rolled the transaction back (deadlock victim, serialization failure): running
    it again is the remedy."""
    return isinstance(exc, asyncpg.TransactionRollbackError)


def store_unavailable(exc: BaseException) -> bool:
    """Postgres or Redis is away: worth waiting for."""
    return database_unavailable(exc) or redis_unavailable(exc)


async def ride_out(what: str, call: Callable[[], Awaitable[T]], *, tolerance: float,
                   first_wait: float = 0.2, max_wait: float = 5.0) -> T:
    """`await call()`, calling again while it fails because Postgres or Redis is away, or because
    Postgres rolled its transaction back (a deadlock): `call` must be safe to run again.

    Waits grow exponentially from `first_wait` to `max_wait` with full jitter (so replicas do not
    reconnect in step). After `tolerance` seconds of failures the last error is raised; any other
    error is raised at once. `what` names the operation in the log lines of the outage.
    """

    def note(state: RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        log.warning("outage.waiting", operation=what, attempt=state.attempt_number,
                    waited_seconds=round(state.seconds_since_start or 0.0, 3), error=repr(error)[:300])

    retrying = AsyncRetrying(
        retry=retry_if_exception(lambda exc: store_unavailable(exc) or transaction_rolled_back(exc)),
        wait=wait_random_exponential(multiplier=first_wait, max=max_wait),
        stop=stop_after_delay(tolerance),
        before_sleep=note,
        reraise=True,
    )

    async def attempt() -> T:  # a coroutine function, so that tenacity awaits each try
        return await call()

    return await retrying(attempt)
