"""Finding mail for support: by recipient, user, type, status, tag and time, newest first, in
cursor pages. Reads only (the outbox owns ``message``).

A person's mail is found through the keyed hash of the address, as every rule matches it:
`Taro@x`, `taro@x` and, for a legacy carrier address, `"taro."@docomo.ne.jp` and
`taro.@docomo.ne.jp` are one person (app.recipients.addresses.normalize_address). The index
``ix_message_recipient_created`` then reads their mail newest first, one page at a time, however
many other mails there are.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Unprocessable
from app.models import Message, MessageEvent, Recipient

MAX_LIMIT = 100
# What a tag filter and a cursor look like (a tag's names and values: app/emails/schemas.py).
TAG_FILTER_PATTERN = "^[A-Za-z0-9_-]{1,256}:[A-Za-z0-9_-]{1,256}$"
CURSOR_PATTERN = "^[A-Za-z0-9_-]+$"


@dataclass(frozen=True)
class Filters:
    """What to look for; every filter given must hold."""

    address_hash: bytes | None = None
    user_id: str | None = None
    type: str | None = None
    status: str | None = None
    tags: dict[str, str] | None = None
    since: datetime | None = None
    until: datetime | None = None
    # A `test` key finds only the mail it sent.
    api_key_id: int | None = None


@dataclass(frozen=True)
class FoundEmail:
    id: uuid.UUID
    type: str
    status: str
    to: str | None
    user_id: str | None
    tags: dict[str, str]
    created_at: datetime
    last_event_kind: str | None
    last_event_detail: str | None
    last_event_at: datetime | None


@dataclass(frozen=True)
class Page:
    emails: list[FoundEmail]
    next_cursor: str | None


def encode_cursor(created_at: datetime, message_id: uuid.UUID) -> str:
    """Opaque to the caller: where the last page ended (created_at, id), as the order reads."""
    raw = json.dumps([created_at.isoformat(), str(message_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, message_id = json.loads(raw)
        after = datetime.fromisoformat(created_at)
        if after.tzinfo is None:
            raise ValueError("naive")
        return after, uuid.UUID(message_id)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise Unprocessable(
            "the cursor is not one this API gave",
            detail=[{"loc": ["query", "cursor"], "msg": "not a cursor from next_cursor"}],
        ) from None


def parse_tag(value: str) -> tuple[str, str]:
    """`job_id:J-1` -> ("job_id", "J-1")."""
    key, _, tag_value = value.partition(":")
    if re.fullmatch(TAG_FILTER_PATTERN, value, re.ASCII) is None:
        raise Unprocessable(
            "a tag filter is key:value",
            detail=[{"loc": ["query", "tag"], "msg": f"{value!r} is not key:value"}],
        )
    return key, tag_value


def _query(
    filters: Filters, *, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> Select[Any]:
    last_event = (
        select(MessageEvent.kind, MessageEvent.detail, MessageEvent.created_at)
        .where(MessageEvent.message_id == Message.id)
        .order_by(MessageEvent.id.desc())
        .limit(1)
        .lateral("last_event")
    )
    query = select(
        Message.id,
        Message.kind,
        Message.status,
        Message.to_address,
        Message.user_id,
        Message.tags,
        Message.created_at,
        last_event.c.kind.label("event_kind"),
        last_event.c.detail.label("event_detail"),
        last_event.c.created_at.label("event_at"),
    ).outerjoin(last_event, true())
    if filters.address_hash is not None:
        recipient = select(Recipient.id).where(Recipient.address_hash == filters.address_hash)
        query = query.where(Message.recipient_id == recipient.scalar_subquery())
    if filters.user_id is not None:
        query = query.where(Message.user_id == filters.user_id)
    if filters.type is not None:
        query = query.where(Message.kind == filters.type)
    if filters.status is not None:
        query = query.where(Message.status == filters.status)
    if filters.tags:
        query = query.where(Message.tags.contains(filters.tags))
    if filters.since is not None:
        query = query.where(Message.created_at >= filters.since)
    if filters.until is not None:
        query = query.where(Message.created_at < filters.until)
    if filters.api_key_id is not None:
        query = query.where(Message.api_key_id == filters.api_key_id)
    if after is not None:
        created_at, message_id = after
        query = query.where(
            or_(
                Message.created_at < created_at,
                and_(Message.created_at == created_at, Message.id < message_id),
            )
        )
    return query.order_by(Message.created_at.desc(), Message.id.desc()).limit(limit + 1)


async def find_emails(
    session: AsyncSession, *, filters: Filters, limit: int = 50, cursor: str | None = None
) -> Page:
    """One page of mail, newest first; ``next_cursor`` is None on the last page."""
    limit = max(1, min(limit, MAX_LIMIT))
    after = decode_cursor(cursor) if cursor else None
    rows = (await session.execute(_query(filters, after=after, limit=limit))).all()
    emails = [
        FoundEmail(
            id=row.id,
            type=row.kind,
            status=row.status,
            to=row.to_address,
            user_id=row.user_id,
            tags=row.tags or {},
            created_at=row.created_at,
            last_event_kind=row.event_kind,
            last_event_detail=row.event_detail,
            last_event_at=row.event_at,
        )
        for row in rows[:limit]
    ]
    next_cursor = None
    if len(rows) > limit:
        last = emails[-1]
        next_cursor = encode_cursor(last.created_at, last.id)
    return Page(emails=emails, next_cursor=next_cursor)
