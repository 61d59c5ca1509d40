"""Routing decisions without servers: quiet hours on the recipient's wall clock (midnight, DST), the
fan-out table of `clarion.fanout.plan` over the example routes, and what the operator reports."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from clarion.db.channels import ChannelRecord, StoredTemplate
from clarion.db.events import RouteRow
from clarion.fanout import Delivery, FanOutProblem, Skip, callback_data, parse_callback, plan
from clarion.models import NotificationRouteSpec, RouteReason
from clarion.models.channel import ChannelTemplate
from clarion.models.event import EventRequest
from clarion.models.route import QuietHours
from clarion_operator.routes_logic import ready_condition, route_problems
from clarion_webhook.callbacks import backoff_seconds, signature

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "booking-routes.yaml"
BERLIN = ZoneInfo("Europe/Berlin")
EVENT_UUID = uuid.UUID(int=7)


def _routes() -> dict[str, RouteRow]:
    return {
        doc["metadata"]["name"]: RouteRow(
            doc["metadata"]["name"], NotificationRouteSpec.model_validate(doc["spec"])
        )
        for doc in yaml.safe_load_all(EXAMPLES.read_text())
        if doc and doc["kind"] == "NotificationRoute"
    }


def _channel(
    name: str,
    type_: str = "telegram",
    *,
    ready: bool = True,
    id_: int = 1,
    templates: dict[str, StoredTemplate] | None = None,
) -> ChannelRecord:
    return ChannelRecord(
        id=id_,
        key=f"tests.{name}",
        type=type_,
        bot_id=1,
        bot_username="b",
        api_base_url=None,
        webhook_secret_sha256=None,
        ready=ready,
        templates=templates or {},
    )


def _event(type_: str, initiator: str, **recipients: dict[str, Any]) -> EventRequest:
    return EventRequest.model_validate(
        {
            "type": type_,
            "id": "e1",
            "initiator": {"role": initiator, "id": initiator[0]},
            "recipients": [{"role": role, "id": role[0], **extra} for role, extra in recipients.items()],
            "data": {"service": "Haircut", "when": "5 Dec 10:00"},
        }
    )


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "until"),
    [
        ("2026-06-10T21:30:00", "2026-06-11T06:00:00"),  # 23:30 Berlin (UTC+2): quiet until 08:00 next day
        ("2026-06-11T03:00:00", "2026-06-11T06:00:00"),  # 05:00 Berlin, after midnight: until 08:00 today
        ("2026-06-11T06:00:00", None),  # 08:00 Berlin: the window has ended
        ("2026-06-10T19:59:00", None),  # 21:59 Berlin: not yet
        ("2026-06-10T20:00:00", "2026-06-11T06:00:00"),  # 22:00 Berlin: starts
        ("2026-01-10T21:30:00", "2026-01-11T07:00:00"),  # winter, UTC+1: 22:30 to 08:00 is 07:00 UTC
    ],
)
def test_quiet_hours_across_midnight_are_read_on_the_recipient_s_wall_clock(
    now: str, until: str | None
) -> None:
    found = QuietHours(start="22:00", end="08:00").quiet_until(_utc(now), BERLIN)
    assert found == (None if until is None else _utc(until))


def test_a_night_that_changes_to_summer_time_ends_at_eight_local_which_is_one_hour_earlier_in_utc() -> None:
    # 2026-03-29: Berlin jumps from 02:00 CET to 03:00 CEST. 23:00 CET on the 28th is 22:00 UTC.
    assert QuietHours(start="22:00", end="08:00").quiet_until(_utc("2026-03-28T22:00:00"), BERLIN) == _utc(
        "2026-03-29T06:00:00"
    )


def test_a_night_that_changes_to_winter_time_ends_at_eight_local_one_hour_later_in_utc() -> None:
    # 2026-10-25: 03:00 CEST becomes 02:00 CET.
    assert QuietHours(start="22:00", end="08:00").quiet_until(_utc("2026-10-24T21:00:00"), BERLIN) == _utc(
        "2026-10-25T07:00:00"
    )


def test_an_end_inside_the_spring_gap_is_read_with_the_offset_before_it() -> None:
    # 02:30 does not exist on 2026-03-29 in Berlin: read as 02:30 CET = 01:30 UTC (03:30 CEST).
    quiet = QuietHours(start="01:00", end="02:30")
    assert quiet.quiet_until(_utc("2026-03-29T00:15:00"), BERLIN) == _utc("2026-03-29T01:30:00")


def test_a_daytime_window_does_not_wrap() -> None:
    quiet = QuietHours(start="12:00", end="14:00")
    assert quiet.quiet_until(_utc("2026-06-10T10:30:00"), BERLIN) == _utc("2026-06-10T12:00:00")
    assert quiet.quiet_until(_utc("2026-06-10T13:00:00"), BERLIN) is None


def test_quiet_hours_must_not_be_empty() -> None:
    with pytest.raises(ValueError, match="start and end must differ"):
        QuietHours(start="08:00", end="08:00")


def test_callback_data_round_trips_and_fits_telegram_s_64_bytes() -> None:
    data = callback_data(EVENT_UUID, 1)
    assert len(data.encode()) <= 64
    assert parse_callback(data) == (EVENT_UUID, 1)
    assert parse_callback("lang:en") is None
    assert parse_callback("ev:nothex:1") is None


# The matrix of issue 17: (route, initiator) -> the template each role gets (None: nothing).
MATRIX = [
    (
        "booking-created-by-client",
        "client",
        {"client": None, "specialist": "new-booking", "admin": "new-booking"},
    ),
    (
        "booking-created-by-admin",
        "admin",
        {"client": "created-for-you", "specialist": "new-booking", "admin": None},
    ),
    (
        "booking-cancelled-by-client",
        "client",
        {"client": None, "specialist": "cancelled", "admin": "cancelled"},
    ),
    (
        "booking-cancelled-by-admin",
        "admin",
        {"client": "your-booking-cancelled", "specialist": "cancelled", "admin": None},
    ),
    (
        "booking-cancelled-by-specialist",
        "specialist",
        {"client": "your-booking-cancelled", "specialist": None, "admin": "cancelled"},
    ),
    (
        "booking-rescheduled-by-admin",
        "admin",
        {"client": "rescheduled", "specialist": "rescheduled", "admin": None},
    ),
]


@pytest.mark.parametrize(("route", "initiator", "expected"), MATRIX, ids=[m[0] for m in MATRIX])
def test_the_example_routes_notify_every_role_but_the_initiator(
    route: str, initiator: str, expected: dict[str, str | None]
) -> None:
    routes = _routes()
    spec = routes[route].spec
    event = _event(
        spec.event_type,
        initiator,
        client={"telegramChatId": 1},
        specialist={"telegramChatId": 2},
        admin={"telegramChatId": 3},
    )
    decided = plan(
        event,
        [routes[route]],
        {"clarion-bot": _channel("clarion-bot")},
        set(),
        _utc("2026-06-10T12:00:00"),
        EVENT_UUID,
    )
    got = {
        event.recipients[o.index].role: (o.content["template"] if isinstance(o, Delivery) else o.reason)
        for o in decided.outcomes
    }
    assert got == {role: template or "initiator" for role, template in expected.items()}


def test_the_client_s_confirmation_carries_the_footer_in_their_language() -> None:
    routes = _routes()
    event = _event("booking_created", "specialist", client={"telegramChatId": 1, "language": "ru"})
    event = event.model_copy(
        update={"initiator": event.initiator.model_copy(update={"role": "client", "id": "x"})}
    )
    decided = plan(
        event,
        [routes["booking-created-by-client"]],
        {"clarion-bot": _channel("clarion-bot")},
        set(),
        _utc("2026-06-10T12:00:00"),
        EVENT_UUID,
    )
    (delivery,) = decided.outcomes
    assert isinstance(delivery, Delivery)
    footer = "Записывайтесь на Haircut снова на example.com"
    assert delivery.content["text"] == f"Ваша запись на Haircut 5 Dec 10:00 подтверждена.\n\n{footer}"
    assert delivery.address == "1"


def test_booking_done_gives_the_admin_a_card_with_yes_and_no() -> None:
    routes = _routes()
    event = _event("booking_done", "system", client={"telegramChatId": 1}, admin={"telegramChatId": 3})
    decided = plan(
        event,
        [routes["booking-done"]],
        {"clarion-bot": _channel("clarion-bot")},
        set(),
        _utc("2026-06-10T12:00:00"),
        EVENT_UUID,
    )
    client, admin = decided.outcomes
    assert client == Skip(0, None, "no_route")
    assert isinstance(admin, Delivery)
    assert admin.content["buttons"] == [
        [
            {"text": "Yes", "callbackData": callback_data(EVENT_UUID, 0)},
            {"text": "No", "callbackData": callback_data(EVENT_UUID, 1)},
        ]
    ]
    assert decided.follow_ups == ["booking_confirmed", "booking_no_show"]


def _push_route(**extra: Any) -> RouteRow:
    return RouteRow(
        "r",
        NotificationRouteSpec.model_validate(
            {
                "eventType": "booking_created",
                "initiatorRole": "admin",
                **extra,
                "recipients": [
                    {
                        "role": "client",
                        "channels": [
                            {"channelRef": "bot", "template": "t"},
                            {"channelRef": "push", "template": "t"},
                        ],
                    }
                ],
                "templates": [
                    {
                        "name": "t",
                        "variants": [{"language": "en", "subject": "Booked", "text": "On {{ when }}"}],
                        "variables": [{"name": "when"}],
                    }
                ],
            }
        ),
    )


def test_a_client_without_telegram_is_reached_by_web_push_and_with_neither_is_told_why() -> None:
    sub = uuid.uuid4()
    channels = {"bot": _channel("bot", id_=1), "push": _channel("push", "webpush", id_=2)}
    event = EventRequest.model_validate(
        {
            "type": "booking_created",
            "id": "e",
            "initiator": {"role": "admin", "id": "a"},
            "data": {"when": "today"},
            "recipients": [
                {"role": "client", "id": "c1", "pushSubscriptionId": str(sub)},
                {"role": "client", "id": "c2", "pushSubscriptionId": str(uuid.uuid4())},
                {"role": "client", "id": "c3"},
            ],
        }
    )
    decided = plan(event, [_push_route()], channels, {(2, sub)}, _utc("2026-06-10T12:00:00"), EVENT_UUID)
    pushed, unknown_subscription, nothing = decided.outcomes
    assert isinstance(pushed, Delivery)
    assert (pushed.channel.key, pushed.address) == ("tests.push", str(sub))
    assert (pushed.content["title"], pushed.content["body"]) == ("Booked", "On today")
    assert unknown_subscription == Skip(1, "r", "no_reachable_channel")
    assert nothing == Skip(2, "r", "no_reachable_channel")


def test_a_disabled_route_and_quiet_hours_are_reported() -> None:
    channels = {"bot": _channel("bot")}
    event = EventRequest.model_validate(
        {
            "type": "booking_created",
            "id": "e",
            "initiator": {"role": "admin", "id": "a"},
            "data": {"when": "today"},
            "recipients": [{"role": "client", "id": "c", "telegramChatId": 5, "timeZone": "Asia/Tokyo"}],
        }
    )
    disabled = plan(
        event, [_push_route(enabled=False)], channels, set(), _utc("2026-06-10T12:00:00"), EVENT_UUID
    )
    assert disabled.outcomes == [Skip(0, "r", "route_disabled")]
    # 14:00 UTC is 23:00 in Tokyo: held back to 08:00 Tokyo, 23:00 UTC
    quiet = plan(
        event,
        [_push_route(quietHours={"start": "22:00", "end": "08:00"})],
        channels,
        set(),
        _utc("2026-06-10T14:00:00"),
        EVENT_UUID,
    )
    (held,) = quiet.outcomes
    assert isinstance(held, Delivery)
    assert held.scheduled_for == _utc("2026-06-10T23:00:00")


def test_a_template_that_cannot_render_refuses_the_event_naming_the_recipient() -> None:
    event = EventRequest.model_validate(
        {
            "type": "booking_created",
            "id": "e",
            "initiator": {"role": "admin", "id": "a"},
            "recipients": [{"role": "client", "id": "c", "telegramChatId": 5}],
        }
    )
    with pytest.raises(FanOutProblem) as caught:
        plan(event, [_push_route()], {"bot": _channel("bot")}, set(), _utc("2026-06-10T12:00:00"), EVENT_UUID)
    assert caught.value.field == "recipients[0]"
    assert "needs variable when" in caught.value.message


def test_the_operator_names_missing_channels_unready_ones_and_missing_templates() -> None:
    spec = _push_route().spec.model_copy(update={"footer": "ad"})
    problems = route_problems(spec, {"bot": _channel("bot", ready=False), "push": None})
    assert [reason for reason, _ in problems] == [
        RouteReason.CHANNEL_NOT_READY,
        RouteReason.TEMPLATE_NOT_FOUND,
        RouteReason.CHANNEL_NOT_FOUND,
    ]
    ready = ready_condition(problems)
    assert (ready.status, ready.reason) == ("False", "ChannelNotReady")
    assert "NotificationChannel push does not exist" in ready.message


def test_a_route_naming_a_channel_template_is_ready_when_that_template_compiles() -> None:
    good = ChannelTemplate.model_validate({"name": "hello", "variants": [{"language": "en", "text": "Hi"}]})
    spec = NotificationRouteSpec.model_validate(
        {
            "eventType": "x",
            "initiatorRole": "system",
            "recipients": [{"role": "admin", "channels": [{"channelRef": "bot", "template": "hello"}]}],
        }
    )
    ok = route_problems(spec, {"bot": _channel("bot", templates={"hello": StoredTemplate.of(good, None)})})
    assert ok == []
    assert ready_condition(ok).reason == RouteReason.ROUTE_READY
    broken = route_problems(
        spec, {"bot": _channel("bot", templates={"hello": StoredTemplate.of(good, "line 1")})}
    )
    assert broken[0][0] == RouteReason.TEMPLATE_INVALID


def test_a_callback_whose_secret_cannot_be_read_is_named_last() -> None:
    problems = route_problems(
        _push_route().spec,
        {"bot": _channel("bot"), "push": _channel("push", "webpush")},
        (RouteReason.SECRET_NOT_FOUND, "Secret salon/hook does not exist"),
    )
    assert problems == [(RouteReason.SECRET_NOT_FOUND, "callback: Secret salon/hook does not exist")]


def test_a_callback_is_signed_with_hmac_sha256_of_the_body_and_retried_up_to_the_cap() -> None:
    body = b'{"id":"done-1:booking_confirmed"}'
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert signature(b"s3cret", body) == f"sha256={expected}"
    assert [backoff_seconds(n, 3600) for n in (1, 2, 3, 11, 12, 40)] == [2, 4, 8, 2048, 3600, 3600]
