"""Gathering what support needs: a person's facts for the verdict (app/support/why.py). Reads
only, through each owner's reads."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from app.emails import service as emails
from app.emails.catalog import EMAIL_KINDS
from app.errors import NotFound
from app.recipients import service as recipients
from app.support import search
from app.support.why import EventFact, MailFacts, PersonFacts, SuppressionFact, Verdict, decide


async def newest_mail(
    session: AsyncSession, *, address_hash: bytes, type: str | None, api_key_id: int | None
) -> MailFacts | None:
    """The newest mail to the address (of the type, when given), with its history."""
    page = await search.find_emails(
        session,
        filters=search.Filters(address_hash=address_hash, type=type, api_key_id=api_key_id),
        limit=1,
    )
    if not page.emails:
        return None
    message, events = await emails.read(session, message_id=page.emails[0].id)
    return MailFacts(
        id=message.id,
        type=message.kind,
        category=message.category,
        status=message.status,
        created_at=message.created_at,
        send_at=message.send_at,
        last_error=message.last_error,
        events=tuple(
            EventFact(kind=e.kind, detail=e.detail, feedback=e.feedback, created_at=e.created_at)
            for e in events
        ),
    )


async def person_facts(
    session: AsyncSession,
    *,
    address: str,
    address_hash: bytes,
    type: str | None,
    api_key_id: int | None = None,
) -> PersonFacts:
    try:
        state = await recipients.read_state(session, address_hash=address_hash)
    except NotFound:
        state = None
    mail = await newest_mail(session, address_hash=address_hash, type=type, api_key_id=api_key_id)
    suppression = state.suppression if state is not None else None
    return PersonFacts(
        address=address,
        category=EMAIL_KINDS[type].category if type is not None else None,
        mail=mail,
        suppression=SuppressionFact(
            reason=suppression.reason, detail=suppression.detail, created_at=suppression.created_at
        )
        if suppression is not None
        else None,
        opted_out=frozenset(o.category for o in state.opt_outs)
        if state is not None
        else frozenset(),
        erased=state is not None
        and state.address is None
        and any(e.action == "erased" for e in state.history),
    )


async def why(
    session: AsyncSession,
    *,
    address: str,
    address_hash: bytes,
    type: str | None,
    api_key_id: int | None = None,
) -> Verdict:
    facts = await person_facts(
        session, address=address, address_hash=address_hash, type=type, api_key_id=api_key_id
    )
    return decide(facts)
