"""The recipient API: read a recipient's state, suppress or lift by hand. (Erasing one is
app.erasure: it crosses the outbox too.)"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import AfterValidator, WithJsonSchema
from starlette.convertors import Convertor, register_url_convertor

from app.api_keys import OptOutKeyDep, ReadRecipientsKeyDep, SuppressKeyDep
from app.config import Settings
from app.db import SessionDep
from app.deps import SettingsDep
from app.errors import ErrorCode, NotFound, Unprocessable, error_responses
from app.models import Category, SuppressionReason
from app.recipients import service
from app.recipients.addresses import ADDRESS_JSON_SCHEMA, address_hash, check_address
from app.recipients.schemas import (
    AuditEventRead,
    OptOutRead,
    RecipientRead,
    SesSuppressionListRead,
    SuppressionCreate,
    SuppressionLiftRead,
    SuppressionRead,
)
from app.recipients.ses_list import SesListDep

log = logging.getLogger(__name__)

router = APIRouter(prefix="/recipients", tags=["recipients"])

# Clients percent-encode the address (`taro%40example.com`); the path arrives decoded.
EmailPath = Annotated[
    str,
    Path(
        max_length=254,
        description="The address, matched case-insensitively; percent-encoded in the path "
        "(`taro%40example.com`, a `/` as `%2F`). The same rule as a send's `to`.",
        examples=["taro@example.com"],
        json_schema_extra=dict(ADDRESS_JSON_SCHEMA),
    ),
    AfterValidator(check_address),
]

INVALID_ADDRESS = "Not an email address (`invalid_request`)."


def hash_of(settings: Settings, email: str) -> bytes:
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

    # Not ending in "/suppression", "/why" or "/opt-outs/<category>" (no address does: its
    # domain holds no "/"), so those paths belong to their own routes alone, for every method
    # (405 with their Allow).
    regex = r"[\s\S]+(?<!/suppression)(?<!/why)" + "".join(
        f"(?<!/opt-outs/{c.value})" for c in Category
    )

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
    "An address already suppressed keeps its first reason and cause. Needs the `suppress` "
    "permission (admin keys).",
    operation_id="suppressRecipient",
    responses=error_responses(401, 403, 422, 503, _422=INVALID_ADDRESS),
)
async def suppress_recipient(
    email: EmailPath,
    body: SuppressionCreate,
    settings: SettingsDep,
    session: SessionDep,
    caller: SuppressKeyDep,
) -> RecipientRead:
    hashed = hash_of(settings, email)
    await service.suppress(
        session,
        address_hash=hashed,
        reason=SuppressionReason.MANUAL,
        cause=caller.cause,
        detail=body.detail,
    )
    await session.commit()
    return await _state(session, hashed)


CategoryPath = Annotated[
    Category,
    Path(description="An optional category (`matching`); account mail cannot be opted out of."),
    # Documented as the optional categories alone; `account` is still read, to answer 422
    # `category_not_optional` rather than a bare "not a valid value".
    WithJsonSchema({"$ref": "#/components/schemas/OptedOutCategory"}),
]


async def _opt_out_target(
    settings: SettingsDep, session: SessionDep, *, email: str, category: Category
) -> bytes:
    if not category.optional:
        raise Unprocessable(
            f"{category} mail is sent because the user asked for it: it cannot be opted out of",
            code=ErrorCode.CATEGORY_NOT_OPTIONAL,
        )
    return hash_of(settings, email)


_OPT_OUT_422 = (
    "Not an email address, an unknown category (`invalid_request`), or an account category "
    "(`category_not_optional`)."
)


@router.put(
    "/{email:anytext}/opt-outs/{category}",
    response_model=RecipientRead,
    summary="Opt an address out of a category (the app's settings screen)",
    description="Idempotent. Recorded in the audit trail with the API key's name, and told to "
    "the app as `recipient.opted_out` (when it changed something).",
    operation_id="optOut",
    responses=error_responses(401, 403, 422, 503, _422=_OPT_OUT_422),
)
async def put_opt_out(
    email: EmailPath,
    category: CategoryPath,
    settings: SettingsDep,
    session: SessionDep,
    caller: OptOutKeyDep,
) -> RecipientRead:
    hashed = await _opt_out_target(settings, session, email=email, category=category)
    recipient_id = await service.ensure_recipient(
        session, address=email, address_hash=hashed, user_id=None
    )
    await service.opt_out(session, recipient_id=recipient_id, category=category, cause=caller.cause)
    await session.commit()
    return await _state(session, hashed)


@router.delete(
    "/{email:anytext}/opt-outs/{category}",
    response_model=RecipientRead,
    summary="Lift an address's opt-out of a category (the app's settings screen)",
    description="Idempotent: an address not opted out is left as it is. Recorded in the audit "
    "trail with the API key's name, and told to the app as `recipient.opted_in` (when it "
    "changed something).",
    operation_id="liftOptOut",
    responses=error_responses(
        401,
        403,
        404,
        422,
        503,
        _404="tegami holds nothing about the address (`recipient_not_found`).",
        _422=_OPT_OUT_422,
    ),
)
async def delete_opt_out(
    email: EmailPath,
    category: CategoryPath,
    settings: SettingsDep,
    session: SessionDep,
    caller: OptOutKeyDep,
) -> RecipientRead:
    hashed = await _opt_out_target(settings, session, email=email, category=category)
    recipient_id = await service.recipient_id(session, address_hash=hashed)
    if recipient_id is not None:
        await service.opt_in(
            session, recipient_id=recipient_id, category=category, cause=caller.cause
        )
        await session.commit()
    return await _state(session, hashed)


@router.delete(
    "/{email:anytext}/suppression",
    response_model=SuppressionLiftRead,
    summary="Lift a suppression",
    description="Whatever its reason. The consecutive soft-bounce count starts again from 0. "
    "The address is taken off SES's account-level suppression list first (SES drops mail to "
    "an address on it): when SES cannot be asked, nothing changes and the answer is 502. "
    "Needs the `suppress` permission (admin keys).",
    operation_id="liftSuppression",
    responses=error_responses(
        401,
        403,
        404,
        422,
        502,
        503,
        _404="The address is not suppressed (`suppression_not_found`).",
        _422=INVALID_ADDRESS,
        _502="SES's suppression list could not be updated (`ses_unavailable`); the "
        "suppression stays: try again.",
    ),
)
async def lift_suppression(
    email: EmailPath,
    settings: SettingsDep,
    session: SessionDep,
    caller: SuppressKeyDep,
    ses_list: SesListDep,
) -> SuppressionLiftRead:
    hashed = hash_of(settings, email)
    if await service.suppression_reason(session, address_hash=hashed) is None:
        raise NotFound("the address is not suppressed", code=ErrorCode.SUPPRESSION_NOT_FOUND)
    # SES first: if it fails, tegami still holds the suppression and the operator retries.
    outcome = await ses_list.remove(email)
    if not await service.lift_suppression(session, address_hash=hashed, cause=caller.cause):
        raise NotFound("the address is not suppressed", code=ErrorCode.SUPPRESSION_NOT_FOUND)
    await session.commit()
    return SuppressionLiftRead(ses_suppression_list=SesSuppressionListRead(outcome=outcome))


@router.get(
    "/{email:anytext}",
    response_model=RecipientRead,
    summary="Whether an address gets mail, and why",
    operation_id="getRecipient",
    responses=error_responses(
        401,
        403,
        404,
        422,
        503,
        _404="tegami holds nothing about the address (`recipient_not_found`).",
        _422=INVALID_ADDRESS,
    ),
)
async def get_recipient(
    email: EmailPath, settings: SettingsDep, session: SessionDep, caller: ReadRecipientsKeyDep
) -> RecipientRead:
    return await _state(session, hash_of(settings, email))
