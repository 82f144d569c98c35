"""POST /emails/<type> (one path per type of mail) and GET /emails/{id}."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from starlette.convertors import Convertor, register_url_convertor

from app.api_keys import ApiKeyDep, Caller
from app.config import Settings
from app.db import SessionDep, driver_connection
from app.emails import service
from app.emails.catalog import EMAIL_KINDS
from app.emails.schemas import (
    EmailAccepted,
    EmailChangeCreate,
    EmailCreate,
    EmailEventRead,
    EmailRead,
    MatchingNotificationCreate,
    PasswordResetCreate,
    VerifyEmailCreate,
)
from app.errors import Conflict, NotFound, UnsupportedMediaType, error_responses
from app.models import MessageStatus
from app.ops.metrics import EMAILS_ACCEPTED, EMAILS_REFUSED

router = APIRouter(prefix="/emails", tags=["emails"])


class _UuidText(Convertor[str]):
    """A UUID's text in any case (pydantic parses it): `/emails/verify-email` is then no mail
    id, so GET on a send path is 405, not a 422 about a UUID."""

    regex = "[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("uuidtext", _UuidText())

IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="A retry with the same key and body returns the first answer (and "
        "`Idempotent-Replayed: true`) and sends nothing more; the same key with another body is "
        "422 `idempotency_key_reused`. Keys are per API key.",
    ),
]


async def _require_json(request: Request) -> None:
    # async: a plain def dependency would cost a trip through the thread pool per request.
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType("send the body as application/json")


def _send_route(kind: str, operation_id: str, summary: str) -> dict[str, Any]:
    """What each of the four send operations declares."""
    return {
        "path": f"/{kind}",
        "status_code": 202,
        "response_model": EmailAccepted,
        "dependencies": [Depends(_require_json)],
        "summary": summary,
        "operation_id": operation_id,
        "description": f"`{EMAIL_KINDS[kind].category}` mail; committed before the 202.",
        "responses": {
            202: {
                "description": "Accepted: stored, and sent as soon as SES allows.",
                "headers": {
                    "Idempotent-Replayed": {
                        "description": "`true` when this is the first answer to an earlier "
                        "request with the same Idempotency-Key (nothing new was accepted).",
                        "schema": {"type": "string", "enum": ["true"]},
                    }
                },
            },
            **error_responses(
                401,
                409,
                413,
                415,
                422,
                503,
                _409="The address is suppressed (`suppressed`, with `reason`), or opted out of "
                "this category (`opted_out`, with `category`).",
                _422="Invalid address or params (`invalid_request`, `invalid_params`; `detail` "
                "names each), or a reused Idempotency-Key (`idempotency_key_reused`).",
            ),
        },
    }


async def _send(
    kind: str,
    body: EmailCreate,
    request: Request,
    response: Response,
    caller: Caller,
    idempotency_key: str | None,
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
                kind=EMAIL_KINDS[kind],
                to=body.to,
                params=body.params.model_dump(),
                user_id=body.user_id,
                caller=caller,
                idempotency_key=idempotency_key,
                settings=settings,
            )
        except Conflict as refused:
            EMAILS_REFUSED.labels(type=kind, reason=refused.code).inc()
            raise
    if accepted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        EMAILS_ACCEPTED.labels(type=kind).inc()
        request.app.state.outbox_wake.set()
    return EmailAccepted(id=accepted.id, status=accepted.status)


# One static path per type of mail, each with its own body: a generated client types the params
# of each, and no send path overlaps GET /emails/{id}.
@router.post(**_send_route("verify-email", "sendVerifyEmail", "Send an address verification"))
async def send_verify_email(
    body: VerifyEmailCreate,
    request: Request,
    response: Response,
    caller: ApiKeyDep,
    idempotency_key: IdempotencyKey = None,
) -> EmailAccepted:
    return await _send("verify-email", body, request, response, caller, idempotency_key)


@router.post(**_send_route("password-reset", "sendPasswordReset", "Send a password reset"))
async def send_password_reset(
    body: PasswordResetCreate,
    request: Request,
    response: Response,
    caller: ApiKeyDep,
    idempotency_key: IdempotencyKey = None,
) -> EmailAccepted:
    return await _send("password-reset", body, request, response, caller, idempotency_key)


@router.post(**_send_route("email-change", "sendEmailChange", "Confirm a new address"))
async def send_email_change(
    body: EmailChangeCreate,
    request: Request,
    response: Response,
    caller: ApiKeyDep,
    idempotency_key: IdempotencyKey = None,
) -> EmailAccepted:
    return await _send("email-change", body, request, response, caller, idempotency_key)


@router.post(
    **_send_route(
        "matching-notification", "sendMatchingNotification", "Send a matching notification"
    )
)
async def send_matching_notification(
    body: MatchingNotificationCreate,
    request: Request,
    response: Response,
    caller: ApiKeyDep,
    idempotency_key: IdempotencyKey = None,
) -> EmailAccepted:
    return await _send("matching-notification", body, request, response, caller, idempotency_key)


@router.get(
    "/{id:uuidtext}",
    response_model=EmailRead,
    summary="Status and event history of a mail",
    operation_id="getEmail",
    responses=error_responses(
        401,
        404,
        422,
        503,
        _404="No such mail, or one sent with another key unless admin (`email_not_found`), or "
        "`id` is not a UUID (`not_found`).",
        _422="`id` is not a UUID (`invalid_request`).",
    ),
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
