"""An erasure and then SES's list: one flow for the API route and the console.

The erasure commits first (the person is protected by a hashed suppression before anything
else happens); then SES is asked once to let the address go. When SES cannot be reached the
removal stays queued in ``ses_list_removal`` and ``app.recipients.ses_list`` retries it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.erasure import service
from app.recipients import ses_list
from app.recipients.addresses import mask_address
from app.recipients.ses_list import SesListOutcome, SesSuppressionList, SesUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErasedAndUnlisted:
    erased: bool
    outcome: SesListOutcome
    message: str | None = None  # why SES's list is still `pending`


async def erase_and_unlist(
    session: AsyncSession,
    *,
    ses: SesSuppressionList,
    address: str,
    address_hash: bytes,
    cause: str,
    retry_seconds: float,
) -> ErasedAndUnlisted:
    """Erase ``address`` (committed), then take it off SES's account suppression list."""
    erased = await service.erase(
        session,
        address=address,
        address_hash=address_hash,
        cause=cause,
        ses_list_available=ses.available,
        retry_seconds=retry_seconds,
    )
    await session.commit()
    if erased.ses_removal_id is None:
        return ErasedAndUnlisted(erased.erased, SesListOutcome.NO_SES)
    try:
        outcome = await ses.remove(address)
    except SesUnavailable as exc:
        log.warning(
            "erased; SES's suppression list could not be updated yet, tried again later",
            extra={
                "event": "ses_suppression_list_not_updated",
                "address": mask_address(address),
                "error": exc.message,
            },
        )
        return ErasedAndUnlisted(erased.erased, SesListOutcome.PENDING, exc.message)
    await ses_list.removed(session, removal_id=erased.ses_removal_id)
    await session.commit()
    return ErasedAndUnlisted(erased.erased, outcome)
