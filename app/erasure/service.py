"""Erasing an address: it crosses the recipient's owner, the outbox and the app's events, in
one transaction (the caller's session, committed by the route), like SES feedback crosses them
in app.sns.

What is erased is that address and no other: free text is matched by
``quoted_address_pattern`` (the whole address, either spelling), never by a substring, so
erasing `taro@example.com` leaves `kotaro@example.com`'s mail and events as they were.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.emails import outbox
from app.recipients import service as recipients
from app.recipients import ses_list
from app.recipients.addresses import ERASED_MARK, quoted_address_pattern
from app.webhooks import deliveries as webhooks


@dataclass(frozen=True)
class Erased:
    erased: bool  # False: tegami held no personal data for the address
    ses_removal_id: int | None  # the queued removal from SES's list, None without SES


async def erase(
    session: AsyncSession,
    *,
    address: str,
    address_hash: bytes,
    cause: str,
    ses_list_available: bool,
    retry_seconds: float,
) -> Erased:
    """Erase the personal data held for ``address``.

    First a suppression, by hash, so the person stays protected once SES's own list lets the
    address go (the route asks SES after the commit; the removal waits in ``ses_list_removal``
    until SES has answered). A mail the worker holds right now finds no address at its check
    before sending, and is not sent either.
    """
    await recipients.suppress_for_erasure(session, address_hash=address_hash, cause=cause)
    forgotten = await recipients.forget_address(session, address=address, address_hash=address_hash)
    wiped = False
    if forgotten.recipient_id is not None:
        wiped = await outbox.erase_mail(
            session, recipient_id=forgotten.recipient_id, address=address, cause=cause
        )
    await webhooks.forget_address(
        session, pattern=quoted_address_pattern(address), mark=ERASED_MARK
    )
    erased = forgotten.had_address or wiped
    if erased:
        await recipients.record_erasure(
            session, address_hash=address_hash, user_id=forgotten.user_id, cause=cause
        )
    removal = None
    if ses_list_available:
        removal = await ses_list.queue_removal(
            session, address=address, retry_seconds=retry_seconds
        )
    return Erased(erased=erased, ses_removal_id=removal)
