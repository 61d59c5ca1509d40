"""A NotificationRoute applied to a real kube-apiserver and reconciled by the `clarion-operator` process
(docs/events.md): its row is stored for the API whatever its state, Ready names a missing channel and
turns True once the channel is Ready, and deleting the route marks the row deleted."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from clarion.db import events
from clarion_dev.cluster import ControlPlane
from clarion_dev.telegram import Emulator
from clarion_dev.testing.cluster import Kubectl
from clarion_dev.testing.operator import OperatorFactory
from clarion_dev.testing.waiting import async_wait_for

from .test_managed_group_lifecycle import _channel, _condition

pytestmark = pytest.mark.cluster

API = "clarion.io/v1alpha1"
ROUTES = "notificationroutes.clarion.io"


def _route() -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "NotificationRoute",
        "metadata": {"name": "booking-done"},
        "spec": {
            "eventType": "booking_done",
            "initiatorRole": "system",
            "recipients": [
                {
                    "role": "admin",
                    "channels": [{"channelRef": "community", "template": "card"}],
                    "buttons": [
                        {"eventType": "booking_confirmed", "labels": [{"language": "en", "text": "Yes"}]}
                    ],
                }
            ],
            "templates": [{"name": "card", "variants": [{"language": "en", "text": "Came?"}]}],
        },
    }


async def test_a_route_waits_for_its_channel_then_is_ready_and_its_deletion_marks_the_row(
    telegram_emulator: Emulator,
    operator_factory: OperatorFactory,
    control_plane: ControlPlane,
    kube_namespace: str,
    db: asyncpg.Pool,
) -> None:
    operator = operator_factory({"CLARION_ROUTE_CHECK_SECONDS": "1"})
    cluster = Kubectl(control_plane, kube_namespace)

    async def until(what: str, check: Any) -> Any:
        try:
            return await async_wait_for(check, timeout=60, interval=0.3, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- operator log ---\n{operator.log()}") from None

    def ready(status: str, reason: str) -> Any:
        cond = _condition(cluster.get(ROUTES, "booking-done"), "Ready")
        return cond if (cond.get("status"), cond.get("reason")) == (status, reason) else None

    cluster.apply(_route())
    waiting = await until("Ready=False ChannelNotFound", lambda: ready("False", "ChannelNotFound"))
    assert waiting["message"] == "role admin: NotificationChannel community does not exist"
    [stored] = await events.matching_routes(db, kube_namespace, "booking_done", "system")
    assert (
        stored.name == "booking-done"
        and stored.spec.recipients[0].buttons[0].event_type == "booking_confirmed"
    )

    bot = telegram_emulator.add_bot(username="salon_bot")
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "bot-token"},
            "stringData": {"token": bot.token},
        }
    )
    cluster.apply(_channel(telegram_emulator))
    await until("Ready=True RouteReady", lambda: ready("True", "RouteReady"))
    printed = cluster.run("get", "nr", "booking-done", "--no-headers").split()
    assert printed[:5] == ["booking-done", "booking_done", "system", "true", "True"]

    cluster.run("delete", "nr", "booking-done", "--wait=true")
    assert await events.matching_routes(db, kube_namespace, "booking_done", "system") == []
