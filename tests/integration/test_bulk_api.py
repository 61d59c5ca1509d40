"""`POST /api/v1/bulk` and `GET /api/v1/bulk/{id}` on real Postgres and Redis: what a backend developer
gets back for JSON and CSV jobs, what is stored (nothing, for a refused job), and the notifications the
expander creates on the bulk lane."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from clarion.db import api_keys as keys
from clarion.db import bulk as qb
from clarion.models import ApiKeySecret
from clarion.streams import NotificationTask, notify_stream
from clarion_dev.testing.templates import stored_templates
from clarion_dev.testing.waiting import async_wait_for
from clarion_webhook.app import create_app
from clarion_webhook.settings import WebhookSettings

pytestmark = pytest.mark.integration

KEY = "k" * 40
OTHER_KEY = "o" * 40
TABLES = ("bulk_jobs", "bulk_job_rows", "notifications", "idempotency_keys")
#: The template every job uses, one per channel type (`spec.templates` of each channel).
SHIPPED_VARIABLES = [{"name": "name"}, {"name": "order"}]
SHIPPED = {"name": "order-shipped", "variables": SHIPPED_VARIABLES,
           "variants": [{"language": "en", "text": "Hello {{ name }}, order {{ order }} is on its way"}]}
SHIPPED_EMAIL = {"name": "order-shipped", "variables": SHIPPED_VARIABLES,
                 "variants": [{"language": "en", "subject": "Order {{ order }}", "text": "Hello {{ name }}"}]}


def _bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _csv_params(channel: str = "shop/alerts", **extra: str) -> dict[str, str]:
    return {"channel": channel, "template": "order-shipped", **extra}


def _csv_headers(key: str = KEY) -> dict[str, str]:
    return {**_bearer(key), "Content-Type": "text/csv; charset=utf-8"}


def _json_job(rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"channel": "shop/alerts", "template": {"name": "order-shipped", "language": "en"},
            "rows": rows, **extra}


@pytest.fixture
async def api(db: asyncpg.Pool, database_url: str, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    await db.execute(
        """INSERT INTO channels (namespace, name, type, config, ready, templates)
           VALUES ('shop', 'alerts', 'telegram', '{}', true, $2),
                  ('shop', 'mail', 'email', $1, true, $3),
                  ('other', 'alerts', 'telegram', '{}', true, $2)""",
        {"host": "127.0.0.1", "port": 2525, "from": "shop@example.org"}, stored_templates(SHIPPED),
        stored_templates(SHIPPED_EMAIL))
    for name, key, channels in (("backend", KEY, ("alerts", "mail")), ("other", OTHER_KEY, ("*",))):
        await keys.sync_api_key(db, ApiKeySecret(
            namespace="other" if name == "other" else "shop", name=name, uid=f"uid-{name}",
            key_sha256=hashlib.sha256(key.encode()).hexdigest(), channels=channels, rate_per_minute=None))
    app = create_app(WebhookSettings(database_url=database_url, redis_url=redis_url, channel_cache_seconds=0,
                                     bulk_chunk_rows=100))
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://clarion", timeout=60)
    try:
        yield client
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


async def _counts(db: asyncpg.Pool) -> dict[str, int]:
    return {table: await db.fetchval(f"SELECT count(*) FROM {table}") for table in TABLES}


async def _finished(api: httpx.AsyncClient, location: str, timeout: float = 60) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        view: dict[str, Any] = (await api.get(location, headers=_bearer())).json()
        return view if view["status"] in ("done", "failed") else None

    found: dict[str, Any] = await async_wait_for(done, timeout=timeout, interval=0.1,
                                                 what="the job to finish")
    return found


async def test_a_csv_job_with_a_bom_crlf_quoted_commas_and_non_ascii_text_becomes_one_notification_a_row(
    api: httpx.AsyncClient, db: asyncpg.Pool, redis: aioredis.Redis,
) -> None:
    csv_text = ('chat_id,name,order\r\n'
                '100001,"Smith, Jr.",A-1\r\n'
                '100002,Zoë,"東京, 2-3"\r\n'
                '100003,"Ann\r\nMarie",C-3\r\n'
                '100004,Олег,D-4\r\n')
    body = b"\xef\xbb\xbf" + csv_text.encode()

    answer = await api.post("/api/v1/bulk", params=_csv_params(reference="december"), content=body,
                            headers=_csv_headers())

    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert answer.headers["location"] == f"/api/v1/bulk/{accepted['id']}"
    assert (accepted["status"], accepted["total"], accepted["channel"]) == ("accepted", 4, "shop/alerts")
    assert accepted["template"] == {"name": "order-shipped", "language": None}
    view = await _finished(api, answer.headers["location"])
    assert (view["status"], view["expanded"], view["queued"]) == ("done", 4, 4)
    rows = await db.fetch(
        """SELECT id, recipient, content->>'text' AS text, lane, status, reference, trace_id
           FROM notifications WHERE bulk_job_id = $1 ORDER BY recipient""", uuid.UUID(accepted["id"]))
    assert [(r["recipient"], r["text"]) for r in rows] == [
        ("100001", "Hello Smith, Jr., order A-1 is on its way"),
        ("100002", "Hello Zoë, order 東京, 2-3 is on its way"),
        ("100003", "Hello Ann\r\nMarie, order C-3 is on its way"),
        ("100004", "Hello Олег, order D-4 is on its way"),
    ]
    assert {(r["lane"], r["status"], r["reference"], r["trace_id"]) for r in rows} == {
        ("bulk", "queued", "december", accepted["traceId"])}
    assert [r["id"] for r in rows] == [qb.notification_id(uuid.UUID(accepted["id"]), n) for n in range(1, 5)]
    entries: Any = await redis.xrange(notify_stream("shop.alerts", "bulk"))
    assert sorted(NotificationTask.from_fields(f).notification_id for _, f in entries) == sorted(
        str(r["id"]) for r in rows)
    assert await redis.xlen(notify_stream("shop.alerts", "instant")) == 0
    assert await db.fetchval("SELECT count(*) FROM bulk_job_rows") == 0  # expanded rows are moved, not kept


BAD_CSV = [
    pytest.param(b"", "line 1: the file is empty", None, id="empty file"),
    pytest.param(b"chat_id,name\n", "line 2: the file has a header but no rows", None, id="header only"),
    pytest.param(b"name,order\nAnn,1\n", "line 1: the header must name one recipient column", None,
                 id="no recipient column"),
    pytest.param(b"chat_id,email,name\n1,a@example.org,Ann\n", "line 1: the header must name one", None,
                 id="two recipient columns"),
    pytest.param(b"chat_id,name,name\n1,Ann,Bo\n", "line 1: column name appears twice", "name",
                 id="a column twice"),
    pytest.param(b"chat_id,name,order\r\n1,Ann,A\r\n2,Bo\r\n", "line 3: 2 fields, the header has 3", None,
                 id="a short row"),
    pytest.param(b'chat_id,name,order\n1,"Ann\nMarie\nLee",A\n2,Bo,B\nthree,Cy,C\n',
                 "line 6: chat_id: Input should be a valid integer", "chat_id",
                 id="a bad chat id after a quoted field of three lines"),
    pytest.param(b'chat_id,name,order\r\n1,"Ann\r\n\r\nMarie",A\r\n2,Bo,B\r\n99999999999999999999,Cy,C\r\n',
                 "line 6: chat_id:", "chat_id", id="a chat id out of range after a field with a blank line"),
    pytest.param(b"chat_id,name\n1,Ann\n", "line 2: order: template 'order-shipped' needs variable order",
                 "order", id="a template variable missing"),
    pytest.param(b"chat_id,name,order\n1,Ann,A\n2,\xff\xfe,B\n", "line 3: the file is not UTF-8 text", None,
                 id="not UTF-8"),
    pytest.param(b'chat_id,name,order\n1,Ann,A\n2,"Bo"x,B\n', "line 3: not valid CSV", None,
                 id="a stray quote"),
    pytest.param(b"chat_id,na me,order\n1,Ann,A\n", "line 2: na me:", "na me", id="a bad variable name"),
]


@pytest.mark.parametrize(("body", "message", "field"), BAD_CSV)
async def test_a_bad_csv_is_refused_with_its_line_number_and_nothing_is_stored(
    api: httpx.AsyncClient, db: asyncpg.Pool, redis: aioredis.Redis, body: bytes, message: str,
    field: str | None,
) -> None:
    answer = await api.post("/api/v1/bulk", params=_csv_params(), content=body,
                            headers={**_csv_headers(), "Idempotency-Key": "bad-file"})

    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["message"].startswith(message), error
    assert error.get("field") == field, error
    assert await _counts(db) == dict.fromkeys(TABLES, 0)
    assert await redis.dbsize() == 0


async def test_an_email_channel_refuses_chat_ids_at_the_first_row_and_takes_emails(
    api: httpx.AsyncClient, db: asyncpg.Pool,
) -> None:
    wrong = await api.post("/api/v1/bulk", params=_csv_params("shop/mail"), headers=_csv_headers(),
                           content=b"chat_id,name,order\n1,Ann,A\n")
    bad_address = await api.post("/api/v1/bulk", params=_csv_params("shop/mail"), headers=_csv_headers(),
                                 content=b"email,name,order\nann@example.org,Ann,A\nnot-an-address,Bo,B\n")
    right = await api.post("/api/v1/bulk", params=_csv_params("shop/mail"), headers=_csv_headers(),
                           content="email,name,order\nann@example.org,Ann,A\nzoë@example.org,Zoë,B\n".encode())

    assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "chat_id"
    assert wrong.json()["error"]["message"].startswith(
        "line 2: chat_id: channel shop/mail is an email channel")
    assert bad_address.status_code == 422
    assert bad_address.json()["error"]["message"].startswith("line 3: email:")
    assert right.status_code == 202, right.text
    await _finished(api, right.headers["location"])
    stored = await db.fetch("SELECT recipient, content FROM notifications ORDER BY recipient")
    assert [(r["recipient"], r["content"]["subject"], r["content"]["text"]) for r in stored] == [
        ("ann@example.org", "Order A", "Hello Ann"), ("zoë@example.org", "Order B", "Hello Zoë")]


async def test_more_than_100_000_rows_are_refused_at_the_first_row_too_many(
    api: httpx.AsyncClient, db: asyncpg.Pool,
) -> None:
    body = "chat_id,name,order\n" + "".join(f"{n},N{n},O{n}\n" for n in range(100_001))

    answer = await api.post("/api/v1/bulk", params=_csv_params(), content=body.encode(),
                            headers=_csv_headers())

    assert answer.status_code == 422
    assert answer.json()["error"]["message"] == "line 100002: more than 100,000 rows"
    assert await _counts(db) == dict.fromkeys(TABLES, 0)


async def test_a_json_job_is_accepted_and_a_bad_row_is_named_by_its_index(
    api: httpx.AsyncClient, db: asyncpg.Pool,
) -> None:
    good: list[dict[str, Any]] = [
        {"recipient": {"chatId": 100_000 + n}, "variables": {"name": f"N{n}", "order": n}} for n in range(3)]
    bad_recipient = [*good, {"recipient": {"email": "a@example.org"}, "variables": {"name": "X", "order": 1}}]
    missing = [*good[:2], {"recipient": {"chatId": 1}, "variables": {"name": "X"}}]
    unknown_field = [*good[:1], {"recipient": {"chatId": 1}, "vars": {}}]
    nul = [*good[:1], {"recipient": {"chatId": 1}, "variables": {"name": "A\u0000", "order": 1}}]

    refusals = [await api.post("/api/v1/bulk", json=_json_job(rows), headers=_bearer())
                for rows in (bad_recipient, missing, unknown_field, nul)]
    accepted = await api.post("/api/v1/bulk", json=_json_job(good, reference="batch-1"), headers=_bearer())

    assert [(r.status_code, r.json()["error"]["field"]) for r in refusals] == [
        (422, "rows.3.recipient"), (422, "rows.2.variables.order"), (422, "rows.1.vars"),
        (422, "rows.1.variables.name")]
    assert refusals[1].json()["error"]["message"] == (
        "rows.2.variables.order: template 'order-shipped' needs variable order")
    assert accepted.status_code == 202, accepted.text
    view = await _finished(api, accepted.headers["location"])
    assert (view["total"], view["expanded"], view["reference"]) == (3, 3, "batch-1")
    texts = await db.fetch("SELECT content->>'text' AS t FROM notifications ORDER BY recipient")
    assert [r["t"] for r in texts] == [f"Hello N{n}, order {n} is on its way" for n in range(3)]
    assert await db.fetchval("SELECT count(*) FROM bulk_jobs") == 1


async def test_keys_media_types_and_sizes_are_checked_as_for_single_notifications(
    api: httpx.AsyncClient, db: asyncpg.Pool,
) -> None:
    job = _json_job([{"recipient": {"chatId": 1}, "variables": {"name": "A", "order": 1}}])
    # 300 KB: over the 256 KiB of the other routes, within the bulk route's 32 MiB
    big = _json_job([{"recipient": {"chatId": n}, "variables": {"name": "x" * 200, "order": n}}
                     for n in range(1, 1201)])
    assert len(json.dumps(big)) > 300_000

    unknown = await api.post("/api/v1/bulk", json=job)
    foreign = await api.post("/api/v1/bulk", json=job, headers=_bearer(OTHER_KEY))
    plain = await api.post("/api/v1/bulk", content=b"chat_id\n1\n",
                           headers={**_bearer(), "Content-Type": "text/plain"})
    huge = await api.post("/api/v1/bulk", content=b"x" * (32 * 1024 * 1024 + 1), headers=_csv_headers())
    query_with_json = await api.post("/api/v1/bulk", json=job, params={"channel": "shop/alerts"},
                                     headers=_bearer())
    no_template = await api.post("/api/v1/bulk", params={"channel": "shop/alerts"}, content=b"chat_id\n1\n",
                                 headers=_csv_headers())
    large = await api.post("/api/v1/bulk", json=big, headers=_bearer())

    assert unknown.status_code == 401
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "forbidden_channel"
    assert plain.status_code == 415
    assert plain.json()["error"]["message"] == "send the body as application/json or text/csv"
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "too_large"
    assert query_with_json.status_code == 422 and query_with_json.json()["error"]["field"] == "channel"
    assert no_template.json()["error"] == {"code": "invalid_request", "message": "template: Field required",
                                           "field": "template"}
    assert large.status_code == 202, large.text
    counts = await _counts(db)
    assert counts["bulk_jobs"] == 1 and counts["idempotency_keys"] == 0
    csv_elsewhere = await api.post("/api/v1/notifications", content=b"chat_id\n1\n", headers=_csv_headers())
    assert csv_elsewhere.status_code == 415
    assert csv_elsewhere.json()["error"]["message"] == "send the body as application/json"


async def test_an_idempotency_key_replays_the_first_bulk_answer_and_refuses_another_body(
    api: httpx.AsyncClient, db: asyncpg.Pool,
) -> None:
    body = b"chat_id,name,order\n1,Ann,A\n2,Bo,B\n"
    headers = {**_csv_headers(), "Idempotency-Key": "december-run"}
    first = await api.post("/api/v1/bulk", params=_csv_params(), content=body, headers=headers)
    again = await api.post("/api/v1/bulk", params=_csv_params(), content=body, headers=headers)
    other_rows = await api.post("/api/v1/bulk", params=_csv_params(), content=body + b"3,Cy,C\n",
                                headers=headers)
    other_query = await api.post("/api/v1/bulk", params=_csv_params(reference="x"), content=body,
                                 headers=headers)

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and again.headers["idempotent-replay"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert [r.status_code for r in (other_rows, other_query)] == [422, 422]
    assert other_rows.json()["error"]["code"] == "idempotency_key_reused"
    await _finished(api, first.headers["location"])
    assert await _counts(db) == {"bulk_jobs": 1, "bulk_job_rows": 0, "notifications": 2,
                                 "idempotency_keys": 1}


async def test_progress_counts_the_job_s_notifications_by_status_for_its_own_namespace_only(
    api: httpx.AsyncClient, db: asyncpg.Pool,
) -> None:
    rows = [{"recipient": {"chatId": n}, "variables": {"name": "A", "order": n}} for n in range(1, 251)]
    answer = await api.post("/api/v1/bulk", json=_json_job(rows), headers=_bearer())
    location = answer.headers["location"]
    await _finished(api, location)
    job_id = uuid.UUID(answer.json()["id"])
    await db.execute("""UPDATE notifications SET status = 'sent' WHERE bulk_job_id = $1
                        AND id IN (SELECT id FROM notifications WHERE bulk_job_id = $1 LIMIT 200)""", job_id)
    await db.execute("""UPDATE notifications SET status = 'failed'
                        WHERE id IN (SELECT id FROM notifications WHERE bulk_job_id = $1 AND status = 'queued'
                                     LIMIT 20)""", job_id)

    view = (await api.get(location, headers=_bearer())).json()
    foreign = await api.get(location, headers=_bearer(OTHER_KEY))
    missing = await api.get(f"/api/v1/bulk/{uuid.uuid4()}", headers=_bearer())

    assert {k: view[k] for k in ("status", "total", "expanded", "queued", "sending", "sent", "failed",
                                 "blocked", "cancelled")} == {
        "status": "done", "total": 250, "expanded": 250, "queued": 30, "sending": 0, "sent": 200,
        "failed": 20, "blocked": 0, "cancelled": 0}
    assert view["finishedAt"] is not None
    assert foreign.status_code == 404 and missing.status_code == 404


async def test_a_scheduled_job_creates_its_notifications_off_the_streams_until_due(
    api: httpx.AsyncClient, db: asyncpg.Pool, redis: aioredis.Redis,
) -> None:
    answer = await api.post("/api/v1/bulk", params=_csv_params(scheduledFor="2099-01-01T09:00:00Z"),
                            content=b"chat_id,name,order\n1,Ann,A\n", headers=_csv_headers())

    assert answer.status_code == 202, answer.text
    view = await _finished(api, answer.headers["location"])
    assert view["scheduledFor"] == "2099-01-01T09:00:00Z" and view["queued"] == 1
    row = await db.fetchrow("SELECT status, enqueued_at, next_attempt_at FROM notifications")
    assert row["status"] == "created" and row["enqueued_at"] is None and row["next_attempt_at"].year == 2099
    assert await redis.xlen(notify_stream("shop.alerts", "bulk")) == 0


async def test_a_job_whose_replica_lost_its_lease_is_finished_by_another_and_no_row_is_created_twice(
    db: asyncpg.Pool,
) -> None:
    channel_id = await db.fetchval(
        "INSERT INTO channels (namespace, name, type, config, ready) VALUES ('shop', 'alerts', 'telegram', "
        "'{}', true) RETURNING id")
    new = qb.NewJob(id=uuid.uuid4(), channel_id=channel_id, api_key_id=None, template={"name": "t"},
                    reference=None, scheduled_for=None, trace_id="t" * 32)
    async with db.acquire() as conn:
        rows = [qb.NewRow(str(n), json.dumps({"text": str(n)}), None) for n in range(1, 1001)]
        job, _ = await qb.store(conn, new, rows)
        assert job is not None
        first = await qb.claim(conn, "replica-a", lease_seconds=30)
        assert first is not None and await qb.claim(conn, "replica-b", lease_seconds=30) is None
        done = [await qb.expand_chunk(conn, first, "replica-a", 300, 30, 3) for _ in range(2)]
        assert [c.expanded for c in done if c is not None] == [300, 600]
        # replica-a stalls past its lease; replica-b takes the job over at the cursor
        await conn.execute("UPDATE bulk_jobs SET claimed_until = now() - interval '1 second'")
        second = await qb.claim(conn, "replica-b", lease_seconds=30)
        assert second is not None and second.expanded == 600
        assert await qb.expand_chunk(conn, first, "replica-a", 300, 30, 3) is None
        rest = [await qb.expand_chunk(conn, second, "replica-b", 300, 30, 3) for _ in range(2)]

    assert [(c.expanded, c.status, len(c.created)) for c in rest if c is not None] == [
        (900, "expanding", 300), (1000, "done", 100)]
    stored = await db.fetchrow("SELECT count(*) AS n, count(DISTINCT recipient) AS r FROM notifications")
    assert (stored["n"], stored["r"]) == (1000, 1000)
    assert await db.fetchval("SELECT status FROM bulk_jobs") == "done"


async def test_the_openapi_document_describes_both_request_forms(api: httpx.AsyncClient) -> None:
    document = (await api.get("/api/v1/openapi.json")).json()

    post = document["paths"]["/bulk"]["post"]
    forms = post["requestBody"]["content"]
    assert forms["application/json"]["schema"] == {"$ref": "#/components/schemas/BulkRequest"}
    assert forms["text/csv"]["schema"]["type"] == "string"
    schemas = document["components"]["schemas"]
    assert {"BulkRequest", "BulkRow", "TemplateRef", "Recipient", "BulkJobView"} <= set(schemas)
    assert schemas["BulkRequest"]["properties"]["rows"]["maxItems"] == 100_000
    assert {p["name"] for p in post["parameters"] if p["in"] == "query"} >= {
        "channel", "template", "language", "reference", "scheduledFor"}
    assert "/bulk/{job_id}" in document["paths"]
