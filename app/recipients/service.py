"""Recipient state: who may get which mail, and the recipient row every message points to."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.emails.catalog import OPTIONAL_CATEGORIES, Category
from app.models import AuditEvent, OptOut, Recipient, Suppression, SuppressionReason


@dataclass(frozen=True)
class Block:
    """Why an address may not get a mail: ``suppressed`` (with reason) or ``opted_out``."""

    code: str
    reason: str


async def find_block(
    session: AsyncSession, *, address_hash: bytes, category: Category
) -> Block | None:
    suppressed = select(Suppression.reason).where(Suppression.address_hash == address_hash)
    opted_out = (
        exists()
        .where(OptOut.recipient_id == Recipient.id)
        .where(Recipient.address_hash == address_hash, OptOut.category == category)
    )
    row = (
        await session.execute(
            select(suppressed.scalar_subquery(), opted_out.select().scalar_subquery())
        )
    ).one()
    if row[0] is not None:
        return Block(code="suppressed", reason=row[0])
    if category in OPTIONAL_CATEGORIES and row[1]:
        return Block(code="opted_out", reason=category)
    return None


async def ensure_recipient(
    session: AsyncSession, *, address: str, address_hash: bytes, user_id: str | None
) -> int:
    """The recipient's id, creating the row on first use (and restoring an erased address)."""
    statement = insert(Recipient).values(
        address_hash=address_hash, address=address, user_id=user_id
    )
    statement = statement.on_conflict_do_update(
        index_elements=[Recipient.address_hash],
        set_={
            "address": statement.excluded.address,
            "user_id": func.coalesce(statement.excluded.user_id, Recipient.user_id),
            "updated_at": func.now(),
        },
    )
    return (await session.execute(statement.returning(Recipient.id))).scalar_one()


async def record_audit(
    session: AsyncSession,
    *,
    address_hash: bytes,
    action: str,
    cause: str,
    reason: str | None = None,
    detail: str | None = None,
) -> None:
    """One line of the audit trail: what changed for an address, why, and on whose word."""
    session.add(
        AuditEvent(
            address_hash=address_hash, action=action, reason=reason, cause=cause, detail=detail
        )
    )


async def suppress(
    session: AsyncSession,
    *,
    address_hash: bytes,
    reason: SuppressionReason,
    cause: str,
    detail: str | None = None,
) -> bool:
    """Suppress the address for every category. False when it already was (first cause kept)."""
    statement = (
        insert(Suppression)
        .values(address_hash=address_hash, reason=reason, cause=cause, detail=detail)
        .on_conflict_do_nothing(index_elements=[Suppression.address_hash])
        .returning(Suppression.address_hash)
    )
    created = (await session.execute(statement)).scalar_one_or_none() is not None
    if created:
        await record_audit(
            session,
            address_hash=address_hash,
            action="suppressed",
            reason=reason,
            cause=cause,
            detail=detail,
        )
    return created


async def lift_suppression(session: AsyncSession, *, address_hash: bytes, cause: str) -> bool:
    """Remove a suppression (an operator's decision). False when there was none."""
    removed = (
        await session.execute(
            delete(Suppression)
            .where(Suppression.address_hash == address_hash)
            .returning(Suppression.reason)
        )
    ).scalar_one_or_none()
    if removed is None:
        return False
    # A fresh start: old soft bounces must not suppress again on the next one.
    await session.execute(
        update(Recipient)
        .where(Recipient.address_hash == address_hash)
        .values(soft_bounce_count=0, updated_at=func.now())
    )
    await record_audit(
        session, address_hash=address_hash, action="suppression_lifted", reason=removed, cause=cause
    )
    return True


async def opt_out(
    session: AsyncSession, *, recipient_id: int, category: Category, cause: str
) -> bool:
    """Opt the recipient out of an optional category. False when already opted out."""
    statement = (
        insert(OptOut)
        .values(recipient_id=recipient_id, category=category, cause=cause)
        .on_conflict_do_nothing(index_elements=[OptOut.recipient_id, OptOut.category])
        .returning(OptOut.recipient_id)
    )
    created = (await session.execute(statement)).scalar_one_or_none() is not None
    if created:
        hashed = (
            await session.execute(
                select(Recipient.address_hash).where(Recipient.id == recipient_id)
            )
        ).scalar_one()
        await record_audit(
            session, address_hash=hashed, action="opted_out", reason=category, cause=cause
        )
    return created
