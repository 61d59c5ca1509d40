"""Acting as Telegram toward a bot's webhook: POST queued updates, retry with backoff, give up."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

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

    A batch is taken from the head of the queue and POSTed concurrently; updates that failed go
    back to the head, in order, and the batch is retried after a backoff.
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
        size = min(hook.max_connections, len(bot.updates))
        batch = [bot.updates.popleft() for _ in range(size)]
        bot.in_flight = len(batch)
        try:
            results = await asyncio.gather(*(_post(session, hook.url, hook.secret_token, update, retry)
                                             for update in batch))
        except asyncio.CancelledError:
            bot.updates.extendleft(reversed(batch))
            raise
        finally:
            bot.in_flight = 0
        failed = []
        for update, error in zip(batch, results, strict=True):
            uid = update["update_id"]
            if error is None:
                bot.webhook_deliveries += 1
                attempts.pop(uid, None)
                continue
            bot.webhook_failures += 1
            bot.last_error_date = int(time.time())
            bot.last_error_message = error
            count = attempts.get(uid, 0) + 1
            if count >= retry.max_attempts:
                bot.webhook_given_up += 1
                attempts.pop(uid, None)
            else:
                attempts[uid] = count
                failed.append(update)
        if failed:
            bot.updates.extendleft(reversed(failed))
            failures_in_row += 1
            await asyncio.sleep(min(retry.max_backoff_s,
                                    retry.initial_backoff_s * 2 ** (failures_in_row - 1)))
        else:
            failures_in_row = 0


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
