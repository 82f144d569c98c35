"""DELETE /recipients/{email}: erase the personal data held for an address."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request

from app.api_keys import EraseKeyDep
from app.config import Settings
from app.db import SessionDep
from app.erasure import service
from app.errors import error_responses
from app.recipients import ses_list
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
    description="Removes the address, the app's user id and the mails' params, and the "
    "address wherever stored free text quotes it (SES's diagnostics, stored events): that "
    "address exactly, never one that contains it. Queued mail to the address is not sent. The "
    "address stays suppressed, held as a keyed hash (reason `erased` unless it already was "
    "suppressed), so no mail reaches the person again, and SES feedback that arrives later "
    "names no address. The address is then taken off SES's account-level suppression list, "
    "under both spellings of a legacy carrier address; when SES cannot be reached the erasure "
    "still happens, `ses_suppression_list.outcome` is `pending`, and tegami retries on its own "
    "until SES lets the address go. Erasing an unknown address is not an error.",
    operation_id="eraseRecipient",
    responses=error_responses(401, 403, 422, 503, _422=INVALID_ADDRESS),
)
async def erase_recipient(
    email: EmailPath, request: Request, session: SessionDep, caller: EraseKeyDep
) -> ErasureRead:
    settings: Settings = request.app.state.settings
    ses = ses_list_of(request)
    erased = await service.erase(
        session,
        address=email,
        address_hash=hash_of(request, email),
        cause=caller.cause,
        ses_list_available=ses.available,
        retry_seconds=settings.ses_list_retry_seconds,
    )
    await session.commit()
    if erased.ses_removal_id is None:
        return _answer(erased, SesSuppressionListRead(outcome=SesListOutcome.NO_SES))
    try:
        outcome = await ses.remove(email)
    except SesUnavailable as exc:
        # The removal stays queued: app.recipients.ses_list retries it with backoff.
        log.warning(
            "erased; SES's suppression list could not be updated yet, tried again later",
            extra={
                "event": "ses_suppression_list_not_updated",
                "address": mask_address(email),
                "error": exc.message,
            },
        )
        return _answer(
            erased, SesSuppressionListRead(outcome=SesListOutcome.PENDING, message=exc.message)
        )
    await ses_list.removed(session, removal_id=erased.ses_removal_id)
    await session.commit()
    return _answer(erased, SesSuppressionListRead(outcome=outcome))


def _answer(erased: service.Erased, ses: SesSuppressionListRead) -> ErasureRead:
    return ErasureRead(erased=erased.erased, ses_suppression_list=ses)
