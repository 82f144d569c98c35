"""DELETE /recipients/{email}: erase the personal data held for an address."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from app.api_keys import EraseKeyDep
from app.db import SessionDep
from app.deps import SettingsDep
from app.erasure.unlisting import erase_and_unlist
from app.errors import error_responses
from app.recipients.router import INVALID_ADDRESS, EmailPath, hash_of
from app.recipients.schemas import ErasureRead, SesSuppressionListRead
from app.recipients.ses_list import SesListDep

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
    email: EmailPath,
    settings: SettingsDep,
    session: SessionDep,
    caller: EraseKeyDep,
    ses_list: SesListDep,
) -> ErasureRead:
    done = await erase_and_unlist(
        session,
        ses=ses_list,
        address=email,
        address_hash=hash_of(settings, email),
        cause=caller.cause,
        retry_seconds=settings.ses_list_retry_seconds,
    )
    return ErasureRead(
        erased=done.erased,
        ses_suppression_list=SesSuppressionListRead(outcome=done.outcome, message=done.message),
    )
