"""Erasing an address: it crosses the recipient's owner and the outbox, in one transaction
(the caller's session, committed by the route), like SES feedback crosses them in app.sns."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from app.emails import outbox
from app.recipients import service as recipients
from app.recipients.addresses import quoted_address_pattern
from app.webhooks import deliveries as webhooks


async def erase(session: AsyncSession, *, address: str, address_hash: bytes, cause: str) -> bool:
    """Erase the personal data held for ``address``; False when there was none left to erase.

    A mail the worker holds right now finds no address at its check before sending, and is
    not sent either.
    """
    forgotten = await recipients.forget_address(session, address=address, address_hash=address_hash)
    wiped = False
    if forgotten.recipient_id is not None:
        wiped = await outbox.erase_mail(
            session, recipient_id=forgotten.recipient_id, address=address, cause=cause
        )
    await webhooks.forget_address(session, pattern=quoted_address_pattern(address))
    erased = forgotten.had_address or wiped
    if erased:
        await recipients.record_erasure(
            session, address_hash=address_hash, user_id=forgotten.user_id, cause=cause
        )
    return erased
