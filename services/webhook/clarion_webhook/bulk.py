"""Bulk jobs of the public API: `POST /api/v1/bulk`, `GET /api/v1/bulk/{id}`, and the expander that
turns a stored job into notifications on the bulk lane (docs/notifications.md "Bulk").

The accept path is the notification API's (`clarion_webhook.api`): the key (401, 429), the channel in
its scope (403), the body (422 naming the field, and for a row its line or index), the Idempotency-Key,
then one transaction that stores the job and every row, rendered; 202 after the commit. A bad row
refuses the whole job, and nothing of it is stored. Parsing, validating and rendering up to 100,000
rows run in a thread, so that the event loop keeps answering instant-lane requests meanwhile.

`BulkExpander` runs in every webhook replica. It claims an unfinished job with a lease, expands it a
chunk per transaction (`clarion.db.bulk.expand_chunk`), and puts each chunk's ids on the channel's
bulk-lane stream after the commit; the workers' replayer enqueues whatever that misses. A replica that
dies mid-job leaves its lease to run out; another replica (or itself, restarted) resumes at the cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import re
import socket
import uuid
from collections.abc import Iterator, Mapping
from typing import Annotated, Any

import asyncpg
import redis.asyncio as aioredis
from clarion.db import bulk as qb
from clarion.db.channels import ChannelRecord
from clarion.db.notifications import Idempotency
from clarion.logging import get_logger
from clarion.metrics import counter
from clarion.models.notification import (
    MAX_BULK_ROWS,
    BulkJobView,
    BulkOptions,
    BulkRequest,
    BulkRow,
    ErrorAnswer,
    TemplateRef,
)
from clarion.streams import NotificationTask, add_tasks, notify_stream
from clarion.templates import TemplateProblem, render_template
from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from pydantic_core import from_json

from clarion_webhook.api import (
    API_PREFIX,
    DEFAULT_MAX_ATTEMPTS,
    IDEMPOTENCY_LOCK_SECONDS,
    BodyRule,
    Caller,
    _idempotency_lock,
    _replay_or_conflict,
    _replayed,
    _request_digest,
    _state,
    _trace_id,
    channel_for,
)
from clarion_webhook.errors import DATABASE_ERRORS, Refused
from clarion_webhook.tasks import stop_within

log = get_logger("clarion.webhook.bulk")

BULK_JOBS = counter("clarion_api_bulk_jobs_total", "Bulk job requests answered by the public API, by result.",
                    ["result"])
BULK_EXPANDED = counter("clarion_bulk_notifications_created_total",
                        "Notifications created by expanding bulk jobs, by channel.", ["channel"])

#: The largest body `POST /api/v1/bulk` takes: 100,000 rows of about 300 bytes.
BULK_MAX_BODY_BYTES = 32 * 1024 * 1024
#: What BodyGuard lets through to the bulk route (the others take JSON up to 256 KiB).
BODY_RULES = {"/bulk": BodyRule((b"application/json", b"text/csv"), BULK_MAX_BODY_BYTES)}
#: The recipient column of a CSV file, by the API field it fills.
CSV_RECIPIENTS = {"chat_id": "chatId", "email": "email"}
CSV_DESCRIPTION = (
    "A CSV file (UTF-8, an optional BOM, CRLF or LF line ends, RFC 4180 quoting). The header names one "
    "recipient column, `chat_id` or `email`; every other column is a template variable. With it, the "
    "query gives `channel`, `template` and optionally `language`, `reference`, `scheduledFor`.")


class RowProblem(ValueError):
    """A row cannot be rendered: the field at fault (`variables.<name>`, or one of the template's)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


class _CsvProblem(ValueError):
    def __init__(self, line: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.line, self.message, self.field = line, message, field

    def refusal(self) -> Refused:
        return Refused(422, "invalid_csv", f"line {self.line}: {self.message}", field=self.field)


def _row_content(channel: ChannelRecord, template: TemplateRef,
                 variables: Mapping[str, object]) -> dict[str, Any]:
    """The outbox content of one row: the channel's template rendered with the row's variables."""
    try:
        return render_template(channel, template.name, template.language, variables)
    except TemplateProblem as exc:
        raise RowProblem(exc.field, exc.message) from exc


#: One line of a text, its line end kept: CRLF, LF or CR (csv needs them to read quoted line breaks).
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")

#: Rows with where each came from: its index (JSON) or the line it starts on (CSV).
Rows = Iterator[tuple[int, Any]]


def _csv_rows(raw: bytes) -> tuple[str, Rows]:
    """The recipient column of a CSV file (its header is checked here) and its rows as `BulkRow` input,
    read as they are iterated (a row that cannot be read raises `_CsvProblem`)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _CsvProblem(raw.count(b"\n", 0, exc.start) + 1, "the file is not UTF-8 text") from None
    reader = csv.reader((m.group() for m in _LINE.finditer(text)), strict=True)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise _CsvProblem(1, "the file is empty") from None
    except csv.Error as exc:
        raise _CsvProblem(reader.line_num, f"not valid CSV: {exc}") from None
    recipients = [name for name in header if name in CSV_RECIPIENTS]
    if len(recipients) != 1:
        raise _CsvProblem(1, "the header must name one recipient column, chat_id or email")
    for number, name in enumerate(header, start=1):
        if not name:
            raise _CsvProblem(1, f"column {number} has no name")
        if header.count(name) > 1:
            raise _CsvProblem(1, f"column {name} appears twice", field=name)
    [column] = recipients
    at, wanted = header.index(column), CSV_RECIPIENTS[column]

    def rows() -> Rows:
        count = 0
        start = reader.line_num + 1
        try:
            for record in reader:
                line, start = start, reader.line_num + 1
                if not record:
                    continue  # a blank line
                if len(record) != len(header):
                    raise _CsvProblem(line, f"{len(record)} fields, the header has {len(header)}")
                count += 1
                if count > MAX_BULK_ROWS:
                    raise _CsvProblem(line, f"more than {MAX_BULK_ROWS:,} rows")
                yield line, {"recipient": {wanted: record[at].strip()},
                             "variables": {name: value for name, value in zip(header, record, strict=True)
                                           if name != column}}
        except csv.Error as exc:
            raise _CsvProblem(reader.line_num, f"not valid CSV: {exc}") from None
        if not count:
            raise _CsvProblem(reader.line_num + 1, "the file has a header but no rows")

    return column, rows()


def _options_refusal(exc: ValidationError) -> Refused:
    """422 naming the field of the first error of the job's options."""
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or None
    why = first["msg"]
    return Refused(422, "invalid_request", f"{field}: {why}" if field else why, field=field)


def _row_refusal(where: int, path: list[str], why: str, csv_column: str | None) -> Refused:
    """422 for a row: JSON names it `rows.<index>.<field>`; CSV by its line and column."""
    if csv_column is None:
        field = ".".join(["rows", str(where), *path])
        return Refused(422, "invalid_row", f"{field}: {why}", field=field)
    if path and path[0] == "recipient":
        column: str | None = csv_column
    elif len(path) >= 2 and path[0] == "variables":
        column = path[1]
    else:
        column = ".".join(path) or None
    return Refused(422, "invalid_row", f"line {where}: {column}: {why}" if column else f"line {where}: {why}",
                   field=column)


def _json_request(raw: bytes) -> tuple[BulkOptions, list[Any]]:
    """The options and the rows (unchecked yet) of a JSON body (`BulkRequest`); raises `Refused`."""
    try:
        document = from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        raise Refused(422, "invalid_request", f"the body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise Refused(422, "invalid_request", "the body must be a JSON object (BulkRequest)")
    rows = document.pop("rows", None)
    try:
        options = BulkOptions.model_validate(document)
    except ValidationError as exc:
        raise _options_refusal(exc) from None
    if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_BULK_ROWS:
        raise Refused(422, "invalid_request", f"rows: a list of 1 to {MAX_BULK_ROWS:,} rows", field="rows")
    return options, rows


def _csv_options(query: dict[str, str]) -> BulkOptions:
    """The options of a CSV request, from its query; raises `Refused`."""
    given: dict[str, Any] = dict(query)
    template = {field: given.pop(param) for param, field in (("template", "name"), ("language", "language"))
                if param in given}
    if template:
        given["template"] = template
    try:
        return BulkOptions.model_validate(given)
    except ValidationError as exc:
        refusal = _options_refusal(exc)
        param = {"template.name": "template", "template.language": "language"}.get(refusal.field or "")
        if param is None:
            raise refusal from None
        raise Refused(422, refusal.code, refusal.message.replace(str(refusal.field), param, 1),
                      field=param) from None


def _prepare(options: BulkOptions, rows: Rows, csv_column: str | None,
             channel: ChannelRecord) -> list[qb.NewRow]:
    """Every row checked, against the channel too, and rendered; the first bad one refuses the job."""
    prepared: list[qb.NewRow] = []
    try:
        for where, raw_row in rows:
            try:
                row = BulkRow.model_validate(raw_row)
            except ValidationError as exc:
                first = exc.errors()[0]
                path = [str(p) for p in first["loc"]]
                if path[:1] == ["variables"]:
                    path = path[:2]  # the variable, not the member of its type's union that failed last
                raise _row_refusal(where, path, first["msg"], csv_column) from None
            if row.recipient.kind != channel.type:
                wanted = "chatId" if channel.type == "telegram" else "email"
                kind = "an email" if channel.type == "email" else "a Telegram"
                why = f"channel {options.channel} is {kind} channel: give recipients as {wanted}"
                raise _row_refusal(where, ["recipient"], why, csv_column)
            try:
                content = _row_content(channel, options.template, row.variables)
            except RowProblem as exc:
                if exc.field.startswith("variables."):
                    raise _row_refusal(where, exc.field.split(".", 1), exc.message, csv_column) from None
                position = f"rows.{where}" if csv_column is None else f"line {where}"
                raise Refused(422, "invalid_template", f"{position}: {exc.message}",
                              field=f"template.{exc.field}") from None
            prepared.append(qb.NewRow(recipient=row.recipient.address, content=json.dumps(content),
                                      reference=row.reference or options.reference))
    except _CsvProblem as exc:
        raise exc.refusal() from None
    return prepared


def _view(job: qb.Job, counts: Mapping[str, int]) -> BulkJobView:
    namespace, _, name = job.channel_key.partition(".")
    return BulkJobView(
        id=str(job.id), channel=f"{namespace}/{name}", status=job.status,
        template=TemplateRef.model_validate(job.template), reference=job.reference,
        scheduled_for=job.scheduled_for, trace_id=job.trace_id, total=job.total, expanded=job.expanded,
        queued=counts.get("created", 0) + counts.get("queued", 0), sending=counts.get("sending", 0),
        sent=counts.get("sent", 0), failed=counts.get("failed", 0), blocked=counts.get("blocked", 0),
        cancelled=counts.get("cancelled", 0), last_error=job.last_error, created_at=job.created_at,
        updated_at=job.updated_at, finished_at=job.finished_at)


def _location(job_id: uuid.UUID) -> str:
    return f"{API_PREFIX}/bulk/{job_id}"


router = APIRouter()

_OPENAPI_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/BulkRequest"}},
    "text/csv": {"schema": {"type": "string", "description": CSV_DESCRIPTION}}}}}


@router.post("/bulk", status_code=202, response_model=BulkJobView, openapi_extra=_OPENAPI_BODY,
             responses={202: {"description": "Accepted: the job and every row are stored; see Location for "
                                             "its progress.",
                              "headers": {"Location": {"schema": {"type": "string"}},
                                          "Idempotent-Replay": {"schema": {"type": "string"}}}},
                        403: {"model": ErrorAnswer}, 409: {"model": ErrorAnswer},
                        413: {"model": ErrorAnswer}, 415: {"model": ErrorAnswer},
                        422: {"model": ErrorAnswer}, 503: {"model": ErrorAnswer}})
async def create_bulk_job(
    request: Request, caller: Caller,
    channel: Annotated[str | None, Query(max_length=317, description="CSV: the channel (namespace/name).")
                       ] = None,
    template: Annotated[str | None, Query(max_length=253, description="CSV: the template's name.")] = None,
    language: Annotated[str | None, Query(max_length=35, description="CSV: the template's language.")] = None,
    reference: Annotated[str | None, Query(max_length=256, description="CSV: your reference.")] = None,
    scheduled_for: Annotated[str | None, Query(alias="scheduledFor", max_length=64,
                                               description="CSV: send at or after this time.")] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1,
                                                  max_length=255)] = None,
    traceparent: Annotated[str | None, Header(max_length=256)] = None,
) -> JSONResponse:
    """Accept up to 100,000 notifications from one template, as JSON (`BulkRequest`) or CSV. 202 once
    the job and every row are stored; a bad row refuses the whole job (422 with its line or index)."""
    state = _state(request)
    raw = await request.body()
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    query = {name: value for name, value in (
        ("channel", channel), ("template", template), ("language", language), ("reference", reference),
        ("scheduledFor", scheduled_for)) if value is not None}
    try:
        if media == "text/csv":
            options = _csv_options(query)
            csv_column, rows = await asyncio.to_thread(_csv_rows, raw)
        else:
            if query:
                name = next(iter(query))
                raise Refused(422, "invalid_request", f"{name}: goes in the JSON body (the query is for CSV)",
                              field=name)
            options, items = await asyncio.to_thread(_json_request, raw)
            csv_column, rows = None, iter(enumerate(items))
    except _CsvProblem as exc:
        BULK_JOBS.labels("invalid").inc()
        raise exc.refusal() from None
    except Refused:
        BULK_JOBS.labels("invalid").inc()
        raise
    record = await channel_for(state, caller, options)
    key = record.key
    if record.type not in ("telegram", "email"):
        raise Refused(422, "invalid_request", f"{options.channel} is a {record.type} channel, which this API "
                                              "cannot send", field="channel")
    try:
        new_rows = await asyncio.to_thread(_prepare, options, rows, csv_column, record)
    except Refused:
        BULK_JOBS.labels("invalid").inc()
        raise
    idempotency = None
    lock = None
    if idempotency_key is not None:
        digest = await asyncio.to_thread(_request_digest, f"{request.url.path}?{request.url.query}", raw)
        idempotency = Idempotency(idempotency_key, digest)
        lock = _idempotency_lock(caller.key_id, idempotency_key)
        if not await state.redis.set(lock, "1", nx=True, ex=IDEMPOTENCY_LOCK_SECONDS):
            return await _replay_or_conflict(state, caller, idempotency)
    new = qb.NewJob(id=uuid.uuid4(), channel_id=record.id, api_key_id=caller.key_id,
                    template=options.template.to_k8s(), reference=options.reference,
                    scheduled_for=options.scheduled_for, trace_id=_trace_id(traceparent))

    def answer(job: qb.Job) -> tuple[int, dict[str, Any], str | None]:
        return 202, _view(job, {}).model_dump(mode="json", by_alias=True), _location(job.id)

    try:
        async with state.db.acquire() as conn:
            job, existing = await qb.store(conn, new, new_rows, idempotency, answer)
    except DATABASE_ERRORS as exc:
        BULK_JOBS.labels("unavailable").inc()
        raise Refused(503, "unavailable", "the job cannot be stored right now; try again",
                      headers={"Retry-After": "1"}) from exc
    finally:
        if lock is not None:
            await state.redis.delete(lock)
    if existing is not None:
        assert idempotency is not None
        return _replayed(existing, idempotency)
    assert job is not None
    expander: BulkExpander | None = getattr(request.app.state, "bulk_expander", None)
    if expander is not None:
        expander.wake()
    BULK_JOBS.labels("accepted").inc()
    log.info("bulk_job_accepted", job_id=str(job.id), channel=key, rows=job.total, trace_id=job.trace_id,
             api_key=caller.key_id)
    status_code, view, location = answer(job)
    return JSONResponse(view, status_code=status_code, headers={"Location": location or ""})


@router.get("/bulk/{job_id}", response_model=BulkJobView, responses={404: {"model": ErrorAnswer}})
async def get_bulk_job(request: Request, job_id: uuid.UUID, caller: Caller) -> BulkJobView:
    """A bulk job's progress: rows expanded into notifications, and those by status."""
    async with _state(request).db.acquire() as conn:
        job = await qb.get(conn, job_id, caller.namespace)
        counts = await qb.notification_counts(conn, job_id) if job is not None else {}
    if job is None:
        raise Refused(404, "not_found", f"no bulk job {job_id}", field="job_id")
    return _view(job, counts)


def add_bulk_api(api: FastAPI) -> None:
    """The bulk routes on the `/api/v1` app, and `BulkRequest` (the JSON form of its body, which the
    route reads itself, as it also takes CSV) in the OpenAPI document's schemas."""
    api.include_router(router)
    build = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            document = build()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            top = BulkRequest.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
            for name, schema in {**top.pop("$defs", {}), "BulkRequest": top}.items():
                schemas.setdefault(name, schema)
        return api.openapi_schema  # type: ignore[return-value]

    api.openapi = openapi  # type: ignore[method-assign]


class BulkExpander:
    """Expands stored bulk jobs into notifications; one per webhook replica (see the module doc)."""

    def __init__(self, db: asyncpg.Pool, redis: aioredis.Redis, *, lease_seconds: float = 30.0,
                 chunk_rows: int = 1000, poll_seconds: float = 1.0) -> None:
        self.db, self.redis = db, redis
        self.lease_seconds, self.chunk_rows, self.poll_seconds = lease_seconds, chunk_rows, poll_seconds
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bulk-expander")

    async def stop(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - a grace period, then cancel
        """Finish the chunk under way and give the job back (another replica may take it at once); past
        `timeout` (Postgres away) cancel: an unfinished chunk rolls back, and the lease runs out."""
        self._stopping.set()
        self._wake.set()
        await stop_within(self._task, timeout)

    def wake(self) -> None:
        """A job was stored here: look now rather than at the next poll."""
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                while not self._stopping.is_set() and await self._expand_next():
                    pass
            except Exception as exc:  # Postgres away: try again at the next poll
                log.warning("bulk.expand_failed", error=repr(exc)[:300])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    async def _expand_next(self) -> bool:
        """Expand one job to its end (or until stopped); False when there was none to take."""
        async with self.db.acquire() as conn:
            job = await qb.claim(conn, self.worker, self.lease_seconds)
        if job is None:
            return False
        log.info("bulk.expanding", job_id=str(job.id), channel=job.channel_key, expanded=job.expanded,
                 total=job.total, trace_id=job.trace_id)
        created = BULK_EXPANDED.labels(job.channel_key)
        while True:
            if self._stopping.is_set():
                async with self.db.acquire() as conn:
                    await qb.release(conn, job.id, self.worker)
                return False
            async with self.db.acquire() as conn:
                chunk = await qb.expand_chunk(conn, job, self.worker, self.chunk_rows, self.lease_seconds,
                                              DEFAULT_MAX_ATTEMPTS)
            if chunk is None:
                log.warning("bulk.lease_lost", job_id=str(job.id))
                return True
            created.inc(len(chunk.created))
            if chunk.created and job.scheduled_for is None:
                await self._enqueue(job, chunk.created)
            if chunk.status != "expanding":
                log.info("bulk.finished", job_id=str(job.id), status=chunk.status, total=job.total,
                         trace_id=job.trace_id)
                return True

    async def _enqueue(self, job: qb.Job, ids: list[uuid.UUID]) -> None:
        """Put a chunk's ids on the bulk lane; on failure the workers' replayer does it later."""
        stream = notify_stream(job.channel_key, "bulk")
        try:
            tasks = [NotificationTask(notification_id=str(n), trace_id=job.trace_id) for n in ids]
            await add_tasks(self.redis, [(stream, task) for task in tasks])
        except Exception as exc:  # the rows are stored: the replayer enqueues them
            log.warning("bulk.enqueue_failed", job_id=str(job.id), count=len(ids), error=type(exc).__name__)

