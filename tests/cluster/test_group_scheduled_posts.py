"""A ManagedGroup's scheduled posts, queued by the `clarion-operator` process (ADR 0010): each due
occurrence becomes one notification on lane group-posts and one entry on the channel's group-posts
stream, however many passes look at it; occurrences found too late are skipped with an Event. No
worker runs: the tests see the rows and the entries the operator leaves for one."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from clarion.keys import channel_key
from clarion.streams import NotificationTask, group_posts_stream
from clarion_dev.cluster import ControlPlane
from clarion_dev.telegram import Emulator
from clarion_dev.testing.operator import OperatorFactory

from .test_managed_group_lifecycle import CHAT, FAST, Cluster, _channel, _events, _group, _world

pytestmark = pytest.mark.cluster

POSTS = FAST | {"CLARION_GROUP_POSTS_CHECK_SECONDS": "1"}


async def _entries(redis: aioredis.Redis, namespace: str) -> list[str]:
    entries: Any = await redis.xrange(group_posts_stream(channel_key(namespace, "community")))
    return [NotificationTask.from_fields(fields).notification_id for _, fields in entries]


async def _posts(db: asyncpg.Pool, namespace: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        """SELECT p.name, p.due_at, n.id, n.lane, n.recipient, n.content, n.status
           FROM group_posts p JOIN managed_groups g ON g.id = p.group_id
           JOIN notifications n ON n.id = p.notification_id
           WHERE g.namespace = $1 ORDER BY p.due_at, p.name""", namespace)
    return [dict(row) for row in rows]


async def test_due_posts_are_queued_once_each_and_those_missed_while_not_ready_are_skipped(
    telegram_emulator: Emulator, operator_factory: OperatorFactory, control_plane: ControlPlane,
    kube_namespace: str, db: asyncpg.Pool, redis: aioredis.Redis,
) -> None:
    token = _world(telegram_emulator)
    telegram_emulator.set_bot_rights(token, CHAT, [])  # an administrator without can_invite_users
    operator = operator_factory(POSTS)
    cluster = Cluster(control_plane, kube_namespace, operator)
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bot-token"},
                   "stringData": {"token": token}})
    cluster.apply(_channel(telegram_emulator))
    soon = (datetime.now(UTC) + timedelta(seconds=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    cluster.apply(_group("club", scheduledPosts=[
        {"name": "hourly", "cron": "0 * * * *", "text": "Hourly news"},
        {"name": "soon", "at": soon, "text": "<b>Soon</b>", "parseMode": "HTML", "pin": True}]))
    await cluster.condition("club", "BotHasRights", "False", "MissingRights")

    # Not Ready for three hours (the clock moved by moving posts_checked_at back): nothing was queued.
    group_id = await db.fetchval("SELECT id FROM managed_groups WHERE namespace = $1 AND name = 'club'",
                                 kube_namespace)
    first = await db.fetchval(
        """UPDATE managed_groups SET posts_checked_at = date_trunc('hour', now()) - interval '150 minutes'
           WHERE id = $1 RETURNING posts_checked_at + interval '30 minutes'""", group_id)
    assert await _posts(db, kube_namespace) == []

    telegram_emulator.set_bot_rights(token, CHAT, ["can_invite_users", "can_pin_messages"])
    await cluster.condition("club", "Ready", "True", "GroupReady")

    # The hour's occurrence is queued; those before it, more than the catch-up hour late, skipped
    # (two, or three when the hour turned since the UPDATE).
    skipped = await cluster.until("a PostSkipped Event", lambda: _events(cluster, "club", "PostSkipped"))
    found = re.fullmatch(r"post hourly: (\d) occurrences from (\S+) skipped, found more than 1:00:00 late",
                         skipped[0])
    assert found is not None, skipped
    missed = int(found[1])
    assert missed in (2, 3) and found[2] == first.astimezone(UTC).isoformat()

    async def both() -> Any:
        posts = await _posts(db, kube_namespace)
        return posts if {p["name"] for p in posts} == {"hourly", "soon"} else None

    posts = await cluster.until("both posts queued", both, timeout=90)
    hourly = [p["due_at"] for p in posts if p["name"] == "hourly"]
    assert hourly[0] == first + timedelta(hours=missed)
    [once] = [p for p in posts if p["name"] == "soon"]
    assert once["due_at"] == datetime.fromisoformat(soon)
    assert (once["lane"], once["recipient"], once["status"]) == ("group-posts", str(CHAT), "queued")
    assert (once["content"]["text"], once["content"]["parseMode"], once["content"]["pin"]) == (
        "<b>Soon</b>", "HTML", True)

    # Many more passes: still one row and one stream entry per occurrence.
    queued = _events(cluster, "club", "PostQueued")
    start = await db.fetchval("SELECT posts_checked_at FROM managed_groups WHERE id = $1", group_id)

    async def looked_again() -> bool:
        checked = await db.fetchval("SELECT posts_checked_at FROM managed_groups WHERE id = $1", group_id)
        return bool(checked > start + timedelta(seconds=3))

    await cluster.until("three more seconds of looking", looked_again)
    again = await _posts(db, kube_namespace)
    assert [(p["name"], p["due_at"]) for p in again] == [(p["name"], p["due_at"]) for p in posts]
    assert sorted(await _entries(redis, kube_namespace)) == sorted(str(p["id"]) for p in again)
    assert len(_events(cluster, "club", "PostQueued")) == len(queued) == len(again)
    assert "Traceback" not in operator.log(100_000)
