"""Request and response bodies of the send API."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.db import check_storable
from app.emails.catalog import EMAIL_KINDS
from app.models import MessageStatus
from app.recipients.addresses import check_address

EmailType = StrEnum("EmailType", {name.replace("-", "_"): name for name in EMAIL_KINDS})  # type: ignore[misc]


class EmailCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "to": "taro@example.com",
                    "params": {"verification_url": "https://proworks.jp/verify?token=abc"},
                    "user_id": "user_123",
                }
            ]
        },
    )

    to: str = Field(max_length=254, description="Recipient, as the user typed it.")
    params: dict[str, str] = Field(description="The links this type of mail needs.")
    user_id: str | None = Field(
        default=None, max_length=200, description="The app's own id for the user."
    )

    @field_validator("to")
    @classmethod
    def _address(cls, value: str) -> str:
        return check_address(value)

    @field_validator("user_id")
    @classmethod
    def _user_id(cls, value: str | None) -> str | None:
        return check_storable(value)


class EmailAccepted(BaseModel):
    id: uuid.UUID
    status: MessageStatus


class EmailEventRead(BaseModel):
    kind: str
    detail: str | None
    cause: str | None
    created_at: datetime


class EmailRead(BaseModel):
    id: uuid.UUID
    type: str
    category: str
    status: MessageStatus
    to: str | None = Field(description="Null once the recipient was erased.")
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    expires_at: datetime | None
    ses_message_id: str | None
    last_error: str | None
    test: bool = Field(description="Accepted with a `test` key: rendered, never sent to SES.")
    events: list[EmailEventRead]
