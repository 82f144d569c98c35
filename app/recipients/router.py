"""The recipient API: read a recipient's state, erase it, suppress or lift by hand."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from pydantic import AfterValidator
from starlette.convertors import Convertor, register_url_convertor

from app.api_keys import ApiKeyDep
from app.config import Settings
from app.db import SessionDep
from app.errors import NotFound
from app.models import SuppressionReason
from app.recipients import service
from app.recipients.addresses import address_hash, check_address
from app.recipients.schemas import (
    AuditEventRead,
    OptOutRead,
    RecipientRead,
    SuppressionCreate,
    SuppressionRead,
)

router = APIRouter(prefix="/recipients", tags=["recipients"])

# Clients percent-encode the address (`taro%40example.com`); the path arrives decoded.
EmailPath = Annotated[
    str,
    Path(
        max_length=254,
        description="The address, matched case-insensitively.",
        examples=["taro@example.com"],
    ),
    AfterValidator(check_address),
]

UNAUTHORIZED: dict[int | str, dict[str, Any]] = {401: {"description": "No or unknown API key."}}
INVALID_ADDRESS: dict[int | str, dict[str, Any]] = {422: {"description": "Not an email address."}}


def _hash(request: Request, email: str) -> bytes:
    settings: Settings = request.app.state.settings
    return address_hash(email, secret=settings.address_hash_secret.get_secret_value())


async def _state(session: SessionDep, hashed: bytes) -> RecipientRead:
    state = await service.read_state(session, address_hash=hashed)
    suppression = state.suppression
    return RecipientRead(
        address=state.address,
        suppressed=None
        if suppression is None
        else SuppressionRead(
            reason=SuppressionReason(suppression.reason),
            cause=suppression.cause,
            detail=suppression.detail,
            created_at=suppression.created_at,
        ),
        opt_outs=[
            OptOutRead(category=o.category, cause=o.cause, created_at=o.created_at)
            for o in state.opt_outs
        ],
        soft_bounce_count=state.soft_bounce_count,
        history=[
            AuditEventRead(
                action=e.action,
                reason=e.reason,
                cause=e.cause,
                detail=e.detail,
                created_at=e.created_at,
            )
            for e in state.history
        ],
    )


class _AnyText(Convertor[str]):
    """A path parameter of any text, "/" and line breaks included; validated as a parameter."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


# An address may hold a "/" (RFC 5321 allows it; clients send it as %2F, which arrives decoded
# as "/"): `{email:anytext}` keeps it in the parameter, so every address can be read and erased.
# The suppression routes come first, or `/{email:anytext}` would take `.../suppression` too.
register_url_convertor("anytext", _AnyText())


@router.put(
    "/{email:anytext}/suppression",
    response_model=RecipientRead,
    summary="Suppress an address by hand",
    description="No mail of any category goes to the address until the suppression is lifted. "
    "An address already suppressed keeps its first reason and cause.",
    responses={**UNAUTHORIZED, **INVALID_ADDRESS},
)
async def suppress_recipient(
    email: EmailPath,
    body: SuppressionCreate,
    request: Request,
    session: SessionDep,
    caller: ApiKeyDep,
) -> RecipientRead:
    hashed = _hash(request, email)
    await service.suppress(
        session,
        address_hash=hashed,
        reason=SuppressionReason.MANUAL,
        cause=caller.cause,
        detail=body.detail,
    )
    await session.commit()
    return await _state(session, hashed)


@router.delete(
    "/{email:anytext}/suppression",
    status_code=204,
    summary="Lift a suppression",
    description="Whatever its reason. The consecutive soft-bounce count starts again from 0.",
    responses={
        **UNAUTHORIZED,
        404: {"description": "The address is not suppressed (`suppression_not_found`)."},
        **INVALID_ADDRESS,
    },
)
async def lift_suppression(
    email: EmailPath, request: Request, session: SessionDep, caller: ApiKeyDep
) -> Response:
    lifted = await service.lift_suppression(
        session, address_hash=_hash(request, email), cause=caller.cause
    )
    if not lifted:
        raise NotFound("the address is not suppressed", code="suppression_not_found")
    await session.commit()
    return Response(status_code=204)


@router.get(
    "/{email:anytext}",
    response_model=RecipientRead,
    summary="Whether an address gets mail, and why",
    responses={
        **UNAUTHORIZED,
        404: {"description": "tegami holds nothing about the address (`recipient_not_found`)."},
        **INVALID_ADDRESS,
    },
)
async def get_recipient(
    email: EmailPath, request: Request, session: SessionDep, caller: ApiKeyDep
) -> RecipientRead:
    return await _state(session, _hash(request, email))


@router.delete(
    "/{email:anytext}",
    status_code=204,
    summary="Erase the personal data held for an address",
    description="Removes the address, the app's user id and the mails' params. Queued mail to "
    "the address is not sent. A suppression stays, held as a keyed hash of the address, so an "
    "address that bounced or complained stays blocked. Erasing an unknown address is not an "
    "error.",
    responses={**UNAUTHORIZED, **INVALID_ADDRESS},
)
async def erase_recipient(
    email: EmailPath, request: Request, session: SessionDep, caller: ApiKeyDep
) -> Response:
    await service.erase(
        session, address=email, address_hash=_hash(request, email), cause=caller.cause
    )
    await session.commit()
    return Response(status_code=204)
