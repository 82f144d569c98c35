"""Recipient state: who may get which mail, and the recipient row every message points to.

The owner of ``recipient``, ``suppression``, ``opt_out`` and ``audit_event``: every statement
that writes them is here. The API's changes go through the ORM session; SES feedback, a hot
path, through the asyncpg statements at the end (``FEEDBACK_WRITES`` is composed with the
outbox's into app.sns.feedback's one statement).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import Fragment, NamedStatement, compose
from app.errors import ErrorCode, NotFound
from app.models import (
    AuditEvent,
    Category,
    OptOut,
    Recipient,
    Suppression,
    SuppressionReason,
)
from app.recipients.addresses import ERASED_MARK, mask_address, quoted_address_pattern
from app.recipients.rules import SOFT_BOUNCE_LIMIT, Decision
from app.webhooks import deliveries as webhooks
from app.webhooks.events import EventType, RecipientErasedData, RecipientEventData

log = logging.getLogger(__name__)


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
    tell_app: bool = True,
) -> bool:
    """Suppress the address for every category. False when it already was (first cause kept).
    The app hears `recipient.suppressed` unless ``tell_app`` is False."""
    values = decision_values(
        {address_hash: Decision(suppress=reason)},
        addresses={address_hash: None},
        cause=cause,
        detail=detail,
    )
    statement = _DECIDE_WITH_EVENTS if tell_app and webhooks.enabled() else _DECIDE
    created = (await session.execute(text(statement.source), values)).first()
    return created is not None


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
        raise NotFound(
            "tegami holds nothing about this address", code=ErrorCode.RECIPIENT_NOT_FOUND
        )
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


async def forget_address(session: AsyncSession, *, address: str, address_hash: bytes) -> Forgotten:
    """Erase the recipient's own personal data: its address and the app's user id, and the
    address wherever the suppression or the audit trail quote it.

    Kept, because they hold only the keyed hash and must keep working: the suppression (a
    deleted address that complained stays suppressed), opt-outs, and the audit trail. The
    recipient's mail is the outbox's to erase (app.erasure orchestrates both).
    """
    recipient = (
        await session.execute(
            select(Recipient.id, Recipient.address, Recipient.user_id)
            .where(Recipient.address_hash == address_hash)
            .with_for_update()
        )
    ).one_or_none()
    if recipient is not None:
        await session.execute(
            update(Recipient)
            .where(Recipient.id == recipient.id)
            .values(address=None, user_id=None, updated_at=func.now())
        )
    else:
        # A row with no address says "erased" to feedback that arrives later (app.sns): what
        # it records and tells the app must not name the address again.
        await session.execute(
            insert(Recipient)
            .values(address_hash=address_hash, address=None)
            .on_conflict_do_nothing(index_elements=[Recipient.address_hash])
        )
    pattern = quoted_address_pattern(address)
    for table in (Suppression, AuditEvent):
        await session.execute(
            update(table)
            .where(table.address_hash == address_hash, table.detail.regexp_match(pattern, "i"))
            .values(detail=table.detail.regexp_replace(pattern, ERASED_MARK, "gi"))
        )
    return Forgotten(
        recipient_id=recipient.id if recipient is not None else None,
        had_address=recipient is not None and recipient.address is not None,
        user_id=recipient.user_id if recipient is not None else None,
    )


async def suppress_for_erasure(session: AsyncSession, *, address_hash: bytes, cause: str) -> bool:
    """Keep the erased person from mail for good, before SES's own list lets the address go
    (it may be their only suppression). An address already suppressed keeps its first reason.
    No `recipient.suppressed` for the app: it hears `recipient.erased`."""
    return await suppress(
        session,
        address_hash=address_hash,
        reason=SuppressionReason.ERASED,
        cause=cause,
        tell_app=False,
    )


@dataclass(frozen=True)
class Forgotten:
    recipient_id: int | None  # None: tegami never had a recipient row for the address
    had_address: bool
    user_id: str | None  # the app's id for the user, as it was: the app hears of the erasure


async def record_erasure(
    session: AsyncSession, *, address_hash: bytes, user_id: str | None, cause: str
) -> None:
    """The audit line, and the app's `recipient.erased` (its user id, never the address)."""
    await record_audit(session, address_hash=address_hash, action="erased", cause=cause)
    if webhooks.enabled():
        await webhooks.enqueue_in_session(
            session, type=EventType.RECIPIENT_ERASED, data=RecipientErasedData(user_id=user_id)
        )


# -- unsubscribe links --------------------------------------------------------------------


async def opt_out_status(
    session: AsyncSession, *, recipient_id: int, categories: Collection[Category]
) -> bool | None:
    """Whether the recipient opted out of every one of ``categories``; None when no such
    recipient is held (never was, or erased): an unsubscribe link for it leads nowhere."""
    opted_out = (
        select(func.count())
        .select_from(OptOut)
        .where(OptOut.recipient_id == Recipient.id, OptOut.category.in_(list(categories)))
        .scalar_subquery()
    )
    row = (
        await session.execute(
            select(Recipient.address, opted_out).where(Recipient.id == recipient_id)
        )
    ).one_or_none()
    if row is None or row[0] is None:
        return None
    return bool(row[1] >= len(set(categories)))


# -- SES feedback (app.sns.feedback applies it, in one transaction) -----------------------

# The rules apply to addresses tegami never mailed, so a soft bounce creates the recipient it
# counts for. An erased recipient (address NULL) stays erased.
_CREATE_FOR_FEEDBACK = NamedStatement.of(
    """
    INSERT INTO recipient (address_hash, address)
    SELECT * FROM unnest(CAST(:hashes AS bytea[]), CAST(:addresses AS text[]))
    ON CONFLICT (address_hash) DO NOTHING
    """
)

# The locks are taken in the order rows leave the sort: address-hash order.
_LOCK_COUNTS = NamedStatement.of(
    """
    SELECT address_hash, soft_bounce_count FROM recipient
    WHERE address_hash = ANY(CAST(:hashes AS bytea[]))
    ORDER BY address_hash
    FOR UPDATE
    """
)

# SES can publish one soft bounce twice under two SNS MessageIds: it must not count twice.
# Its own statement, after the locks: a repeat waiting for them then sees the first's audit.
_SOFT_BOUNCE_SEEN = NamedStatement.of(
    """
    SELECT EXISTS (
        SELECT 1 FROM audit_event
        WHERE address_hash = ANY(CAST(:hashes AS bytea[]))
            AND action = 'soft_bounce_counted'
            AND right(cause, char_length(CAST(:suffix AS text))) = :suffix
    )
    """
)


async def lock_soft_bounce_counts(
    connection: asyncpg.Connection, *, addresses: Mapping[bytes, str], create: bool
) -> dict[bytes, int]:
    """Each address's consecutive soft-bounce count, its row locked (in hash order, so two
    events naming the same addresses cannot deadlock); ``create`` makes missing rows first."""
    hashes = sorted(addresses)
    if create:
        await connection.execute(_CREATE_FOR_FEEDBACK.sql, hashes, [addresses[h] for h in hashes])
    rows = await connection.fetch(_LOCK_COUNTS.sql, hashes)
    return {bytes(row[0]): row[1] for row in rows}


async def soft_bounce_seen(
    connection: asyncpg.Connection, *, hashes: Sequence[bytes], feedback_id: str | None
) -> bool:
    """This soft bounce (SES's feedbackId) was counted already, under another SNS MessageId
    (checked under the recipients' locks, so a concurrent repeat sees the first)."""
    if feedback_id is None:
        return False
    suffix = f" feedback:{feedback_id}"
    seen = bool(await connection.fetchval(_SOFT_BOUNCE_SEEN.sql, list(hashes), suffix))
    if seen:
        log.info(
            "soft bounce already counted (same feedbackId)", extra={"feedback_id": feedback_id}
        )
    return seen


# The one statement shape of the recipients' changes (``rules.Decision``s): each address's
# count, suppression and audit lines; an API's suppression is one decision through it, SES
# feedback composes it with the outbox's. ``audit_order`` keeps each address's lines in the
# order they happened (counted, then suppressed), addresses in lock order.
#
# Provides ``erased`` (one row: ``pattern``, matching each of the event's addresses whose person
# was erased, a recipient row with no address; NULL when none), so that the fragments composed
# after it can scrub the free text they record or post, as the erasure scrubbed what was
# stored before it. Read in the statement's own snapshot, taken after the message's lock: an
# erasure of the message's recipient has committed before it or waits for it, and then
# scrubs what it wrote. Provides ``suppressions`` (address_hash, address, reason) and
# ``suppressed`` (the address_hash of each suppression created) for the app's events.
DECISIONS = Fragment(
    sql="""
    erased AS (
        SELECT string_agg('(?:' || e.pattern || ')', '|') AS pattern
        FROM unnest(CAST(:r_address_hashes AS bytea[]), CAST(:r_address_patterns AS text[]))
            AS e(address_hash, pattern)
        JOIN recipient AS r USING (address_hash)
        WHERE r.address IS NULL
    ),
    counts AS (
        SELECT * FROM unnest(
            CAST(:r_count_hashes AS bytea[]), CAST(:r_counts AS int[]),
            CAST(:r_count_details AS text[]), CAST(:r_count_order AS int[])
        ) AS c(address_hash, count, detail, audit_order)
    ),
    counted AS (
        UPDATE recipient AS r SET soft_bounce_count = c.count, updated_at = now()
        FROM counts AS c WHERE r.address_hash = c.address_hash
    ),
    suppressions AS (
        SELECT * FROM unnest(
            CAST(:r_suppress_hashes AS bytea[]), CAST(:r_suppress_addresses AS text[]),
            CAST(:r_suppress_reasons AS text[]), CAST(:r_suppress_order AS int[])
        ) AS s(address_hash, address, reason, audit_order)
    ),
    suppressed AS (
        -- The first cause is kept: an address already suppressed is not audited again.
        INSERT INTO suppression (address_hash, reason, cause, detail)
        SELECT address_hash, reason, CAST(:r_cause AS text), CAST(:r_detail AS text)
        FROM suppressions
        ON CONFLICT (address_hash) DO NOTHING
        RETURNING address_hash
    ),
    audited AS (
        INSERT INTO audit_event (address_hash, action, reason, cause, detail)
        SELECT address_hash, action, reason, CAST(:r_cause AS text), detail FROM (
            SELECT address_hash, audit_order, NULL AS reason, detail,
                CASE WHEN count > 0 THEN 'soft_bounce_counted'
                    ELSE 'soft_bounce_count_reset' END AS action
            FROM counts
            UNION ALL
            SELECT s.address_hash, s.audit_order, s.reason,
                CAST(:r_detail AS text), 'suppressed'
            FROM suppressions AS s JOIN suppressed USING (address_hash)
        ) AS lines
        ORDER BY audit_order
    )""",
    prefix="r_",
)


def decision_values(
    decisions: Mapping[bytes, Decision],
    *,
    addresses: Mapping[bytes, str | None],
    cause: str,
    detail: str | None,
) -> dict[str, Any]:
    """The parameters of ``DECISIONS``, for the decisions in lock order (``addresses``: as
    given, by hash, None when unknown; ``detail``: what the audit trail says of the change,
    for feedback types only)."""
    values: dict[str, Any] = {
        "r_address_hashes": list(addresses),
        "r_address_patterns": [
            quoted_address_pattern(a) if a is not None else None for a in addresses.values()
        ],
        "r_cause": cause,
        "r_detail": detail,
        "r_count_hashes": [],
        "r_counts": [],
        "r_count_details": [],
        "r_count_order": [],
        "r_suppress_hashes": [],
        "r_suppress_addresses": [],
        "r_suppress_reasons": [],
        "r_suppress_order": [],
    }
    for position, (hashed, decision) in enumerate(decisions.items()):
        _log_decision(decision, address=addresses[hashed], cause=cause, detail=detail)
        count = decision.soft_bounce_count
        if count is not None:
            values["r_count_hashes"].append(hashed)
            values["r_counts"].append(count)
            values["r_count_details"].append(
                f"{detail}; {count} of {SOFT_BOUNCE_LIMIT}" if count and detail else detail
            )
            values["r_count_order"].append(2 * position)
        if decision.suppress is not None:
            values["r_suppress_hashes"].append(hashed)
            values["r_suppress_addresses"].append(addresses[hashed])
            values["r_suppress_reasons"].append(decision.suppress.value)
            values["r_suppress_order"].append(2 * position + 1)
    return values


def _log_decision(
    decision: Decision, *, address: str | None, cause: str, detail: str | None
) -> None:
    if decision.suppress is not None or decision.soft_bounce_count:
        log.info(
            "a decision applied to an address",
            extra={
                "event": detail,
                "to": mask_address(address) if address is not None else None,
                "suppressed": decision.suppress,
                "soft_bounce_count": decision.soft_bounce_count,
                "cause": cause,
            },
        )


def changes_anything(values: Mapping[str, Any]) -> bool:
    return bool(values["r_count_hashes"] or values["r_suppress_hashes"])


# Decisions made outside SES feedback (an API's suppression): the same shape, on its own.
_DECIDE = compose(DECISIONS, select="SELECT address_hash FROM suppressed")
_DECIDE_WITH_EVENTS = compose(
    DECISIONS, webhooks.SUPPRESSED_EVENTS, select="SELECT address_hash FROM suppressed"
)
