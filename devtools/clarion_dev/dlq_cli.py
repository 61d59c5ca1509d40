"""`clarion dlq ...`: the notification dead letters, listed and replayed.

    clarion dlq list [--channel NS.NAME] [--since ISO-8601] [--limit N]
    clarion dlq replay ID... | --all [--channel NS.NAME]

Dead letters are the entries of `notify:<channel>:<lane>:dead`, one per notification that ended
`failed` (permanent refusal, or attempts exhausted). `list` prints them, newest first, as JSON lines.
`replay` gives each named notification (or every dead-lettered one, of one channel with --channel) up
to 3 more attempts: the row goes back to `queued` and onto its lane's stream, the dead-letter entry is
removed, and an `audit_log` row (`notification.retried`, actor `cli:<user>`) says who did it. A
notification that is no longer failed is left alone and reported. Postgres and Redis come from
`CLARION_DATABASE_URL` and `CLARION_REDIS_URL`, as for every Clarion process.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from clarion.db import create_pool
from clarion.db import notifications as q
from clarion.redis import create_redis
from clarion.settings import CommonSettings
from clarion.streams import LANES, NotificationTask, dead_letter_stream, notify_stream


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clarion dlq", description="Notification dead letters.")
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="print dead letters, newest first, as JSON lines")
    listing.add_argument("--channel", help="only this channel (<namespace>.<name>)")
    listing.add_argument("--since", type=datetime.fromisoformat, help="only those dead-lettered since")
    listing.add_argument("--limit", type=int, default=1000)
    replay = sub.add_parser("replay", help="send dead-lettered notifications again")
    replay.add_argument("ids", nargs="*", type=uuid.UUID, help="notification ids")
    replay.add_argument("--all", action="store_true", help="every dead-lettered notification")
    replay.add_argument("--channel", help="with --all: only this channel (<namespace>.<name>)")
    return parser


async def _dead_streams(redis: Any, channel: str | None) -> list[str]:
    if channel is not None:
        return [dead_letter_stream(notify_stream(channel, lane)) for lane in LANES]
    found = []
    for lane in LANES:
        async for key in redis.scan_iter(match=dead_letter_stream(notify_stream("*", lane)), count=500):
            found.append(key.decode() if isinstance(key, bytes) else key)
    return sorted(found)


def _entry_time(entry_id: bytes | str) -> datetime:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return datetime.fromtimestamp(int(raw.split("-")[0]) / 1000, UTC)


async def _entries(redis: Any, channel: str | None,
                   since: datetime | None) -> list[tuple[str, bytes, dict[str, str]]]:
    """(stream, entry id, fields) of the dead letters, newest first."""
    start = "-" if since is None else str(int(since.astimezone(UTC).timestamp() * 1000))
    out = []
    for stream in await _dead_streams(redis, channel):
        for entry_id, fields in await redis.xrevrange(stream, "+", start):
            out.append((stream, entry_id, {k.decode(): v.decode() for k, v in fields.items()}))
    out.sort(key=lambda item: _entry_time(item[1]), reverse=True)
    return out


async def list_dead(settings: CommonSettings, channel: str | None, since: datetime | None, limit: int) -> int:
    redis = create_redis(settings.redis_url)
    try:
        for stream, entry_id, fields in (await _entries(redis, channel, since))[:limit]:
            print(json.dumps({"at": _entry_time(entry_id).isoformat(), "stream": stream, **fields}))
    finally:
        await redis.aclose()
    return 0


async def replay(settings: CommonSettings, ids: list[uuid.UUID], every: bool, channel: str | None) -> int:
    redis = create_redis(settings.redis_url)
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        entries = await _entries(redis, channel, None)
        by_id: dict[str, list[tuple[str, bytes]]] = {}
        for stream, entry_id, fields in entries:
            by_id.setdefault(fields.get("notification_id", ""), []).append((stream, entry_id))
        wanted = [uuid.UUID(i) for i in by_id if i] if every else ids
        async with pool.acquire() as conn:
            rows = await q.requeue_failed(conn, wanted, actor=f"cli:{getpass.getuser()}")
        requeued = {str(r.id) for r in rows}
        for row in rows:
            task = NotificationTask(notification_id=str(row.id), trace_id=row.trace_id)
            await redis.xadd(notify_stream(row.channel_key, row.lane), task.to_fields())  # type: ignore[arg-type]
            for stream, entry_id in by_id.get(str(row.id), []):
                await redis.xdel(stream, entry_id)
            print(f"replayed {row.id} ({row.channel_key}, {row.lane})")
        left = [str(i) for i in wanted if str(i) not in requeued]
        for ident in left:
            print(f"not replayed {ident}: not a failed notification", file=sys.stderr)
        return 1 if left else 0
    finally:
        await pool.close()
        await redis.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    settings = CommonSettings()
    if args.command == "list":
        return asyncio.run(list_dead(settings, args.channel, args.since, args.limit))
    if bool(args.ids) == bool(args.all):
        parser.error("replay: name notification ids, or --all")
    return asyncio.run(replay(settings, args.ids, args.all, args.channel))


if __name__ == "__main__":
    raise SystemExit(main())
