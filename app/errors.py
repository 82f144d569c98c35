"""Errors that carry their HTTP answer, and the handlers that turn any failure into clean JSON.

Every error body has the same shape: ``{"error": {"code": ..., "message": ...}}`` (plus
``detail`` for validation errors), so the app can branch on ``code``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.models import (
    OPTIONAL_CATEGORIES,
    ApiKeyScope,
    MessageStatus,
    Permission,
    SuppressionReason,
)

log = logging.getLogger(__name__)


class ErrorCode(StrEnum):
    """Every ``error.code`` an answer can carry (the contract: a client may switch on it)."""

    # the API
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    EMAIL_NOT_FOUND = "email_not_found"
    RECIPIENT_NOT_FOUND = "recipient_not_found"
    SUPPRESSION_NOT_FOUND = "suppression_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    SUPPRESSED = "suppressed"
    OPTED_OUT = "opted_out"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    INVALID_REQUEST = "invalid_request"
    INVALID_PARAMS = "invalid_params"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    CATEGORY_NOT_OPTIONAL = "category_not_optional"
    NOT_CANCELLABLE = "not_cancellable"
    SES_UNAVAILABLE = "ses_unavailable"
    UNAVAILABLE = "unavailable"
    INTERNAL_ERROR = "internal_error"
    HTTP_ERROR = "http_error"
    # the SNS endpoint: 400, and the reasons of its 403
    NOT_SNS_MESSAGE = "not_sns_message"
    UNREADABLE_SES_EVENT = "unreadable_ses_event"
    TOPIC_NOT_ALLOWED = "topic_not_allowed"
    CERT_URL = "cert_url"
    CERT_NOT_VALID = "cert_not_valid"
    BAD_SIGNATURE = "bad_signature"
    SIGNATURE_VERSION = "signature_version"
    BAD_TIMESTAMP = "bad_timestamp"
    TOO_OLD = "too_old"
    IN_FUTURE = "in_future"
    SUBSCRIBE_URL = "subscribe_url"
    SUBSCRIBE_FAILED = "subscribe_failed"
    CERTIFICATE_UNAVAILABLE = "certificate_unavailable"


class AppError(Exception):
    status_code = 400
    # Each subclass names its code, or the raise site does (a Conflict says which one).
    code: ErrorCode

    def __init__(self, message: str, *, code: ErrorCode | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.extra = extra


class Unauthorized(AppError):
    status_code = 401
    code = ErrorCode.UNAUTHORIZED


class Forbidden(AppError):
    status_code = 403
    code = ErrorCode.FORBIDDEN


class NotFound(AppError):
    status_code = 404
    code = ErrorCode.NOT_FOUND


class Conflict(AppError):
    status_code = 409


class Unprocessable(AppError):
    status_code = 422
    code = ErrorCode.INVALID_REQUEST


class UnsupportedMediaType(AppError):
    status_code = 415
    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE


class OptedOutCategory(StrEnum):
    """The optional categories a recipient can leave (``OPTIONAL_CATEGORIES``)."""

    MATCHING = "matching"


assert {c.value for c in OptedOutCategory} == {c.value for c in OPTIONAL_CATEGORIES}


class ErrorDetail(BaseModel):
    loc: list[str | int] = Field(description='Where: `["body", "params", "reset_url"]`.')
    msg: str
    type: str | None = None


class ErrorBody(BaseModel):
    model_config = ConfigDict(title="ErrorBody")

    code: ErrorCode
    message: str = Field(description="For people; may change. Switch on `code`.")
    reason: SuppressionReason | OptedOutCategory | None = Field(
        default=None,
        description="409 `suppressed`: why the address is suppressed. 409 `opted_out`: the "
        "category left (as `category`).",
    )
    category: OptedOutCategory | None = Field(
        default=None, description="409 `opted_out`: the category the recipient left."
    )
    status: MessageStatus | None = Field(
        default=None,
        description="409 `not_cancellable`: the email's status (`sending`: being handed to "
        "SES now; `sent`, `delivered`, ...: too late).",
    )
    detail: list[ErrorDetail] | None = Field(
        default=None, description="422: each field that is wrong, and why."
    )
    scope: ApiKeyScope | None = Field(
        default=None, description="403 `forbidden`: the scope of the key that was used."
    )
    permission: Permission | None = Field(
        default=None,
        description="403 `forbidden`: the permission the request needs, which that scope "
        "lacks (the scope table of docs/api.md says which scope has which).",
    )


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx answer of the JSON API."""

    error: ErrorBody


RETRY_AFTER_HEADER: dict[str, Any] = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 0},
    }
}

_DESCRIPTIONS: dict[int, str] = {
    400: "Not a request this endpoint can read.",
    401: "No or unknown API key (`unauthorized`).",
    403: "The API key's scope lacks the permission this needs (`forbidden`, with `scope` and "
    "`permission`).",
    404: "Not found.",
    409: "Conflict.",
    413: "Body over 64 KiB (`payload_too_large`).",
    415: "Body is not application/json (`unsupported_media_type`).",
    422: "Invalid input (`invalid_request`); `detail` names each field.",
    502: "An upstream service failed.",
    503: "The database is away (`unavailable`): retry after `Retry-After` seconds.",
}


_ENVELOPE_JSON = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}


def error_responses(
    *statuses: int, html_route: bool = False, **descriptions: str
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these statuses, all with the error envelope.

    ``descriptions`` override the default text by status (``_404="..."``). ``html_route``: the
    route answers HTML (its errors are still JSON), so the envelope is named as JSON explicitly.
    """
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        response: dict[str, Any] = {
            "description": descriptions.get(f"_{status}", _DESCRIPTIONS[status])
        }
        if html_route:
            response["content"] = _ENVELOPE_JSON
        else:
            response["model"] = ErrorResponse
        if status == 401:
            response["headers"] = {
                "WWW-Authenticate": {"description": "`Bearer`.", "schema": {"type": "string"}}
            }
        if status == 503:
            response["headers"] = RETRY_AFTER_HEADER
        responses[status] = response
    return responses


def error_body(code: ErrorCode, message: str, **extra: Any) -> dict[str, Any]:
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


RETRY_AFTER_SECONDS = 5

# What FastAPI's HTTPException says when a JSON body cannot even be decoded.
_BODY_NOT_DECODABLE = "There was an error parsing the body"


# What a 404 or 405 says on paths a router owns (it knows what exists there), or None for
# the generic text; the app's assembly names them by path prefix.
MissingText = Callable[[Request, int], str | None]

_HTTP_CODES = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
}
_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


def _answers(request: Request, method: str) -> bool:
    scope = {**request.scope, "method": method}
    return any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on this path (RFC 9110's Allow for a 405); Starlette
    names the methods of the first route on the path only."""
    return [method for method in _METHODS if _answers(request, method)]


def install_error_handlers(
    app: FastAPI, *, missing_texts: Mapping[str, MissingText] | None = None
) -> None:
    """``missing_texts``: by path prefix, what a 404 or 405 there says."""

    def missing_text(request: Request, status_code: int) -> str | None:
        for prefix, text in (missing_texts or {}).items():
            if request.url.path.startswith(prefix):
                return text(request, status_code)
        return None

    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        headers = None
        if exc.status_code == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        elif exc.status_code == 503:
            headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
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
            error_body(ErrorCode.INVALID_REQUEST, "the request is not valid", detail=detail),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == _BODY_NOT_DECODABLE:
            # FastAPI says 400 for a JSON body that is not UTF-8 (and 422 for one that does not
            # parse): both are the same mistake, answered like any other invalid input.
            return JSONResponse(
                error_body(
                    ErrorCode.INVALID_REQUEST,
                    "the request is not valid",
                    detail=[{"loc": ["body"], "msg": "not UTF-8 JSON", "type": "json_invalid"}],
                ),
                status_code=422,
            )
        code = _HTTP_CODES.get(exc.status_code, ErrorCode.HTTP_ERROR)
        headers = getattr(exc, "headers", None)
        message = str(exc.detail)
        if exc.status_code in (404, 405):
            message = missing_text(request, exc.status_code) or message
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=headers)

    async def _database_error(request: Request, exc: Exception) -> JSONResponse:
        # The database being away is an outage, not a bug: 503 so callers (and SNS) retry.
        # Registered per class (not for Exception) so Starlette answers without re-raising.
        if _is_database_unavailable(exc):
            log.error("database unavailable", extra={"error": type(exc).__name__})
            return JSONResponse(
                error_body(ErrorCode.UNAVAILABLE, "the service is temporarily unavailable"),
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        log.error("database error", exc_info=exc, extra={"path": request.url.path})
        return JSONResponse(
            error_body(ErrorCode.INTERNAL_ERROR, "unexpected error"), status_code=500
        )

    for exc_class in (DBAPIError, OSError):
        app.add_exception_handler(exc_class, _database_error)
