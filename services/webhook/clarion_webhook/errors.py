"""The public API's one refusal: status, code, message, the field at fault, headers.

Every 4xx/5xx of `/api/v1` has the body `{"error": {"code": ..., "message": ..., "field": ...}}`
(`ErrorAnswer` in the OpenAPI document); raise `Refused` anywhere in a request and the app's handler
(`refused_handler`) answers it.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from fastapi import Request
from fastapi.responses import JSONResponse

#: What a Postgres call of a request may raise when it did not get through (the server away, a lost
#: connection, an error of the statement): the routes answer 503 "try again" for these. asyncpg's
#: InternalClientError is among them: a connection the server cuts while its reply is read leaves the
#: protocol mid-operation, and the ROLLBACK that follows raises it ("another operation is in
#: progress"; clarion.outages.database_unavailable counts it as an outage).
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


class Refused(Exception):
    """A request refused with this status, error code, message, field (if one is at fault) and headers."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return JSONResponse({"error": body}, status_code=self.status, headers=self.headers)


async def refused_handler(_: Request, exc: Exception) -> JSONResponse:
    """Register with `app.add_exception_handler(Refused, refused_handler)`."""
    assert isinstance(exc, Refused)
    return exc.response()
