"""Bodies of support's reads: found mail, and the verdict."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from app.models import MailType, MessageStatus
from app.support.why import VerdictKind


class LastEventRead(BaseModel):
    kind: str = Field(description="`accepted`, `sent`, `delivery`, `bounce`, ...")
    detail: str | None = Field(description="What happened, with SES's diagnostic for a bounce.")
    created_at: datetime


class EmailFoundRead(BaseModel):
    id: uuid.UUID
    type: MailType
    status: MessageStatus
    to: str | None = Field(description="As the app gave it; null once the recipient was erased.")
    user_id: str | None
    tags: dict[str, str]
    created_at: datetime
    last_event: LastEventRead | None


class EmailSearchRead(BaseModel):
    emails: list[EmailFoundRead] = Field(description="Newest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class VerdictRead(BaseModel):
    verdict: VerdictKind
    email_id: uuid.UUID | None = Field(
        description="The mail the verdict is about (null for `never_sent`)."
    )
    explanation: str = Field(description="What happened, in Japanese, to read to the customer.")
    next_step: str = Field(description="What the customer (or support) can do, in Japanese.")
