"""Bodies of the recipient API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.db import NO_NUL, check_storable
from app.models import SuppressionReason
from app.recipients.ses_list import SesListOutcome


class SuppressionRead(BaseModel):
    reason: SuppressionReason
    cause: str = Field(description="What suppressed it: SES feedbackId, SNS MessageId, API key.")
    detail: str | None
    created_at: datetime


class OptOutRead(BaseModel):
    category: str
    cause: str = Field(description="`unsubscribe:<token fingerprint>` for a link or one-click.")
    created_at: datetime


class AuditEventRead(BaseModel):
    action: str = Field(
        description="`suppressed`, `suppression_lifted`, `opted_out`, `erased`, ...",
        examples=["suppressed"],
    )
    reason: str | None
    cause: str
    detail: str | None
    created_at: datetime


class RecipientRead(BaseModel):
    address: str | None = Field(
        description="The address as the app last gave it; null when tegami holds none "
        "(erased, or known only from SES feedback)."
    )
    suppressed: SuppressionRead | None = Field(
        description="Set when no mail of any category goes to the address."
    )
    opt_outs: list[OptOutRead] = Field(description="Optional categories the recipient left.")
    soft_bounce_count: int = Field(description="Consecutive soft bounces; 3 suppresses.")
    history: list[AuditEventRead] = Field(description="Every change of state, oldest first.")


class SuppressionCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"reason": "manual", "detail": "user asked by phone"}]},
    )

    reason: Literal["manual"] = Field(
        default="manual", description="Only `manual`: the other reasons come from SES feedback."
    )
    detail: str | None = Field(
        default=None,
        max_length=1000,
        description="Why, for the record.",
        json_schema_extra={"pattern": NO_NUL},
    )

    @field_validator("detail")
    @classmethod
    def _detail(cls, value: str | None) -> str | None:
        return check_storable(value)


class SesSuppressionListRead(BaseModel):
    outcome: SesListOutcome = Field(
        description="What happened to the address on SES's account-level suppression list: "
        "`removed` (under either spelling), `not_listed` (SES did not hold it), `no_ses` (the "
        "mailbox backend: no SES to update), `pending` (an erasure while SES could not be "
        "reached: tegami keeps trying until SES lets the address go; see `message`)."
    )
    message: str | None = Field(default=None, description="Why, when `pending`.")


class SuppressionLiftRead(BaseModel):
    lifted: Literal[True] = True
    ses_suppression_list: SesSuppressionListRead


class ErasureRead(BaseModel):
    erased: bool = Field(description="False when tegami held no personal data for the address.")
    ses_suppression_list: SesSuppressionListRead
