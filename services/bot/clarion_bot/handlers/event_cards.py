"""Cards of events (docs/events.md): a press of a button of a notification `POST /api/v1/events` sent
with a route's `buttons` records the follow-up event (`booking_confirmed`, `booking_no_show`, ...) in
the events table, initiated by {role: admin, id: the presser's Telegram user id}; the backend reads it
with `GET /api/v1/events?reference=<event id>`. A second press of the same button records nothing new;
the card keeps its buttons, so the other answer can still be given (the backend decides which counts).
"""

from __future__ import annotations

from typing import Any

from aiogram import F, Router
from aiogram.types import CallbackQuery
from clarion.db import events
from clarion.db.channels import ChannelRecord
from clarion.fanout import CALLBACK_PREFIX, parse_callback
from clarion.i18n import Translator
from clarion.logging import get_logger
from clarion.metrics import counter

log = get_logger("clarion.bot.event_cards")

PRESSES = counter("clarion_bot_event_card_presses_total", "Presses of event cards' buttons, by result.",
                  ["result"])


async def card_pressed(query: CallbackQuery, db: Any, channel: ChannelRecord, t: Translator) -> None:
    parsed = parse_callback(query.data or "")
    card = None if parsed is None else await events.get_event_by_uuid(db, parsed[0])
    namespace = channel.key.partition(".")[0]
    if parsed is None or card is None or card.namespace != namespace:
        PRESSES.labels("unknown").inc()
        await query.answer(t("events.unknown_card"), show_alert=True)
        return
    async with db.acquire() as conn:
        recorded = await events.record_follow_up(
            conn, card, parsed[1], by=str(query.from_user.id),
            data={"chatId": query.message.chat.id if query.message else None})
    if recorded is None:
        PRESSES.labels("unknown").inc()
        await query.answer(t("events.unknown_card"), show_alert=True)
        return
    row, new = recorded
    PRESSES.labels("recorded" if new else "repeated").inc()
    log.info("event_follow_up", event_id=row.event_id, event_type=row.type, reference=card.event_id,
             channel=channel.key, recorded=new)
    await query.answer(t("events.recorded" if new else "events.already_recorded", answer=row.type))


def build_router() -> Router:
    """A new router of this feature (a router can belong to one dispatcher only)."""
    router = Router(name="event_cards")
    router.callback_query.register(card_pressed, F.data.startswith(CALLBACK_PREFIX))
    return router
