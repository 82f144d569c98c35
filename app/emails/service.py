"""Accepting a mail into the outbox, and reading it back."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.api_keys import Caller
from app.config import Settings
from app.db import NamedStatement
from app.emails.catalog import OPTIONAL_CATEGORIES, EmailKind
from app.emails.links import params_problems
from app.errors import Conflict, NotFound, Unprocessable
from app.models import Message, MessageEvent, MessageStatus
from app.recipients.addresses import address_hash

OUTBOX_CHANNEL = "tegami_outbox"
# The NOTIFY payload: which process accepted the mail. That process's own worker was already
# woken in memory, so it ignores its own NOTIFY (a second wake cost one empty claim per mail).
PROCESS_ORIGIN = uuid.uuid4().hex


@dataclass(frozen=True)
class Accepted:
    id: uuid.UUID
    status: MessageStatus
    replayed: bool


def request_fingerprint(
    *, kind: EmailKind, to: str, params: dict[str, str], user_id: str | None
) -> bytes:
    """What makes two requests 'the same' for Idempotency-Key."""
    body = json.dumps([kind.name, to, params, user_id], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(body.encode()).digest()


def _answer_replay(message_id: uuid.UUID, request_hash: bytes, fingerprint: bytes) -> Accepted:
    if request_hash != fingerprint:
        raise Unprocessable(
            "this Idempotency-Key was already used with a different request",
            code="idempotency_key_reused",
        )
    # The first answer, again: the mail is not accepted (or sent) twice.
    return Accepted(id=message_id, status=MessageStatus.QUEUED, replayed=True)


_FIRST_ANSWER = NamedStatement.of(
    "SELECT id, request_hash FROM message WHERE api_key_id = :api_key_id "
    "AND idempotency_key = :idempotency_key"
)

# The whole accept in one statement (one round trip, one snapshot): an earlier request with
# this Idempotency-Key, the address's block (suppression, or opt-out of this category), and,
# only when there is neither, the recipient upsert, the message, its 'accepted' event and the
# NOTIFY that wakes workers in other replicas once the transaction commits.
_ACCEPT = NamedStatement.of(
    """
    WITH existing AS (
        SELECT id, request_hash FROM message
        WHERE api_key_id = CAST(:api_key_id AS integer)
          AND idempotency_key = CAST(:idempotency_key AS text)
    ),
    block AS (
        SELECT
            (SELECT reason FROM suppression WHERE address_hash = CAST(:address_hash AS bytea))
                AS suppressed,
            EXISTS (
                SELECT 1 FROM opt_out o JOIN recipient r ON r.id = o.recipient_id
                WHERE r.address_hash = CAST(:address_hash AS bytea)
                  AND o.category = CAST(:category AS text)
            ) AS opted_out
    ),
    go AS (
        SELECT 1 FROM block
        WHERE block.suppressed IS NULL
          AND NOT (block.opted_out AND CAST(:optional AS boolean))
          AND NOT EXISTS (SELECT 1 FROM existing)
    ),
    recipient_row AS (
        INSERT INTO recipient (address_hash, address, user_id)
        SELECT CAST(:address_hash AS bytea), CAST(:to_address AS text), CAST(:user_id AS text)
        FROM go
        ON CONFLICT (address_hash) DO UPDATE
            SET address = excluded.address,
                user_id = coalesce(excluded.user_id, recipient.user_id),
                updated_at = now()
        RETURNING id
    ),
    inserted AS (
        INSERT INTO message (id, kind, category, recipient_id, to_address, user_id, params,
            status, next_attempt_at, expires_at, api_key_id, idempotency_key, request_hash,
            created_at, updated_at)
        SELECT CAST(:id AS uuid), CAST(:kind AS text), CAST(:category AS text), recipient_row.id,
            CAST(:to_address AS text), CAST(:user_id AS text), CAST(:params AS jsonb),
            CAST(:status AS text), CAST(:now AS timestamptz), CAST(:expires_at AS timestamptz),
            CAST(:api_key_id AS integer), CAST(:idempotency_key AS text),
            CAST(:request_hash AS bytea), CAST(:now AS timestamptz), CAST(:now AS timestamptz)
        FROM recipient_row
        ON CONFLICT (api_key_id, idempotency_key) DO NOTHING
        RETURNING id
    ),
    accepted_event AS (
        INSERT INTO message_event (message_id, kind, cause)
        SELECT id, 'accepted', CAST(:cause AS text) FROM inserted
        RETURNING message_id
    )
    SELECT block.suppressed, block.opted_out,
        (SELECT id FROM existing) AS existing_id,
        (SELECT request_hash FROM existing) AS existing_hash,
        (SELECT message_id FROM accepted_event) AS inserted_id,
        (SELECT count(pg_notify(CAST(:channel AS text), CAST(:origin AS text)))
            FROM accepted_event) AS notified
    FROM block
    """
)


async def accept(
    connection: Any,
    *,
    kind: EmailKind,
    to: str,
    params: dict[str, str],
    user_id: str | None,
    caller: Caller,
    idempotency_key: str | None,
    settings: Settings,
    now: datetime | None = None,
) -> Accepted:
    """Check, then store the mail in one autocommitted statement on ``connection`` (asyncpg's,
    from ``app.db.driver_connection``): it is committed when this returns."""
    problems = params_problems(params, required=kind.params, allowed_hosts=settings.link_hosts)
    if problems:
        raise Unprocessable(
            "the params are not valid for this type of mail",
            code="invalid_params",
            detail=[
                {"loc": ["body", "params", name], "msg": msg} for name, msg in problems.items()
            ],
        )
    fingerprint = request_fingerprint(kind=kind, to=to, params=params, user_id=user_id)
    now = now or datetime.now(UTC)
    message_id = uuid.uuid4()
    values = {
        "id": message_id,
        "kind": kind.name,
        "category": str(kind.category),
        "optional": kind.category in OPTIONAL_CATEGORIES,
        "address_hash": address_hash(to, secret=settings.address_hash_secret.get_secret_value()),
        "to_address": to,
        "user_id": user_id,
        "params": json.dumps(params, ensure_ascii=False),
        "status": MessageStatus.QUEUED.value,
        "now": now,
        "expires_at": now + kind.lifetime if kind.lifetime else None,
        "api_key_id": caller.key_id,
        "idempotency_key": idempotency_key,
        "request_hash": fingerprint,
        "cause": caller.cause,
        "channel": OUTBOX_CHANNEL,
        "origin": PROCESS_ORIGIN,
    }
    row = await connection.fetchrow(_ACCEPT.sql, *_ACCEPT.args(values))
    if row["existing_id"] is not None:
        return _answer_replay(row["existing_id"], row["existing_hash"], fingerprint)
    if row["suppressed"] is not None:
        raise Conflict("the address is suppressed", code="suppressed", reason=row["suppressed"])
    if row["opted_out"] and kind.category in OPTIONAL_CATEGORIES:
        raise Conflict(
            "the recipient unsubscribed from this category",
            code="opted_out",
            reason=kind.category,
        )
    if row["inserted_id"] is None:
        # A concurrent retry with the same key committed first; answer as it did.
        assert idempotency_key is not None
        first = await connection.fetchrow(
            _FIRST_ANSWER.sql,
            *_FIRST_ANSWER.args({"api_key_id": caller.key_id, "idempotency_key": idempotency_key}),
        )
        return _answer_replay(first["id"], first["request_hash"], fingerprint)
    return Accepted(id=message_id, status=MessageStatus.QUEUED, replayed=False)


async def read(
    session: AsyncSession, *, message_id: uuid.UUID
) -> tuple[Message, list[MessageEvent]]:
    message = await session.get(Message, message_id)
    if message is None:
        raise NotFound("no such email", code="email_not_found")
    events = (
        await session.execute(
            select(MessageEvent)
            .where(MessageEvent.message_id == message_id)
            .order_by(MessageEvent.id)
        )
    ).scalars()
    return message, list(events)
