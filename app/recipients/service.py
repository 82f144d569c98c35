"""Recipient state: who may get which mail, and the recipient row every message points to."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import exists, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.emails.catalog import OPTIONAL_CATEGORIES, Category
from app.models import OptOut, Recipient, Suppression


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
