"""Acting as Telegram toward a bot's webhook: POST queued updates, retry with backoff, give up."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import aiohttp

from clarion_dev.telegram.world import BotState


@dataclass(frozen=True)
class WebhookRetry:
    """Delivery policy. Telegram retries for hours; the emulator gives up after `max_attempts`."""

    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    max_attempts: int = 8
    request_timeout_s: float = 10.0


async def deliver_loop(bot: BotState, session: aiohttp.ClientSession, retry: WebhookRetry,
                       wake: asyncio.Event) -> None:
    """Deliver `bot.updates` in update_id order, up to max_connections requests at a time.

    The head of the queue is POSTed concurrently and stays queued (so it counts as pending) until
    it was delivered or given up; failures are retried, in order, after a backoff.
    """
    attempts: dict[int, int] = {}
    failures_in_row = 0
    while True:
        hook = bot.webhook
        if hook is None:
            return
        if not bot.updates:
            wake.clear()
            await wake.wait()
            continue
        batch = list(itertools.islice(bot.updates, hook.max_connections))
        results = await asyncio.gather(*(_post(session, hook.url, hook.secret_token, update, retry)
                                         for update in batch))
        failed = False
        for update, error in zip(batch, results, strict=True):
            uid = update["update_id"]
            if error is None:
                bot.webhook_deliveries += 1
                attempts.pop(uid, None)
                _discard(bot.updates, update)
                continue
            bot.webhook_failures += 1
            bot.last_error_date = int(time.time())
            bot.last_error_message = error
            count = attempts.get(uid, 0) + 1
            if count >= retry.max_attempts:
                bot.webhook_given_up += 1
                attempts.pop(uid, None)
                _discard(bot.updates, update)
            else:
                attempts[uid] = count
                failed = True
        if failed:
            failures_in_row += 1
            await asyncio.sleep(min(retry.max_backoff_s,
                                    retry.initial_backoff_s * 2 ** (failures_in_row - 1)))
        else:
            failures_in_row = 0


def _discard(queue: deque[dict[str, Any]], update: dict[str, Any]) -> None:
    """Remove an update that may already be gone (the queue can be dropped meanwhile)."""
    if queue and queue[0] is update:
        queue.popleft()
        return
    with contextlib.suppress(ValueError):
        queue.remove(update)


async def _post(session: aiohttp.ClientSession, url: str, secret: str | None, update: dict[str, object],
                retry: WebhookRetry) -> str | None:
    """POST one update; None on a 2xx, else the error text getWebhookInfo reports."""
    headers = {"Content-Type": "application/json"}
    if secret:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    try:
        async with session.post(url, data=json.dumps(update), headers=headers,
                                timeout=aiohttp.ClientTimeout(total=retry.request_timeout_s)) as resp:
            await resp.read()
            if 200 <= resp.status < 300:
                return None
            return f"Wrong response from the webhook: {resp.status} {resp.reason or ''}".rstrip()
    except TimeoutError:
        return "Connection timed out"
    except aiohttp.ClientConnectorError:
        return "Connection refused"
    except aiohttp.ClientError as exc:
        return f"Connection error: {type(exc).__name__}"
