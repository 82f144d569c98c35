"""Accepting a mail into the outbox, and reading it back."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.api_keys import Caller
from app.config import Settings
from app.emails.catalog import EmailKind
from app.emails.links import params_problems
from app.errors import Conflict, NotFound, Unprocessable
from app.models import Message, MessageEvent, MessageStatus
from app.recipients import service as recipients
from app.recipients.addresses import address_hash

OUTBOX_CHANNEL = "tegami_outbox"


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


async def _replay(
    session: AsyncSession, *, caller: Caller, idempotency_key: str, fingerprint: bytes
) -> Accepted | None:
    row = (
        await session.execute(
            select(Message.id, Message.request_hash).where(
                Message.api_key_id == caller.key_id, Message.idempotency_key == idempotency_key
            )
        )
    ).one_or_none()
    if row is None:
        return None
    if row.request_hash != fingerprint:
        raise Unprocessable(
            "this Idempotency-Key was already used with a different request",
            code="idempotency_key_reused",
        )
    # The first answer, again: the mail is not accepted (or sent) twice.
    return Accepted(id=row.id, status=MessageStatus.QUEUED, replayed=True)


async def accept(
    session: AsyncSession,
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
    if idempotency_key is not None:
        replay = await _replay(
            session, caller=caller, idempotency_key=idempotency_key, fingerprint=fingerprint
        )
        if replay is not None:
            return replay

    hashed = address_hash(to, secret=settings.address_hash_secret.get_secret_value())
    block = await recipients.find_block(session, address_hash=hashed, category=kind.category)
    if block is not None:
        message = (
            "the address is suppressed"
            if block.code == "suppressed"
            else "the recipient unsubscribed from this category"
        )
        raise Conflict(message, code=block.code, reason=block.reason)

    recipient_id = await recipients.ensure_recipient(
        session, address=to, address_hash=hashed, user_id=user_id
    )
    now = now or datetime.now(UTC)
    message_id = uuid.uuid4()
    statement = (
        insert(Message)
        .values(
            id=message_id,
            kind=kind.name,
            category=kind.category,
            recipient_id=recipient_id,
            to_address=to,
            user_id=user_id,
            params=params,
            status=MessageStatus.QUEUED,
            next_attempt_at=now,
            expires_at=now + kind.lifetime if kind.lifetime else None,
            api_key_id=caller.key_id,
            idempotency_key=idempotency_key,
            request_hash=fingerprint,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[Message.api_key_id, Message.idempotency_key])
        .returning(Message.id)
    )
    inserted = (await session.execute(statement)).scalar_one_or_none()
    if inserted is None:
        # A concurrent retry with the same key committed first; answer as it did.
        assert idempotency_key is not None
        replay = await _replay(
            session, caller=caller, idempotency_key=idempotency_key, fingerprint=fingerprint
        )
        assert replay is not None
        return replay
    session.add(MessageEvent(message_id=message_id, kind="accepted", cause=caller.cause))
    # Wakes workers in other replicas once this transaction commits.
    await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": OUTBOX_CHANNEL})
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
