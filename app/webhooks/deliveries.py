"""Every statement that writes ``webhook_delivery``: the events waiting for the app, and what
became of each.

Who asks what of it:
- state changes record their event in their own transaction, so an event exists exactly when
  its change committed: ``enqueue`` (an asyncpg connection inside the caller's transaction),
  ``enqueue_in_session`` (the ORM session a router commits), and, where the owner writes in
  one combined statement, a fragment it composes in (``email_events`` for every change of a
  mail the outbox applies, ``SUPPRESSED_EVENTS`` for SES feedback's suppressions);
- the delivery loop claims due events (``claim_due``) and records each attempt
  (``record_attempt``), fenced by the attempt number like the outbox;
- operators list them (``list_deliveries``) and send them again (``replay``).

No URL set (``TEGAMI_WEBHOOK_URL``): ``enabled()`` is False, nothing is recorded, and the hot
statements run their variants without the fragment.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

import asyncpg
from pydantic import BaseModel
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db import Fragment, NamedStatement
from app.models import WebhookDelivery
from app.webhooks.events import EmailEventData, EventType, read_from

_enabled = False


def enable(on: bool) -> None:
    """Set once at start-up from TEGAMI_WEBHOOK_URL (the statements are chosen by it)."""
    global _enabled  # one switch per process, set by the lifespan
    _enabled = on


def enabled() -> bool:
    return _enabled


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


# -- recording events --------------------------------------------------------------------

# The `email.*` payload, built here only, from app.webhooks.events.EmailEventData: each field
# and the SQL its ReadFrom names (adding a field is one field there). Read at import, so a
# field without its ReadFrom stops the app from starting rather than a statement failing.
EMAIL_EVENT_FIELDS: Final = read_from(EmailEventData)


def email_events(model: type[BaseModel] = EmailEventData) -> Fragment:
    """The `email.*` event of each mail the outbox changed (app.emails.outbox's ``applied``:
    ``id``, the new ``status``, ``webhook_type`` (None: not news) and SES's fields), with the
    fields of ``model`` (a test hands a model with one more)."""
    fields = ", ".join(f"'{name}', {sql}" for name, sql in read_from(model).items())
    sql = f"""
    webhook_email_events AS (
        INSERT INTO webhook_delivery (type, data)
        SELECT a.webhook_type, jsonb_build_object({fields})
        FROM applied AS a JOIN message AS m USING (id)
        WHERE a.webhook_type IS NOT NULL
    )"""  # noqa: S608 (only the constant field list is formatted in)
    return Fragment(sql=sql, prefix="w_", needs=frozenset({"applied"}))


# `recipient.suppressed`, one per suppression the recipients' owner created (its
# ``suppressions``: address_hash, address (as given, or None), reason; ``suppressed``: the
# address_hash of each created). It names the address held for the recipient, so about a
# person erased (a recipient row with no address) none.
SUPPRESSED_EVENTS = Fragment(
    sql="""
    webhook_suppressed_events AS (
        INSERT INTO webhook_delivery (type, data)
        SELECT 'recipient.suppressed', jsonb_build_object(
            'address', CASE WHEN r.id IS NOT NULL THEN r.address ELSE s.address END,
            'user_id', r.user_id, 'reason', s.reason, 'category', NULL)
        FROM suppressions AS s
        JOIN suppressed USING (address_hash)
        LEFT JOIN recipient AS r USING (address_hash)
    )""",
    prefix="w_",
    needs=frozenset({"suppressions", "suppressed"}),
)

_ENQUEUE = NamedStatement.of(
    "INSERT INTO webhook_delivery (type, data) VALUES (:type, CAST(:data AS jsonb))"
)


def _data(data: BaseModel) -> dict[str, Any]:
    dumped: dict[str, Any] = data.model_dump(mode="json")
    return dumped


async def enqueue(connection: asyncpg.Connection, *, type: EventType, data: BaseModel) -> None:
    """Record an event inside the caller's transaction on asyncpg's connection."""
    if _enabled:
        await connection.execute(_ENQUEUE.sql, type.value, json.dumps(_data(data)))


async def enqueue_in_session(session: AsyncSession, *, type: EventType, data: BaseModel) -> None:
    """Record an event in the ORM session; it is sent once the session commits."""
    if _enabled:
        await session.execute(insert(WebhookDelivery).values(type=type.value, data=_data(data)))


# -- the delivery loop -------------------------------------------------------------------

# Claimed by pushing the due time out by a lease (no lock is held across the HTTP call):
# a replica that dies mid-post leaves the event due again when the lease runs out.


@dataclass(frozen=True)
class Due:
    id: uuid.UUID
    type: str
    data: dict[str, Any]
    attempt: int
    created_at: datetime


async def claim_due(connection: AsyncConnection, *, limit: int, lease: float) -> list[Due]:
    due = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.next_attempt_at <= func.now(),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .subquery()
    )
    claimed = (
        update(WebhookDelivery)
        .where(WebhookDelivery.id == due.c.id)
        .values(
            attempts=WebhookDelivery.attempts + 1,
            next_attempt_at=func.now() + timedelta(seconds=lease),
        )
        .returning(
            WebhookDelivery.id,
            WebhookDelivery.type,
            WebhookDelivery.data,
            WebhookDelivery.attempts,
            WebhookDelivery.created_at,
        )
    )
    rows = await connection.execute(claimed)
    return [
        Due(id=r.id, type=r.type, data=r.data, attempt=r.attempts, created_at=r.created_at)
        for r in rows
    ]


async def record_attempt(
    connection: AsyncConnection,
    *,
    due: Due,
    status: DeliveryStatus,
    last_status: int | None,
    last_error: str | None,
    next_attempt_at: datetime | None,
) -> None:
    """Fenced by the attempt: a replica whose lease ran out changes nothing."""
    values: dict[str, Any] = {
        "status": status.value,
        "last_status": last_status,
        "last_error": last_error,
    }
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    if status is DeliveryStatus.DELIVERED:
        values["delivered_at"] = func.now()
    await connection.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == due.id,
            WebhookDelivery.attempts == due.attempt,
            WebhookDelivery.status == DeliveryStatus.PENDING,
        )
        .values(**values)
    )


# -- operators ---------------------------------------------------------------------------


async def list_deliveries(
    session: AsyncSession, *, status: DeliveryStatus | None, limit: int
) -> list[WebhookDelivery]:
    # Events of one statement share created_at: the id breaks the tie, so two reads of an
    # unchanged table list the same order.
    newest_first = (WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
    query = select(WebhookDelivery).order_by(*newest_first).limit(limit)
    if status is not None:
        query = query.where(WebhookDelivery.status == status.value)
    return list((await session.execute(query)).scalars())


# Events already delivered or given up on start a new schedule (attempts from 0, the same
# webhook-id); pending ones are on their way and are left alone.
async def replay(connection: AsyncConnection, *, since: datetime) -> int:
    statement = (
        update(WebhookDelivery)
        .where(
            WebhookDelivery.created_at >= since,
            WebhookDelivery.status.in_((DeliveryStatus.DELIVERED, DeliveryStatus.FAILED)),
        )
        .values(status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=func.now(),
                delivered_at=None)
    )  # fmt: skip
    return (await connection.execute(statement)).rowcount


# -- keeping only what must be kept -------------------------------------------------------


# Every string of an event (`address`, SES's `diagnostic`, ...) that quotes the address: the
# `address` field becomes null, the address in free text becomes the erased mark. Events are
# flat objects; only rows that quote the address are rewritten.
_FORGET_ADDRESS = text(
    """
    UPDATE webhook_delivery AS w SET data = (
        SELECT jsonb_object_agg(f.key, CASE
            WHEN jsonb_typeof(f.value) <> 'string' OR NOT (f.value #>> '{}') ~* :pattern
                THEN f.value
            WHEN f.key = 'address' THEN 'null'::jsonb
            ELSE to_jsonb(regexp_replace(f.value #>> '{}', :pattern, :mark, 'gi'))
        END)
        FROM jsonb_each(w.data) AS f
    )
    WHERE EXISTS (
        SELECT FROM jsonb_each(w.data) AS f
        WHERE jsonb_typeof(f.value) = 'string' AND (f.value #>> '{}') ~* :pattern
    )
    """
)


# What the app's endpoint answered to a failed post (its first 300 characters) may quote it too.
_FORGET_ADDRESS_IN_ANSWERS = text(
    """
    UPDATE webhook_delivery SET last_error = regexp_replace(last_error, :pattern, :mark, 'gi')
    WHERE last_error ~* :pattern
    """
)


async def forget_address(
    executor: AsyncConnection | AsyncSession, *, pattern: str, mark: str
) -> None:
    """An erased address leaves the events: ``pattern`` is
    app.recipients.addresses.quoted_address_pattern's (that address, never a neighbour's)."""
    values = {"pattern": pattern, "mark": mark}
    await executor.execute(_FORGET_ADDRESS, values)
    await executor.execute(_FORGET_ADDRESS_IN_ANSWERS, values)


async def delete_old(connection: AsyncConnection, *, days: int) -> int:
    """Events delivered or given up on, older than the retention period."""
    old = (
        WebhookDelivery.created_at < func.now() - timedelta(days=days),
        WebhookDelivery.status != DeliveryStatus.PENDING,
    )
    return (await connection.execute(delete(WebhookDelivery).where(*old))).rowcount
