"""POST /emails/{type} and GET /emails/{id}."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response

from app.api_keys import ApiKeyDep
from app.config import Settings
from app.db import SessionDep, driver_connection
from app.emails import service
from app.emails.catalog import EMAIL_KINDS
from app.emails.schemas import EmailAccepted, EmailCreate, EmailEventRead, EmailRead, EmailType
from app.errors import Conflict, NotFound, UnsupportedMediaType
from app.models import MessageStatus
from app.ops.metrics import EMAILS_ACCEPTED, EMAILS_REFUSED

router = APIRouter(prefix="/emails", tags=["emails"])

ERROR_EXAMPLE: dict[str, Any] = {
    "application/json": {
        "example": {"error": {"code": "suppressed", "message": "...", "reason": "hard_bounce"}}
    }
}


async def _require_json(request: Request) -> None:
    # async: a plain def dependency would cost a trip through the thread pool per request.
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType("send the body as application/json")


@router.post(
    "/{type}",
    status_code=202,
    response_model=EmailAccepted,
    dependencies=[Depends(_require_json)],
    summary="Accept a mail for sending",
    responses={
        401: {"description": "No or unknown API key."},
        409: {
            "description": "The address is suppressed, or opted out of this category. "
            "`error.code` is `suppressed` (with `error.reason`) or `opted_out`.",
            "content": ERROR_EXAMPLE,
        },
        413: {"description": "Body over 64 KiB."},
        415: {"description": "Body is not application/json."},
        422: {"description": "Invalid address, params, or a reused Idempotency-Key."},
    },
)
async def send_email(
    type: EmailType,
    body: EmailCreate,
    request: Request,
    response: Response,
    caller: ApiKeyDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=200,
            pattern=r"^[\x21-\x7e]+$",
            description="A retry with the same key and body returns the first answer.",
        ),
    ] = None,
) -> EmailAccepted:
    settings: Settings = request.app.state.settings
    # The hot path takes asyncpg's connection rather than a SessionDep session: FastAPI's
    # yield dependencies, the ORM session and SQLAlchemy's statement handling cost several
    # times the statement itself. service.accept is one statement, a transaction of its own:
    # the mail is committed when it returns, before the 202 goes out.
    async with driver_connection(request.app.state.engine) as connection:
        try:
            accepted = await service.accept(
                connection,
                kind=EMAIL_KINDS[type.value],
                to=body.to,
                params=body.params,
                user_id=body.user_id,
                caller=caller,
                idempotency_key=idempotency_key,
                settings=settings,
            )
        except Conflict as refused:
            EMAILS_REFUSED.labels(type=type.value, reason=refused.code).inc()
            raise
    if accepted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        EMAILS_ACCEPTED.labels(type=type.value).inc()
        request.app.state.outbox_wake.set()
    return EmailAccepted(id=accepted.id, status=accepted.status)


@router.get(
    "/{id}",
    response_model=EmailRead,
    summary="Status and event history of a mail",
    responses={
        401: {"description": "No or unknown API key."},
        404: {"description": "No such mail (or one sent with another key, unless admin)."},
    },
)
async def get_email(id: uuid.UUID, session: SessionDep, caller: ApiKeyDep) -> EmailRead:
    message, events = await service.read(session, message_id=id)
    if message.api_key_id != caller.key_id and not caller.is_admin:
        # An app or test key reads its own mails; another key's are not even said to exist.
        raise NotFound("no such email", code="email_not_found")
    return EmailRead(
        id=message.id,
        type=message.kind,
        category=message.category,
        status=MessageStatus(message.status),
        to=message.to_address,
        attempts=message.attempts,
        created_at=message.created_at,
        sent_at=message.sent_at,
        expires_at=message.expires_at,
        ses_message_id=message.ses_message_id,
        last_error=message.last_error,
        test=message.test,
        events=[
            EmailEventRead(kind=e.kind, detail=e.detail, cause=e.cause, created_at=e.created_at)
            for e in events
        ],
    )
