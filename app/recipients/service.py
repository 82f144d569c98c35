"""Recipient state: who may get which mail, and the recipient row every message points to."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, exists, func, null, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.emails.catalog import OPTIONAL_CATEGORIES, Category
from app.errors import NotFound
from app.models import (
    AuditEvent,
    Message,
    MessageEvent,
    MessageStatus,
    OptOut,
    Recipient,
    Suppression,
    SuppressionReason,
)
from app.recipients.addresses import normalize_address
from app.webhooks import deliveries as webhooks
from app.webhooks.events import EventType, RecipientErasedData, RecipientEventData


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


async def _tell_app(
    session: AsyncSession,
    *,
    type: EventType,
    address_hash: bytes | None = None,
    recipient_id: int | None = None,
    reason: str | None = None,
    category: str | None = None,
) -> None:
    """Record a recipient.* event for the app (app/webhooks), naming the address and user."""
    if not webhooks.enabled():
        return
    where = (
        Recipient.id == recipient_id
        if recipient_id is not None
        else Recipient.address_hash == address_hash
    )
    row = (await session.execute(select(Recipient.address, Recipient.user_id).where(where))).first()
    data = RecipientEventData(
        address=row.address if row is not None else None,
        user_id=row.user_id if row is not None else None,
        reason=reason,
        category=category,
    )
    await webhooks.enqueue_in_session(session, type=type, data=data)


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
        await _tell_app(
            session, type=EventType.RECIPIENT_SUPPRESSED, address_hash=address_hash, reason=reason
        )
    return created


# The cause of suppressions brought in from SES's account-level suppression list.
SES_LIST_CAUSE = "ses-suppression-list"


async def import_ses_suppression(
    session: AsyncSession,
    *,
    address_hash: bytes,
    reason: SuppressionReason,
    ses_reason: str,
    listed_at: datetime | None,
) -> bool:
    """Suppress an address found on SES's own list, keeping SES's reason and date on record.

    False when tegami already suppressed it (its first reason and cause stay).
    """
    when = listed_at.astimezone(UTC).isoformat() if listed_at is not None else "unknown"
    return await suppress(
        session,
        address_hash=address_hash,
        reason=reason,
        cause=SES_LIST_CAUSE,
        detail=f"on SES's account suppression list: reason {ses_reason}, last updated {when}",
    )


async def suppression_reason(session: AsyncSession, *, address_hash: bytes) -> str | None:
    return (
        await session.execute(
            select(Suppression.reason).where(Suppression.address_hash == address_hash)
        )
    ).scalar_one_or_none()


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
    await _tell_app(
        session, type=EventType.RECIPIENT_UNSUPPRESSED, address_hash=address_hash, reason=removed
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
        await _tell_app(
            session,
            type=EventType.RECIPIENT_OPTED_OUT,
            recipient_id=recipient_id,
            category=category,
        )
    return created


async def opt_in(
    session: AsyncSession, *, recipient_id: int, category: Category, cause: str
) -> bool:
    """Lift the recipient's opt-out of ``category``. False when there was none."""
    hashed = (
        await session.execute(
            delete(OptOut)
            .where(
                OptOut.recipient_id == recipient_id,
                OptOut.category == category,
                Recipient.id == OptOut.recipient_id,
            )
            .returning(Recipient.address_hash)
        )
    ).scalar_one_or_none()
    if hashed is None:
        return False
    await record_audit(
        session, address_hash=hashed, action="opted_in", reason=category, cause=cause
    )
    await _tell_app(
        session, type=EventType.RECIPIENT_OPTED_IN, recipient_id=recipient_id, category=category
    )
    return True


async def recipient_id(session: AsyncSession, *, address_hash: bytes) -> int | None:
    """The recipient held for the address, if any (None also once erased)."""
    return (
        await session.execute(
            select(Recipient.id).where(
                Recipient.address_hash == address_hash, Recipient.address.is_not(None)
            )
        )
    ).scalar_one_or_none()


# -- the recipient API: read a recipient's whole state, erase personal data -----------------

ERASED = "recipient erased"
# What an erased address becomes wherever it was quoted (bounce diagnostics, SES errors).
ERASED_MARK = "[erased]"


@dataclass(frozen=True)
class RecipientState:
    """Everything tegami holds about one address: why it gets (or does not get) mail."""

    address: str | None
    suppression: Suppression | None
    opt_outs: list[OptOut]
    soft_bounce_count: int
    history: list[AuditEvent]


async def read_state(session: AsyncSession, *, address_hash: bytes) -> RecipientState:
    """The address's state; NotFound when tegami holds nothing at all about it.

    A suppression or audit trail without a recipient row (erased, or feedback for an address
    never mailed through tegami) is still state: it decides whether mail goes out.
    """
    recipient = (
        await session.execute(select(Recipient).where(Recipient.address_hash == address_hash))
    ).scalar_one_or_none()
    suppression = (
        await session.execute(select(Suppression).where(Suppression.address_hash == address_hash))
    ).scalar_one_or_none()
    history = (
        await session.execute(
            select(AuditEvent)
            .where(AuditEvent.address_hash == address_hash)
            .order_by(AuditEvent.created_at, AuditEvent.id)
        )
    ).scalars()
    events = list(history)
    if recipient is None and suppression is None and not events:
        raise NotFound("tegami holds nothing about this address", code="recipient_not_found")
    opt_outs: list[OptOut] = []
    if recipient is not None:
        opt_outs = list(
            (
                await session.execute(
                    select(OptOut)
                    .where(OptOut.recipient_id == recipient.id)
                    .order_by(OptOut.created_at, OptOut.category)
                )
            ).scalars()
        )
    return RecipientState(
        address=recipient.address if recipient is not None else None,
        suppression=suppression,
        opt_outs=opt_outs,
        soft_bounce_count=recipient.soft_bounce_count if recipient is not None else 0,
        history=events,
    )


async def erase(session: AsyncSession, *, address: str, address_hash: bytes, cause: str) -> bool:
    """Erase the personal data held for ``address``. False when there was none left to erase.

    Kept, because they hold only the keyed hash and must keep working: the suppression (a
    deleted address that complained stays suppressed), opt-outs, and the audit trail. Queued
    mail to the address fails instead of going out; a mail the worker already holds finds no
    address when it is next claimed (the worker refuses those too).
    """
    recipient = (
        await session.execute(
            select(Recipient.id, Recipient.address, Recipient.user_id)
            .where(Recipient.address_hash == address_hash)
            .with_for_update()
        )
    ).one_or_none()
    changed = False
    if recipient is not None:
        changed = recipient.address is not None
        await session.execute(
            update(Recipient)
            .where(Recipient.id == recipient.id)
            .values(address=None, user_id=None, updated_at=func.now())
        )
        stopped = (
            await session.execute(
                update(Message)
                .where(
                    Message.recipient_id == recipient.id,
                    Message.status == MessageStatus.QUEUED,
                )
                .values(status=MessageStatus.FAILED, last_error=ERASED, updated_at=func.now())
                .returning(Message.id)
            )
        ).scalars()
        session.add_all(
            MessageEvent(message_id=message_id, kind="blocked", detail=ERASED, cause=cause)
            for message_id in stopped
        )
        wiped = await session.execute(
            update(Message)
            .where(
                Message.recipient_id == recipient.id,
                or_(
                    Message.to_address.is_not(None),
                    Message.params.is_not(None),
                    Message.user_id.is_not(None),
                ),
            )
            # null(): a bare None would be stored as the JSON value null, not SQL NULL.
            .values(to_address=None, params=null(), user_id=None, updated_at=func.now())
        )
        changed = changed or wiped.rowcount > 0  # type: ignore[attr-defined]
    await _scrub_quotes(
        session,
        address=address,
        address_hash=address_hash,
        recipient_id=recipient.id if recipient is not None else None,
    )
    if changed:
        await record_audit(session, address_hash=address_hash, action="erased", cause=cause)
        if webhooks.enabled():
            user_id = recipient.user_id if recipient is not None else None
            await webhooks.enqueue_in_session(
                session, type=EventType.RECIPIENT_ERASED, data=RecipientErasedData(user_id=user_id)
            )
    return changed


async def _scrub_quotes(
    session: AsyncSession, *, address: str, address_hash: bytes, recipient_id: int | None
) -> None:
    """Replace the address wherever free text quotes it (SES bounce diagnostics often do)."""
    # re.escape's backslashes mean "this character, literally" to PostgreSQL's regex as well.
    # Either spelling of a legacy carrier address: `taro.@x` or `"taro."@x`.
    local, _, domain = normalize_address(address).rpartition("@")
    pattern = f'"?{re.escape(local)}"?@{re.escape(domain)}'

    def quoting(column: Any) -> Any:
        return column.regexp_match(pattern, flags="i")

    def scrubbed(column: Any) -> Any:
        return column.regexp_replace(pattern, ERASED_MARK, flags="gi")

    await session.execute(
        update(Suppression)
        .where(Suppression.address_hash == address_hash, quoting(Suppression.detail))
        .values(detail=scrubbed(Suppression.detail))
    )
    await session.execute(
        update(AuditEvent)
        .where(AuditEvent.address_hash == address_hash, quoting(AuditEvent.detail))
        .values(detail=scrubbed(AuditEvent.detail))
    )
    if recipient_id is None:
        return
    await session.execute(
        update(Message)
        .where(Message.recipient_id == recipient_id, quoting(Message.last_error))
        .values(last_error=scrubbed(Message.last_error))
    )
    await session.execute(
        update(MessageEvent)
        .where(
            MessageEvent.message_id.in_(
                select(Message.id).where(Message.recipient_id == recipient_id)
            ),
            quoting(MessageEvent.detail),
        )
        .values(detail=scrubbed(MessageEvent.detail))
    )


# -- unsubscribe links --------------------------------------------------------------------


async def opt_out_status(
    session: AsyncSession, *, recipient_id: int, category: Category
) -> bool | None:
    """Whether the recipient opted out of ``category``; None when no such recipient is held
    (never was, or erased): an unsubscribe link for it leads nowhere."""
    opted_out = (
        select(OptOut.recipient_id)
        .where(OptOut.recipient_id == Recipient.id, OptOut.category == category)
        .exists()
    )
    row = (
        await session.execute(
            select(Recipient.address, opted_out).where(Recipient.id == recipient_id)
        )
    ).one_or_none()
    if row is None or row[0] is None:
        return None
    return bool(row[1])
