"""Follow-up events POSTed to the backend (docs/events.md, "Callbacks"): the webhook service delivers
the outbox rows the bot writes with each follow-up (`event_deliveries`, migration 0022).

Every `callback_poll_seconds` a replica takes the due rows for a lease (`claim_deliveries`: one short
statement; two replicas never take one row, a replica that dies leaves its rows due again when the
lease ends), POSTs each event (a batch at once, outside any transaction) as the JSON
`GET /api/v1/events/{id}` returns, signed with the route's callback secret
(`X-Clarion-Signature: sha256=<hex HMAC-SHA256 of the body>`), and marks it
delivered on a 2xx. Anything else (an error status, a timeout, no route or secret now) is an attempt:
the row is tried again after 2^attempts seconds, at most `callback_max_backoff_seconds` apart, for as
long as it takes; the row is never dropped. A backend may therefore get an event twice (a 2xx lost on
the way back): `X-Clarion-Event` (the event's id) is the key to deduplicate on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json

import aiohttp
import asyncpg
from clarion.db import events as ev
from clarion.logging import get_logger
from clarion.metrics import counter

from clarion_webhook.events import stored_answer
from clarion_webhook.tasks import stop_within

log = get_logger("clarion.webhook.callbacks")

CALLBACKS = counter("clarion_event_callbacks_total", "Follow-up event callbacks attempted, by result.",
                    ["result"])
SIGNATURE_HEADER = "X-Clarion-Signature"


def signature(secret: bytes, body: bytes) -> str:
    """The header value a backend checks: `sha256=` and the hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def backoff_seconds(attempts: int, cap: float) -> float:
    """Seconds before the next try after `attempts` failed ones: 2, 4, 8, ... up to `cap`."""
    return float(min(cap, 2 ** min(attempts, 30)))


class CallbackDeliverer:
    """Delivers due follow-up callbacks; one per webhook replica."""

    def __init__(self, db: asyncpg.Pool, *, poll_seconds: float = 1.0, timeout_seconds: float = 10.0,
                 max_backoff_seconds: float = 3600.0, batch: int = 20) -> None:
        self.db, self.poll_seconds, self.batch = db, poll_seconds, batch
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self.max_backoff_seconds = max_backoff_seconds
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-callbacks")

    async def stop(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - a grace period, then cancel
        """Stop after the batch under way; past `timeout`, cancel (its rows roll back and stay due)."""
        self._stopping.set()
        await stop_within(self._task, timeout)

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            while not self._stopping.is_set():
                try:
                    await self.deliver_due(session)
                except Exception as exc:  # Postgres away: the rows stay due
                    log.warning("event_callbacks_failed", error=repr(exc)[:300])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.poll_seconds)

    async def deliver_due(self, session: aiohttp.ClientSession) -> int:
        """One pass: every row of one batch attempted at once; returns how many were delivered."""
        lease = self.timeout.total or 10.0
        taken = await ev.claim_deliveries(self.db, self.batch, lease * 2)
        errors = await asyncio.gather(*(self._post(session, due) for due in taken))
        for due, error in zip(taken, errors, strict=True):
            if error is None:
                await ev.delivered(self.db, due.event.id)
                CALLBACKS.labels("delivered").inc()
                continue
            CALLBACKS.labels("failed").inc()
            retry = backoff_seconds(due.attempts + 1, self.max_backoff_seconds)
            log.info("event_callback_failed", event_id=due.event.event_id, attempts=due.attempts + 1,
                     retry_in_seconds=retry, error=error)
            await ev.delivery_failed(self.db, due.event.id, error, retry)
        return errors.count(None)

    async def _post(self, session: aiohttp.ClientSession, due: ev.DueDelivery) -> str | None:
        """None when the backend took it (2xx), else what went wrong."""
        if due.url is None or due.secret is None:
            return "the route has no callback, or its Secret cannot be read"
        body = json.dumps(stored_answer(due.event).model_dump(mode="json", by_alias=True, exclude_none=True),
                          separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "X-Clarion-Event": due.event.event_id,
                   SIGNATURE_HEADER: signature(due.secret, body)}
        try:
            async with session.post(due.url, data=body, headers=headers) as response:
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"[:300]
