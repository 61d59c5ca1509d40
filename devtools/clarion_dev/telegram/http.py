"""A small HTTP/1.1 server on httptools for the emulator's hot path.

aiohttp's server costs most of a request's CPU time; this protocol parses with httptools (a
dependency of uvicorn[standard]) and answers simple requests synchronously inside data_received,
so the emulator keeps up with several thousand sendMessage calls per second on one core.
Requests on one connection are answered in order (keep-alive, pipelining, chunked bodies and
`Expect: 100-continue` are handled); a handler that needs to wait returns an awaitable.
"""

from __future__ import annotations

import asyncio
import email.policy
import functools
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.parser import BytesParser
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import httptools

MAX_BODY = 64 * 1024 * 1024
_log = logging.getLogger(__name__)


class Drop:
    """A reply that closes the connection instead of answering."""


DROP = Drop()
Reply = tuple[int, bytes] | Drop
Handler = Callable[["Request"], "Reply | Awaitable[Reply]"]
_INTERNAL_ERROR: Reply = (500, b'{"ok":false,"error_code":500,"description":"Internal Server Error"}')


@dataclass(frozen=True)
class UploadedFile:
    filename: str
    content: bytes


class Request:
    __slots__ = ("body", "headers", "method", "path", "query_string")

    def __init__(self, method: str, path: str, query_string: str, headers: dict[str, str],
                 body: bytes) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.body = body

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.query_string, keep_blank_values=True)) if self.query_string else {}

    def json(self) -> Any:
        return json.loads(self.body)

    def multipart(self) -> dict[str, Any]:
        """Fields of a multipart/form-data body: text as str, files as UploadedFile."""
        head = b"Content-Type: " + self.headers.get("content-type", "").encode() + b"\r\n\r\n"
        message = BytesParser(policy=email.policy.HTTP).parsebytes(head + self.body)
        fields: dict[str, Any] = {}
        if not message.is_multipart():
            return fields
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not isinstance(name, str):
                continue
            payload = part.get_payload(decode=True)
            content = payload if isinstance(payload, bytes) else b""
            filename = part.get_filename()
            fields[name] = UploadedFile(filename, content) if filename else content.decode()
        return fields


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


_STATUS_LINES = {code: _status_line(code) for code in (200, 400, 401, 403, 404, 409, 413, 429, 500, 502,
                                                         503, 504)}


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, handler: Handler, tasks: set[asyncio.Task[Any]]) -> None:
        self._handler = handler
        self._tasks = tasks
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._queue: deque[tuple[Request, bool]] = deque()
        self._busy = False
        self._task: asyncio.Task[Any] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400)
        except httptools.HttpParserError:
            self._fail(400)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self._headers.get("expect", "").lower() == "100-continue" and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_BODY:
            self._fail(413)
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._transport is None:
            return
        url = self._url.decode("latin-1")
        path, _, query = url.partition("?")
        method = self._parser.get_method().decode()
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(method, path, query, self._headers, body)
        self._queue.append((request, self._parser.should_keep_alive()))
        if not self._busy:
            self._next()

    def _next(self) -> None:
        while self._queue and self._transport is not None:
            request, keep_alive = self._queue.popleft()
            try:
                result = self._handler(request)
            except Exception:
                _log.exception("handler failed", extra={"path": request.path})
                result = _INTERNAL_ERROR
            if isinstance(result, (tuple, Drop)):
                self._write(result, keep_alive)
                continue
            self._busy = True
            task: asyncio.Task[Reply] = asyncio.ensure_future(result)
            self._task = task
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._finished, keep_alive=keep_alive))
            return

    def _finished(self, task: asyncio.Task[Reply], keep_alive: bool) -> None:
        self._tasks.discard(task)
        self._task = None
        self._busy = False
        if task.cancelled():
            return
        error = task.exception()
        reply: Reply = _INTERNAL_ERROR
        if error is None:
            reply = task.result()
        else:
            _log.error("handler failed", exc_info=error)
        self._write(reply, keep_alive)
        self._next()

    def _write(self, reply: Reply, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        if isinstance(reply, Drop):
            transport.abort()
            self._transport = None
            return
        status, body = reply
        head = _STATUS_LINES.get(status) or _status_line(status)
        transport.write(b"".join((
            head, b"Content-Type: application/json\r\nContent-Length: ", str(len(body)).encode(),
            b"\r\n\r\n" if keep_alive else b"\r\nConnection: close\r\n\r\n", body)))
        if not keep_alive:
            transport.close()
            self._transport = None

    def _fail(self, status: int) -> None:
        if self._transport is not None:
            self._write((status, b""), keep_alive=False)


async def serve(handler: Handler, host: str, port: int) -> tuple[asyncio.Server, set[asyncio.Task[Any]]]:
    """Listen on host:port; returns the server and the set of handler tasks still running."""
    tasks: set[asyncio.Task[Any]] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpProtocol(handler, tasks), host, port, backlog=1024)
    return server, tasks
