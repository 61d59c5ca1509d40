"""NotificationRoute rows and events (migration 0022, docs/events.md).

Each write says how it stays idempotent:

- `upsert_route` is keyed by (namespace, name) and records the uid: a re-created route revives the row;
  `mark_route_deleted` touches only the row of the uid it is given, so the late delete of an older
  object leaves its successor alone.
- `claim_event` inserts the event row keyed by (namespace, event id) `ON CONFLICT DO NOTHING`: a second
  request with the same id (or one racing the first, which waits for the first's commit) gets the stored
  row and answers its result; the fan-out's notifications and the result are written in the same
  transaction as the claim, so an event is fanned out completely or not at all.
- `record_follow_up` stores a button press as an event whose id is derived from the card's event and the
  button's event type, so a second press of the same button reads the first one back.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import ValidationError

from clarion.db.pool import Db
from clarion.models.route import NotificationRouteSpec


@dataclass(frozen=True)
class RouteRow:
    """A live route as the API reads it: its name and its spec through the model (ADR 0004)."""

    name: str
    spec: NotificationRouteSpec


async def upsert_route(db: Db, *, namespace: str, name: str, uid: str, spec: NotificationRouteSpec,
                       callback_secret: bytes | None = None) -> None:
    """Store the route's current spec and its callback's signing key (None: no callback, or its Secret
    cannot be read); revives a deleted row of the same name."""
    await db.execute(
        """INSERT INTO notification_routes (namespace, name, uid, event_type, initiator_role, enabled, spec,
                                            callback_url, callback_secret)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (namespace, name) DO UPDATE SET
               uid = EXCLUDED.uid, event_type = EXCLUDED.event_type,
               initiator_role = EXCLUDED.initiator_role, enabled = EXCLUDED.enabled, spec = EXCLUDED.spec,
               callback_url = EXCLUDED.callback_url, callback_secret = EXCLUDED.callback_secret,
               updated_at = now(), deleted_at = NULL""",
        namespace, name, uid, spec.event_type, spec.initiator_role, spec.enabled, json.dumps(spec.to_k8s()),
        spec.callback.url if spec.callback else None, callback_secret)


async def mark_route_deleted(db: Db, namespace: str, name: str, uid: str) -> bool:
    """Mark the route of this uid deleted; False when the row is another object's (or gone)."""
    result: str = await db.execute(
        """UPDATE notification_routes SET deleted_at = now(), updated_at = now()
           WHERE namespace = $1 AND name = $2 AND uid = $3 AND deleted_at IS NULL""", namespace, name, uid)
    return result.endswith(" 1")


async def matching_routes(db: Db, namespace: str, event_type: str, initiator_role: str) -> list[RouteRow]:
    """The live routes of `namespace` for this event type and initiator role, by name. A stored spec this
    version cannot read (written by a newer operator) is skipped; the operator rewrites it."""
    rows = await db.fetch(
        """SELECT name, spec FROM notification_routes
           WHERE namespace = $1 AND event_type = $2 AND initiator_role = $3 AND deleted_at IS NULL
           ORDER BY name""", namespace, event_type, initiator_role)
    found = []
    for row in rows:
        try:
            spec = NotificationRouteSpec.model_validate(_json(row["spec"]))
        except ValidationError:
            continue
        found.append(RouteRow(row["name"], spec))
    return found


@dataclass(frozen=True)
class EventRow:
    id: uuid.UUID
    namespace: str
    event_id: str
    type: str
    reference: str | None
    initiator: dict[str, Any]
    data: dict[str, Any]
    follow_ups: list[str]
    callback_route: str | None
    received_at: datetime
    result: dict[str, Any] | None


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _event(record: asyncpg.Record) -> EventRow:
    return EventRow(
        id=record["id"], namespace=record["namespace"], event_id=record["event_id"], type=record["type"],
        reference=record["reference"], initiator=_json(record["initiator"]), data=_json(record["data"]),
        follow_ups=_json(record["follow_ups"]), callback_route=record["callback_route"],
        received_at=record["received_at"],
        result=_json(record["result"]))


_EVENT = ("id, namespace, event_id, type, reference, initiator, data, follow_ups, callback_route, "
          "received_at, result")


async def claim_event(conn: Db, *, id: uuid.UUID, namespace: str, event_id: str, type: str,
                      initiator: dict[str, Any], data: dict[str, Any], api_key_id: int | None,
                      reference: str | None = None,
                      result: dict[str, Any] | None = None) -> tuple[EventRow, bool]:
    """Insert the event (inside the caller's transaction); (row, True) when this call inserted it,
    (the stored row, False) when the id was taken before."""
    record = await conn.fetchrow(
        f"""INSERT INTO events (id, namespace, event_id, type, reference, initiator, data, api_key_id, result)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
            ON CONFLICT (namespace, event_id) DO NOTHING
            RETURNING {_EVENT}""",  # noqa: S608 - a constant column list
        id, namespace, event_id, type, reference, json.dumps(initiator), json.dumps(data), api_key_id,
        None if result is None else json.dumps(result))
    if record is not None:
        return _event(record), True
    existing = await get_event(conn, namespace, event_id)
    assert existing is not None
    return existing, False


async def finish_event(conn: Db, id: uuid.UUID, result: dict[str, Any], follow_ups: list[str],
                       callback_route: str | None) -> None:
    """Keep the answer of the event's fan-out, the event types of its card's buttons and the route whose
    callback receives them."""
    await conn.execute("UPDATE events SET result = $2, follow_ups = $3, callback_route = $4 WHERE id = $1",
                       id, json.dumps(result), json.dumps(follow_ups), callback_route)


async def get_event(db: Db, namespace: str, event_id: str) -> EventRow | None:
    record = await db.fetchrow(
        f"SELECT {_EVENT} FROM events WHERE namespace = $1 AND event_id = $2",  # noqa: S608
        namespace, event_id)
    return None if record is None else _event(record)


async def get_event_by_uuid(db: Db, id: uuid.UUID) -> EventRow | None:
    record = await db.fetchrow(f"SELECT {_EVENT} FROM events WHERE id = $1", id)  # noqa: S608
    return None if record is None else _event(record)


async def list_by_reference(db: Db, namespace: str, reference: str, limit: int) -> list[EventRow]:
    """The follow-up events of the event `reference`, newest first."""
    rows = await db.fetch(
        f"""SELECT {_EVENT} FROM events WHERE namespace = $1 AND reference = $2
            ORDER BY received_at DESC, id LIMIT $3""", namespace, reference, limit)  # noqa: S608
    return [_event(r) for r in rows]


def follow_up_id(event_id: str, event_type: str) -> str:
    """The id of the follow-up event `event_type` of the event `event_id` (one per button)."""
    return f"{event_id}:{event_type}"


async def record_follow_up(conn: Db, card: EventRow, button: int, *, by: str,
                           data: dict[str, Any]) -> tuple[EventRow, bool] | None:
    """Record the press of button `button` of the card of event `card` by `by` (a Telegram user id) as
    the follow-up event, in one transaction on the connection `conn`: (row, True) when recorded now,
    (the earlier row, False) when that button was pressed before, None when the card has no such
    button."""
    if not 0 <= button < len(card.follow_ups):
        return None
    event_type = card.follow_ups[button]
    async with conn.transaction():
        row, new = await claim_event(
            conn, id=uuid.uuid4(), namespace=card.namespace, event_id=follow_up_id(card.event_id, event_type),
            type=event_type, initiator={"role": "admin", "id": by}, data=data, api_key_id=None,
            reference=card.event_id, result={"recipients": []})
        if new and card.callback_route is not None:  # the callback's outbox row, with the event
            await conn.execute("INSERT INTO event_deliveries (event_id, namespace, route) "
                               "VALUES ($1, $2, $3)", row.id, card.namespace, card.callback_route)
        return row, new


@dataclass(frozen=True)
class DueDelivery:
    """A follow-up event whose callback is due: the event, where to and the signing key (None: the
    route has no callback now, or its Secret could not be read)."""

    event: EventRow
    attempts: int
    url: str | None
    secret: bytes | None


async def claim_deliveries(db: Db, limit: int, lease_seconds: float) -> list[DueDelivery]:
    """Take up to `limit` due callbacks for `lease_seconds` (their next attempt moved past the lease, in
    one short statement; `SKIP LOCKED`: two webhook replicas never take the same one). A taker that dies
    leaves them due again once the lease is over."""
    columns = ", ".join("e." + c.strip() for c in _EVENT.split(","))
    rows = await db.fetch(
        f"""WITH taken AS (
                UPDATE event_deliveries SET next_attempt_at = now() + make_interval(secs => $2)
                WHERE event_id IN (SELECT event_id FROM event_deliveries
                                   WHERE delivered_at IS NULL AND next_attempt_at <= now()
                                   ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
                RETURNING event_id, namespace, route, attempts)
            SELECT {columns}, t.attempts, r.callback_url, r.callback_secret
            FROM taken t JOIN events e ON e.id = t.event_id
            LEFT JOIN notification_routes r ON r.namespace = t.namespace AND r.name = t.route
                                            AND r.deleted_at IS NULL""", limit, lease_seconds)  # noqa: S608
    return [DueDelivery(_event(r), r["attempts"], r["callback_url"], r["callback_secret"]) for r in rows]


async def delivered(conn: Db, event_id: uuid.UUID) -> None:
    await conn.execute("UPDATE event_deliveries SET delivered_at = now(), attempts = attempts + 1, "
                       "last_error = NULL WHERE event_id = $1", event_id)


async def delivery_failed(conn: Db, event_id: uuid.UUID, error: str, retry_in_seconds: float) -> None:
    await conn.execute(
        """UPDATE event_deliveries SET attempts = attempts + 1, last_error = $2,
               next_attempt_at = now() + make_interval(secs => $3) WHERE event_id = $1""",
        event_id, error[:1000], retry_in_seconds)

