"""DELETE /recipients/{email}: erase the personal data held for an address."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request

from app.api_keys import EraseKeyDep
from app.db import SessionDep
from app.erasure import service
from app.errors import error_responses
from app.recipients.addresses import mask_address
from app.recipients.router import INVALID_ADDRESS, EmailPath, hash_of, ses_list_of
from app.recipients.schemas import ErasureRead, SesSuppressionListRead
from app.recipients.ses_list import SesListOutcome, SesUnavailable

log = logging.getLogger(__name__)

# After the recipient router: `{email:anytext}` would match its `/suppression` paths.
router = APIRouter(prefix="/recipients", tags=["recipients"])


@router.delete(
    "/{email:anytext}",
    response_model=ErasureRead,
    summary="Erase the personal data held for an address",
    description="Removes the address, the app's user id and the mails' params. Queued mail to "
    "the address is not sent. A suppression stays, held as a keyed hash of the address, so an "
    "address that bounced or complained stays blocked. The address is also taken off SES's "
    "account-level suppression list; when SES cannot be reached the erasure still happens and "
    "`ses_suppression_list.outcome` is `failed`. Erasing an unknown address is not an error.",
    operation_id="eraseRecipient",
    responses=error_responses(401, 403, 422, 503, _422=INVALID_ADDRESS),
)
async def erase_recipient(
    email: EmailPath, request: Request, session: SessionDep, caller: EraseKeyDep
) -> ErasureRead:
    erased = await service.erase(
        session, address=email, address_hash=hash_of(request, email), cause=caller.cause
    )
    await session.commit()
    try:
        outcome = await ses_list_of(request).remove(email)
    except SesUnavailable as exc:
        log.warning(
            "erased, but SES's suppression list could not be updated",
            extra={
                "event": "ses_suppression_list_not_updated",
                "address": mask_address(email),
                "error": exc.message,
            },
        )
        return ErasureRead(
            erased=erased,
            ses_suppression_list=SesSuppressionListRead(
                outcome=SesListOutcome.FAILED, message=exc.message
            ),
        )
    return ErasureRead(erased=erased, ses_suppression_list=SesSuppressionListRead(outcome=outcome))
