"""Accepting a mail into the outbox, and reading it back."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.api_keys import Caller
from app.config import Settings
from app.emails import outbox
from app.emails.catalog import EmailKind
from app.emails.links import params_problems
from app.errors import Conflict, NotFound, Unprocessable
from app.models import ApiKeyScope, Message, MessageEvent, MessageStatus
from app.recipients.addresses import address_hash


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


async def accept(
    connection: asyncpg.Connection,
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
    mail = outbox.NewMail(
        id=uuid.uuid4(),
        kind=kind.name,
        category=kind.category,
        address_hash=address_hash(to, secret=settings.address_hash_secret.get_secret_value()),
        to_address=to,
        user_id=user_id,
        params=params,
        expires_at=now + kind.lifetime if kind.lifetime else None,
        api_key_id=caller.key_id,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        cause=caller.cause,
        now=now,
        test=caller.scope is ApiKeyScope.TEST,
    )
    found = await outbox.accept(connection, mail=mail)
    if found.existing_id is not None:
        assert found.existing_hash is not None
        return _answer_replay(found.existing_id, found.existing_hash, fingerprint)
    if found.suppressed is not None:
        raise Conflict("the address is suppressed", code="suppressed", reason=found.suppressed)
    if found.opted_out and kind.category.optional:
        raise Conflict(
            "the recipient unsubscribed from this category",
            code="opted_out",
            reason=kind.category,
            category=kind.category,
        )
    if not found.inserted:
        # A concurrent retry with the same key committed first; answer as it did.
        assert idempotency_key is not None
        first_id, first_hash = await outbox.first_answer(
            connection, api_key_id=caller.key_id, idempotency_key=idempotency_key
        )
        return _answer_replay(first_id, first_hash, fingerprint)
    return Accepted(id=mail.id, status=MessageStatus.QUEUED, replayed=False)


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
