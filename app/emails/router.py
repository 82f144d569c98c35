"""POST /emails/<type> (one path per type of mail), its batch and preview, GET and DELETE
/emails/{id}."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from starlette.convertors import Convertor, register_url_convertor

from app.api_keys import Caller, ReadMailKeyDep, SendKeyDep
from app.config import Settings
from app.db import SessionDep, driver_connection
from app.deps import SettingsDep, get_engine, get_outbox_wake, get_settings
from app.emails import service
from app.emails.catalog import EMAIL_KINDS
from app.emails.schemas import (
    EMAIL_BATCHES,
    EMAIL_BODIES,
    MAX_BATCH,
    EmailAccepted,
    EmailBatchAccepted,
    EmailBatchCreate,
    EmailBatchResult,
    EmailCancelled,
    EmailChangeCreate,
    EmailCreate,
    EmailEventRead,
    EmailPreview,
    EmailRead,
    MatchingNotificationCreate,
    PasswordResetCreate,
    VerifyEmailCreate,
)
from app.errors import Conflict, ErrorCode, NotFound, UnsupportedMediaType, error_responses
from app.models import MailType, MessageStatus
from app.ops.metrics import EMAILS_ACCEPTED, EMAILS_REFUSED

router = APIRouter(prefix="/emails", tags=["emails"])

_SEND_PATHS = [f"/emails/{kind.value}" for kind in MailType]
NO_SUCH_TYPE = f"no such type of mail; POST to {', '.join(_SEND_PATHS[:-1])} or {_SEND_PATHS[-1]}"


def missing_text(request: Request, status_code: int) -> str | None:
    """What a 404 or 405 under /emails/ says: a POST there was meant to send, so it is told the
    types there are; a GET that matches nothing looked for a mail."""
    if request.method == "POST":
        return NO_SUCH_TYPE
    return "no such email" if status_code == 404 else None


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
                403,
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
    # The hot path awaits what it needs (app.deps) rather than declaring FastAPI dependencies,
    # and takes asyncpg's connection rather than a SessionDep session: FastAPI's
    # yield dependencies, the ORM session and SQLAlchemy's statement handling cost several
    # times the statement itself. service.accept is one statement, a transaction of its own:
    # the mail is committed when it returns, before the 202 goes out.
    settings = await get_settings(request)
    async with driver_connection(await get_engine(request)) as connection:
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
                send_at=body.send_at,
                tags=body.tags,
            )
        except Conflict as refused:
            EMAILS_REFUSED.labels(type=kind, reason=refused.code).inc()
            raise
    if accepted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        EMAILS_ACCEPTED.labels(type=kind).inc()
        (await get_outbox_wake(request)).set()
    return EmailAccepted(id=accepted.id, status=accepted.status)


# One static path per type of mail, each with its own body: a generated client types the params
# of each, and no send path overlaps GET /emails/{id}.
@router.post(**_send_route("verify-email", "sendVerifyEmail", "Send an address verification"))
async def send_verify_email(
    body: VerifyEmailCreate,
    request: Request,
    response: Response,
    caller: SendKeyDep,
    idempotency_key: IdempotencyKey = None,
) -> EmailAccepted:
    return await _send("verify-email", body, request, response, caller, idempotency_key)


@router.post(**_send_route("password-reset", "sendPasswordReset", "Send a password reset"))
async def send_password_reset(
    body: PasswordResetCreate,
    request: Request,
    response: Response,
    caller: SendKeyDep,
    idempotency_key: IdempotencyKey = None,
) -> EmailAccepted:
    return await _send("password-reset", body, request, response, caller, idempotency_key)


@router.post(**_send_route("email-change", "sendEmailChange", "Confirm a new address"))
async def send_email_change(
    body: EmailChangeCreate,
    request: Request,
    response: Response,
    caller: SendKeyDep,
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
    caller: SendKeyDep,
    idempotency_key: IdempotencyKey = None,
) -> EmailAccepted:
    return await _send("matching-notification", body, request, response, caller, idempotency_key)


# Batches and previews: the same body per type as the single send, so one endpoint each, made
# per type (a generated client still types each type's items and params).
_OPERATION_NAMES = {
    "verify-email": "VerifyEmail",
    "password-reset": "PasswordReset",
    "email-change": "EmailChange",
    "matching-notification": "MatchingNotification",
}


def _add_batch_route(kind: str) -> None:
    batch_model = EMAIL_BATCHES[kind]

    async def send_batch(
        body: batch_model,  # type: ignore[valid-type]
        request: Request,
        response: Response,
        caller: SendKeyDep,
        idempotency_key: IdempotencyKey = None,
    ) -> EmailBatchAccepted:
        return await _send_batch(kind, body, request, response, caller, idempotency_key)

    # The annotation names a local (postponed annotations are strings): give FastAPI the class.
    send_batch.__annotations__["body"] = batch_model
    router.add_api_route(
        f"/{kind}/batch",
        send_batch,
        methods=["POST"],
        status_code=200,
        response_model=EmailBatchAccepted,
        dependencies=[Depends(_require_json)],
        summary=f"Send up to {MAX_BATCH} mails of this type at once",
        operation_id=f"send{_OPERATION_NAMES[kind]}Batch",
        description="Each item is the body of the single send, checked as it would be: a bad, "
        "suppressed or opted-out item is refused alone (its result holds the `error` the single "
        "send would answer), the others are accepted. One statement stores them all; the answer "
        "comes after it committed. `Idempotency-Key` covers the whole batch.",
        responses={
            200: {
                "description": "One result per item, in order.",
                "headers": {
                    "Idempotent-Replayed": {
                        "description": "`true` when this is the first answer to an earlier "
                        "batch with the same Idempotency-Key (nothing new was accepted).",
                        "schema": {"type": "string", "enum": ["true"]},
                    }
                },
            },
            **error_responses(
                401,
                403,
                413,
                415,
                422,
                503,
                _413="Body over 2 MiB (`payload_too_large`).",
                _422=f"Not a batch (`invalid_request`: no `emails`, or more than {MAX_BATCH}), "
                "or a reused Idempotency-Key (`idempotency_key_reused`). Bad items do not make "
                "a 422: their results say why.",
            ),
        },
    )


async def _send_batch(
    kind: str,
    body: EmailBatchCreate,
    request: Request,
    response: Response,
    caller: Caller,
    idempotency_key: str | None,
) -> EmailBatchAccepted:
    async with driver_connection(await get_engine(request)) as connection:
        accepted = await service.accept_batch(
            connection,
            kind=EMAIL_KINDS[kind],
            body=EMAIL_BODIES[kind],
            items=body.emails,
            caller=caller,
            idempotency_key=idempotency_key,
            settings=await get_settings(request),
        )
    if accepted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        for result in accepted.results:
            if "error" in result:
                EMAILS_REFUSED.labels(type=kind, reason=result["error"]["code"]).inc()
        EMAILS_ACCEPTED.labels(type=kind).inc(accepted.accepted)
        if accepted.accepted:
            (await get_outbox_wake(request)).set()
    return EmailBatchAccepted(
        results=[EmailBatchResult.model_validate(result) for result in accepted.results]
    )


def _add_preview_route(kind: str) -> None:
    body_model = EMAIL_BODIES[kind]

    async def preview(
        body: body_model,  # type: ignore[valid-type]
        settings: SettingsDep,
        caller: SendKeyDep,
    ) -> EmailPreview:
        return _preview(kind, body, settings)

    preview.__annotations__["body"] = body_model
    router.add_api_route(
        f"/{kind}/preview",
        preview,
        methods=["POST"],
        response_model=EmailPreview,
        dependencies=[Depends(_require_json)],
        summary="Render this mail as it would be sent, without sending it",
        operation_id=f"preview{_OPERATION_NAMES[kind]}",
        description="The send body, checked as a send would be (422), rendered by the worker's "
        "own function; the unsubscribe link is a placeholder. Nothing is stored or sent.",
        responses=error_responses(401, 403, 413, 415, 422, 503),
    )


def _preview(kind: str, body: EmailCreate, settings: Settings) -> EmailPreview:
    parts = service.preview(
        kind=EMAIL_KINDS[kind],
        params=body.params.model_dump(),
        send_at=body.send_at,
        settings=settings,
    )
    return EmailPreview(subject=parts.subject, text=parts.text, html=parts.html)


for _kind in EMAIL_KINDS:
    _add_batch_route(_kind)
    _add_preview_route(_kind)


@router.delete(
    "/{id:uuidtext}",
    response_model=EmailCancelled,
    summary="Cancel a mail not yet handed to SES",
    operation_id="cancelEmail",
    description="Stops a `queued`, `scheduled` or `held` mail: it becomes `cancelled` (history "
    "event `cancelled`, webhook `email.cancelled`) and is never sent.",
    responses=error_responses(
        401,
        403,
        404,
        409,
        422,
        503,
        _404="No such mail, or one this key may not see (`email_not_found`): an app key "
        "cancels its own mails, a test key its own test mails, an admin key any.",
        _409="Already being handed to SES, or done (`not_cancellable`, with its `status`).",
        _422="`id` is not a UUID (`invalid_request`).",
    ),
)
async def cancel_email(id: uuid.UUID, session: SessionDep, caller: SendKeyDep) -> EmailCancelled:
    await service.cancel(session, message_id=id, caller=caller)
    await session.commit()
    return EmailCancelled(status=MessageStatus.CANCELLED)


@router.get(
    "/{id:uuidtext}",
    response_model=EmailRead,
    summary="Status and event history of a mail",
    operation_id="getEmail",
    responses=error_responses(
        401,
        403,
        404,
        422,
        503,
        _404="No such mail, or one this key may not see (`email_not_found`): an app key reads "
        "its own mails, a test key its own test mails, admin and support keys any.",
        _422="`id` is not a UUID (`invalid_request`).",
    ),
)
async def get_email(id: uuid.UUID, session: SessionDep, caller: ReadMailKeyDep) -> EmailRead:
    message, events = await service.read(session, message_id=id)
    if not caller.may_see_mail(api_key_id=message.api_key_id, test=message.test):
        # A mail this key may not read is not even said to exist.
        raise NotFound("no such email", code=ErrorCode.EMAIL_NOT_FOUND)
    return EmailRead(
        id=message.id,
        type=message.kind,
        category=message.category,
        status=MessageStatus(message.status),
        to=message.to_address,
        attempts=message.attempts,
        created_at=message.created_at,
        sent_at=message.sent_at,
        send_at=message.send_at,
        expires_at=message.expires_at,
        ses_message_id=message.ses_message_id,
        last_error=message.last_error,
        test=message.test,
        tags=message.tags or {},
        events=[
            EmailEventRead(kind=e.kind, detail=e.detail, cause=e.cause, created_at=e.created_at)
            for e in events
        ],
    )
