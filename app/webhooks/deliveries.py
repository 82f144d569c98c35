"""Every statement that writes ``webhook_delivery``: the events waiting for the app, and what
became of each.

Who asks what of it:
- state changes record their event in their own transaction, so an event exists exactly when
  its change committed: ``enqueue`` (an asyncpg connection inside the caller's transaction),
  ``enqueue_in_session`` (the ORM session a router commits), and, where the owner's hot path
  is one combined statement, a SQL fragment it composes in (``EMAIL_EVENTS_CTE`` for
  ``outbox.finish``, ``FEEDBACK_EVENTS_CTE`` for SES feedback);
- the delivery loop claims due events (``claim_due``) and records each attempt
  (``record_attempt``), fenced by the attempt number like the outbox;
- operators list them (``list_deliveries``) and send them again (``replay``).

No URL set (``TEGAMI_WEBHOOK_URL``): ``enabled()`` is False, nothing is recorded, and the hot
statements run their variants without the fragment.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import asyncpg
from pydantic import BaseModel
from sqlalchemy import delete, func, insert, literal, null, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db import NamedStatement
from app.models import Message, WebhookDelivery
from app.webhooks.events import EventType

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

# For ``outbox.finish``: composed after a CTE ``emails_changed`` that returns the changed
# messages' own columns ``id, kind, user_id, to_address, status, test, tags``. A retry
# (back to queued) is not news to the app; the statuses below are.
EMAIL_EVENTS_CTE = """
    webhook_email_events AS (
        INSERT INTO webhook_delivery (type, data)
        SELECT 'email.' || c.status, jsonb_build_object('email_id', c.id, 'type', c.kind,
            'user_id', c.user_id, 'address', c.to_address, 'status', c.status,
            'test', c.test, 'tags', c.tags,
            'ses_type', NULL, 'ses_subtype', NULL, 'diagnostic', NULL)
        FROM emails_changed AS c
        WHERE c.status IN ('sent', 'failed', 'expired', 'held')
    )"""

# For SES feedback's outcome statement: composed after its CTEs ``suppressions``
# (address_hash, reason), ``suppressed`` (the address_hash of each suppression created) and
# ``erased`` (``pattern``: the event's erased addresses, or NULL), with its parameters
# ``:message_id``, ``:status`` (the message's new status, or NULL) and ``:erased_mark``, and
# these of its own: ``:webhook_type`` (the email event, or NULL), ``:webhook_extra`` (jsonb:
# SES's type and subtype), ``:webhook_diagnostic`` (SES's text, or NULL),
# ``:suppress_addresses`` (beside ``:suppress_hashes``). The message is read as the
# statement's snapshot saw it: its kind, user and address do not change here. About a person
# erased since, nothing names the address: it is null, and scrubbed from the diagnostic.
FEEDBACK_EVENTS_CTE = """
    webhook_email_event AS (
        INSERT INTO webhook_delivery (type, data)
        SELECT CAST(:webhook_type AS text), jsonb_build_object('email_id', m.id,
            'type', m.kind, 'user_id', m.user_id, 'address', m.to_address,
            'status', COALESCE(CAST(:status AS text), m.status), 'test', m.test, 'tags', m.tags,
            'ses_type', NULL, 'ses_subtype', NULL)
            || COALESCE(CAST(:webhook_extra AS jsonb), '{}'::jsonb)
            || jsonb_build_object('diagnostic', COALESCE(
                regexp_replace(CAST(:webhook_diagnostic AS text),
                    (SELECT pattern FROM erased), :erased_mark, 'gi'),
                CAST(:webhook_diagnostic AS text)))
        FROM message AS m
        WHERE m.id = CAST(:message_id AS uuid) AND CAST(:webhook_type AS text) IS NOT NULL
    ),
    webhook_suppressed_events AS (
        INSERT INTO webhook_delivery (type, data)
        SELECT 'recipient.suppressed', jsonb_build_object(
            'address', CASE WHEN r.id IS NOT NULL AND r.address IS NULL THEN NULL
                ELSE a.address END,
            'user_id', r.user_id, 'reason', s.reason, 'category', NULL)
        FROM unnest(CAST(:suppress_hashes AS bytea[]), CAST(:suppress_addresses AS text[]))
            AS a(address_hash, address)
        JOIN suppressed USING (address_hash)
        JOIN suppressions AS s USING (address_hash)
        LEFT JOIN recipient AS r USING (address_hash)
    )"""

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


async def enqueue_email_events(
    executor: AsyncConnection | AsyncSession, *, message_ids: Sequence[uuid.UUID]
) -> None:
    """Record `email.<status>` for each of these messages as they now stand (a bulk change:
    the reputation guard holding mail, an operator discarding it, an erasure failing it), in
    the caller's transaction."""
    if not _enabled or not message_ids:
        return
    data = func.jsonb_build_object(
        "email_id", Message.id, "type", Message.kind, "user_id", Message.user_id,
        "address", Message.to_address, "status", Message.status, "test", Message.test,
        "tags", Message.tags,
        "ses_type", null(), "ses_subtype", null(), "diagnostic", null(),
    )  # fmt: skip
    events = select(literal("email.") + Message.status, data).where(Message.id.in_(message_ids))
    await executor.execute(insert(WebhookDelivery).from_select(["type", "data"], events))


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
    query = select(WebhookDelivery).order_by(WebhookDelivery.created_at.desc()).limit(limit)
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
