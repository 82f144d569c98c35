"""Accepting a mail (or a batch of them) into the outbox, previewing, cancelling, reading it
back."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.api_keys import Caller
from app.config import Settings
from app.emails import outbox, scheduling
from app.emails.catalog import EmailKind
from app.emails.links import params_problems
from app.emails.rendering import RenderedParts, SenderInfo, render_parts
from app.emails.schemas import EmailCreate
from app.errors import Conflict, ErrorCode, NotFound, Unprocessable
from app.models import ApiKeyScope, Message, MessageEvent, MessageStatus
from app.recipients.addresses import address_hash

# What a preview shows where each sent mail has its own unsubscribe link.
UNSUBSCRIBE_PLACEHOLDER = "https://unsubscribe.invalid/preview"


@dataclass(frozen=True)
class Accepted:
    id: uuid.UUID
    status: MessageStatus
    replayed: bool


def request_fingerprint(
    *,
    kind: EmailKind,
    to: str,
    params: dict[str, str],
    user_id: str | None,
    send_at: datetime | None = None,
    tags: dict[str, str] | None = None,
) -> bytes:
    """What makes two requests 'the same' for Idempotency-Key."""
    fields: list[Any] = [kind.name, to, params, user_id]
    if send_at is not None:  # (keys used before send_at existed keep their hash)
        fields.append(send_at.isoformat())
    if tags:  # (likewise for tags)
        fields.append({"tags": tags})
    body = json.dumps(fields, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(body.encode()).digest()


def batch_fingerprint(*, kind: EmailKind, items: Sequence[Any]) -> bytes:
    """A batch's Idempotency-Key fingerprint: its type and its items as sent."""
    body = json.dumps(["batch", kind.name, items], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(body.encode()).digest()


def _reused_key() -> Unprocessable:
    return Unprocessable(
        "this Idempotency-Key was already used with a different request",
        code=ErrorCode.IDEMPOTENCY_KEY_REUSED,
    )


def _answer_replay(
    message_id: uuid.UUID, request_hash: bytes, fingerprint: bytes, *, scheduled: bool
) -> Accepted:
    if request_hash != fingerprint:
        raise _reused_key()
    # The first answer, again: the mail is not accepted (or sent) twice.
    status = MessageStatus.SCHEDULED if scheduled else MessageStatus.QUEUED
    return Accepted(id=message_id, status=status, replayed=True)


def _params_invalid(problems: dict[str, str], loc: Sequence[str | int]) -> Unprocessable:
    return Unprocessable(
        "the params are not valid for this type of mail",
        code=ErrorCode.INVALID_PARAMS,
        detail=[{"loc": [*loc, "params", name], "msg": msg} for name, msg in problems.items()],
    )


def _send_at_invalid(problem: str, loc: Sequence[str | int]) -> Unprocessable:
    return Unprocessable(
        "send_at cannot be honoured for this type of mail",
        code=ErrorCode.INVALID_REQUEST,
        detail=[{"loc": [*loc, "send_at"], "msg": problem, "type": "send_at"}],
    )


def check(
    *,
    kind: EmailKind,
    params: dict[str, str],
    send_at: datetime | None,
    settings: Settings,
    now: datetime,
    loc: Sequence[str | int] = ("body",),
) -> None:
    """What a send, a batch item and a preview check beyond their schema (422)."""
    problems = params_problems(params, required=kind.params, allowed_hosts=settings.link_hosts)
    if problems:
        raise _params_invalid(problems, loc)
    if send_at is not None:
        problem = scheduling.send_at_problem(send_at, kind=kind, now=now)
        if problem is not None:
            raise _send_at_invalid(problem, loc)


def quiet_hours(settings: Settings) -> scheduling.QuietHours | None:
    return scheduling.QuietHours.of(settings.quiet_hours, settings.timezone)


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
    send_at: datetime | None = None,
    tags: dict[str, str] | None = None,
) -> Accepted:
    """Check, then store the mail in one autocommitted statement on ``connection`` (asyncpg's,
    from ``app.db.driver_connection``): it is committed when this returns."""
    now = now or datetime.now(UTC)
    check(kind=kind, params=params, send_at=send_at, settings=settings, now=now)
    fingerprint = request_fingerprint(
        kind=kind, to=to, params=params, user_id=user_id, send_at=send_at, tags=tags
    )
    message_id = uuid.uuid4()
    mail = outbox.NewMail(
        id=message_id,
        kind=kind.name,
        category=kind.category,
        address_hash=address_hash(to, secret=settings.address_hash_secret.get_secret_value()),
        to_address=to,
        user_id=user_id,
        params=params,
        tags=tags or {},
        lifetime=kind.lifetime or None,
        api_key_id=caller.key_id,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        cause=caller.cause,
        test=caller.scope is ApiKeyScope.TEST,
        due_at=scheduling.first_due(
            kind=kind,
            send_at=send_at,
            now=now,
            message_id=message_id,
            quiet=quiet_hours(settings),
        ),
    )
    found = await outbox.accept(connection, mail=mail)
    if found.existing_id is not None:
        assert found.existing_hash is not None
        return _answer_replay(
            found.existing_id,
            found.existing_hash,
            fingerprint,
            scheduled=found.existing_scheduled,
        )
    if found.suppressed is not None:
        raise Conflict(
            "the address is suppressed", code=ErrorCode.SUPPRESSED, reason=found.suppressed
        )
    if found.opted_out and kind.category.optional:
        raise Conflict(
            "the recipient unsubscribed from this category",
            code=ErrorCode.OPTED_OUT,
            reason=kind.category,
            category=kind.category,
        )
    if not found.inserted:
        # A concurrent retry with the same key committed first; answer as it did.
        assert idempotency_key is not None
        first_id, first_hash, scheduled = await outbox.first_answer(
            connection, api_key_id=caller.key_id, idempotency_key=idempotency_key
        )
        return _answer_replay(first_id, first_hash, fingerprint, scheduled=scheduled)
    return Accepted(id=mail.id, status=mail.status, replayed=False)


@dataclass(frozen=True)
class BatchAccepted:
    """One answer per item, in order: ``{"id", "status"}`` or ``{"error": {...}}``."""

    results: list[dict[str, Any]]
    accepted: int
    replayed: bool


_REFUSAL_MESSAGES = {
    ErrorCode.SUPPRESSED: "the address is suppressed",
    ErrorCode.OPTED_OUT: "the recipient unsubscribed from this category",
}


def _answer_item(stored: dict[str, Any]) -> dict[str, Any]:
    """The stored answer of an item (as the batch statement writes it) as the API says it."""
    if "code" not in stored:
        return {"id": stored["id"], "status": stored["status"]}
    error = dict(stored)
    if error["code"] == ErrorCode.OPTED_OUT:
        error["reason"] = error["category"]
    error.setdefault("message", _REFUSAL_MESSAGES.get(error["code"], "refused"))
    return {"error": error}


def _refusal(error: Unprocessable) -> dict[str, Any]:
    return {"code": error.code, "message": error.message, **error.extra}


def _item_errors(exc: ValidationError, loc: Sequence[str | int]) -> Unprocessable:
    return Unprocessable(
        "the request is not valid",
        detail=[
            {"loc": [*loc, *err["loc"]], "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_input=False)
        ],
    )


async def accept_batch(
    connection: asyncpg.Connection,
    *,
    kind: EmailKind,
    body: type[EmailCreate],
    items: Sequence[Any],
    caller: Caller,
    idempotency_key: str | None,
    settings: Settings,
) -> BatchAccepted:
    """Check each item as its single send would (a bad one is refused alone), then store
    every good one in one statement, committed when this returns."""
    now = datetime.now(UTC)
    secret = settings.address_hash_secret.get_secret_value()
    quiet = quiet_hours(settings)
    prepared: list[outbox.BatchItem] = []
    for index, raw in enumerate(items):
        loc: tuple[str | int, ...] = ("body", "emails", index)
        try:
            try:
                item = body.model_validate(raw)
            except ValidationError as exc:
                raise _item_errors(exc, loc) from None
            params = item.params.model_dump()
            check(
                kind=kind, params=params, send_at=item.send_at, settings=settings, now=now, loc=loc
            )
        except Unprocessable as refused:
            prepared.append(outbox.BatchItem(refusal=_refusal(refused)))
            continue
        message_id = uuid.uuid4()
        prepared.append(
            outbox.BatchItem(
                id=message_id,
                address_hash=address_hash(item.to, secret=secret),
                to_address=item.to,
                user_id=item.user_id,
                params=params,
                tags=item.tags or {},
                due_at=scheduling.first_due(
                    kind=kind, send_at=item.send_at, now=now, message_id=message_id, quiet=quiet
                ),
            )
        )
    fingerprint = batch_fingerprint(kind=kind, items=items)
    answer = await outbox.accept_batch(
        connection,
        kind=kind.name,
        category=kind.category,
        lifetime=kind.lifetime,
        items=prepared,
        api_key_id=caller.key_id,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        cause=caller.cause,
        test=caller.scope is ApiKeyScope.TEST,
    )
    if answer.replayed_hash is not None and answer.replayed_hash != fingerprint:
        raise _reused_key()
    return BatchAccepted(
        results=[_answer_item(stored) for stored in answer.results],
        accepted=answer.accepted,
        replayed=answer.replayed_hash is not None,
    )


def preview(
    *,
    kind: EmailKind,
    params: dict[str, str],
    send_at: datetime | None,
    settings: Settings,
) -> RenderedParts:
    """The mail as the worker would render it now (same checks as a send, 422), with the
    unsubscribe link a placeholder; nothing is stored or sent."""
    now = datetime.now(UTC)
    check(kind=kind, params=params, send_at=send_at, settings=settings, now=now)
    return render_parts(
        kind=kind,
        params=params,
        unsubscribe_url=UNSUBSCRIBE_PLACEHOLDER,
        sender=SenderInfo(
            name=settings.sender_name,
            postal_address=settings.sender_postal_address,
            contact=settings.sender_contact,
        ),
    )


async def cancel(session: AsyncSession, *, message_id: uuid.UUID, caller: Caller) -> None:
    """Cancel a mail the caller may see (``Caller.may_see_mail``) not yet handed to SES; 404
    for any other, 409 `not_cancellable` (with its ``status``) once it is sending or
    done."""
    found = (
        await session.execute(
            select(Message.api_key_id, Message.test).where(Message.id == message_id)
        )
    ).first()
    if found is None or not caller.may_see_mail(api_key_id=found.api_key_id, test=found.test):
        raise NotFound("no such email", code=ErrorCode.EMAIL_NOT_FOUND)
    stopped_at = await outbox.cancel(session, message_id=message_id, cause=caller.cause)
    if stopped_at is not None:
        raise Conflict(
            "the email is already being handed to SES"
            if stopped_at is MessageStatus.SENDING
            else f"the email can no longer be cancelled: it is {stopped_at.value}",
            code=ErrorCode.NOT_CANCELLABLE,
            status=stopped_at.value,
        )


async def read(
    session: AsyncSession, *, message_id: uuid.UUID
) -> tuple[Message, list[MessageEvent]]:
    message = await session.get(Message, message_id)
    if message is None:
        raise NotFound("no such email", code=ErrorCode.EMAIL_NOT_FOUND)
    events = (
        await session.execute(
            select(MessageEvent)
            .where(MessageEvent.message_id == message_id)
            .order_by(MessageEvent.id)
        )
    ).scalars()
    return message, list(events)
