"""Errors that carry their HTTP answer, and the handlers that turn any failure into clean JSON.

Every error body has the same shape: ``{"error": {"code": ..., "message": ...}}`` (plus
``detail`` for validation errors), so the app can branch on ``code``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class AppError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.extra = extra


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"


class NotFound(AppError):
    status_code = 404
    code = "not_found"


class Conflict(AppError):
    status_code = 409
    code = "conflict"


class Unprocessable(AppError):
    status_code = 422
    code = "invalid_request"


class UnsupportedMediaType(AppError):
    status_code = 415
    code = "unsupported_media_type"


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


# SQLSTATE classes that say the database is away or overwhelmed, not that the query is wrong:
# 08 connection exception (asyncpg's "connection was closed in the middle of operation" too),
# 53 insufficient resources (too many connections), 57P shutting down, starting up, crashed.
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P")


def _is_database_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | InterfaceError | OSError | TimeoutError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    # SQLAlchemy reports asyncpg's errors during a restart as plain DBAPIError: look at the
    # driver's error (and what it was raised from) for its SQLSTATE.
    cause: BaseException | None = exc.orig
    while cause is not None:
        if isinstance(cause, OSError | TimeoutError):
            return True
        sqlstate = getattr(cause, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES):
            return True
        cause = cause.__cause__
    return False


# What FastAPI's HTTPException says when a JSON body cannot even be decoded.
_BODY_NOT_DECODABLE = "There was an error parsing the body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(
            error_body(exc.code, exc.message, **exc.extra),
            status_code=exc.status_code,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type")}
            for err in exc.errors()
        ]
        return JSONResponse(
            error_body("invalid_request", "the request is not valid", detail=detail),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == _BODY_NOT_DECODABLE:
            # FastAPI says 400 for a JSON body that is not UTF-8 (and 422 for one that does not
            # parse): both are the same mistake, answered like any other invalid input.
            return JSONResponse(
                error_body(
                    "invalid_request",
                    "the request is not valid",
                    detail=[{"loc": ["body"], "msg": "not UTF-8 JSON", "type": "json_invalid"}],
                ),
                status_code=422,
            )
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(
            error_body(code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def _database_error(request: Request, exc: Exception) -> JSONResponse:
        # The database being away is an outage, not a bug: 503 so callers (and SNS) retry.
        # Registered per class (not for Exception) so Starlette answers without re-raising.
        if _is_database_unavailable(exc):
            log.error("database unavailable", extra={"error": type(exc).__name__})
            return JSONResponse(
                error_body("unavailable", "the service is temporarily unavailable"),
                status_code=503,
                headers={"Retry-After": "5"},
            )
        log.error("database error", exc_info=exc, extra={"path": request.url.path})
        return JSONResponse(error_body("internal_error", "unexpected error"), status_code=500)

    for exc_class in (DBAPIError, OSError):
        app.add_exception_handler(exc_class, _database_error)
