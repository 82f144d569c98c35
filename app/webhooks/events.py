"""The events tegami posts to the app, and the shape of each (the OpenAPI `webhooks`).

Pure: no I/O. The Standard Webhooks body is ``{"type", "timestamp", "data"}``.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field


class EventType(StrEnum):
    EMAIL_SENT = "email.sent"
    EMAIL_DELIVERED = "email.delivered"
    EMAIL_DELIVERY_DELAYED = "email.delivery_delayed"
    EMAIL_BOUNCED = "email.bounced"
    EMAIL_COMPLAINED = "email.complained"
    EMAIL_FAILED = "email.failed"
    EMAIL_EXPIRED = "email.expired"
    EMAIL_HELD = "email.held"
    EMAIL_CANCELLED = "email.cancelled"
    RECIPIENT_SUPPRESSED = "recipient.suppressed"
    RECIPIENT_UNSUPPRESSED = "recipient.unsuppressed"
    RECIPIENT_OPTED_OUT = "recipient.opted_out"
    RECIPIENT_OPTED_IN = "recipient.opted_in"
    RECIPIENT_ERASED = "recipient.erased"
    WEBHOOK_TEST = "webhook.test"


EMAIL_EVENTS = tuple(t for t in EventType if t.value.startswith("email."))
# The message statuses the worker records that the app hears of (a retry is not news).
WORKER_STATUSES = ("sent", "failed", "expired", "held")


class EmailEventData(BaseModel):
    email_id: uuid.UUID = Field(
        description="The id the send (`POST /emails/<type>`) answered with."
    )
    type: str = Field(description="The email type, as in the path it was sent with.")
    user_id: str | None = Field(description="The app's own user id, when it gave one.")
    address: str | None = Field(description="The recipient, as the app gave it (null if erased).")
    status: str = Field(description="The email's status after the event.")
    ses_type: str | None = Field(
        default=None, description="Bounces: SES's bounceType; complaints: complaintFeedbackType."
    )
    ses_subtype: str | None = Field(default=None, description="Bounces: SES's bounceSubType.")
    diagnostic: str | None = Field(
        default=None, description="Bounces: the receiving server's diagnostic, when SES had one."
    )


class RecipientEventData(BaseModel):
    address: str | None = Field(description="The address the change is about.")
    user_id: str | None = Field(description="The app's user id last given with this address.")
    reason: str | None = Field(
        default=None,
        description="Suppressions: hard_bounce, soft_bounce_limit, complaint or manual.",
    )
    category: str | None = Field(default=None, description="Opt-outs: the mail category.")


class RecipientErasedData(BaseModel):
    """An erasure names no address: the address is what was erased."""

    user_id: str | None = Field(description="The app's user id held for the address, if any.")
    erased: Literal[True] = True


class WebhookTestData(BaseModel):
    message: str


class _Envelope(BaseModel):
    timestamp: datetime = Field(description="When the change happened (UTC).")


class EmailEvent(_Envelope):
    type: Literal[
        "email.sent",
        "email.delivered",
        "email.delivery_delayed",
        "email.bounced",
        "email.complained",
        "email.failed",
        "email.expired",
        "email.held",
        "email.cancelled",
    ]
    data: EmailEventData


class RecipientEvent(_Envelope):
    type: Literal[
        "recipient.suppressed",
        "recipient.unsuppressed",
        "recipient.opted_out",
        "recipient.opted_in",
    ]
    data: RecipientEventData


class RecipientErasedEvent(_Envelope):
    type: Literal["recipient.erased"]
    data: RecipientErasedData


class WebhookTestEvent(_Envelope):
    type: Literal["webhook.test"]
    data: WebhookTestData


DESCRIPTIONS: dict[EventType, str] = {
    EventType.EMAIL_SENT: "SES accepted the email.",
    EventType.EMAIL_DELIVERED: "The receiving server accepted the email.",
    EventType.EMAIL_DELIVERY_DELAYED: "SES could not deliver yet and keeps trying.",
    EventType.EMAIL_BOUNCED: "The email bounced (ses_type Permanent: the address does not "
    "work; Transient: tegami sends again later while the link is valid).",
    EventType.EMAIL_COMPLAINED: "The recipient marked the email as spam.",
    EventType.EMAIL_FAILED: "The email will not be sent (SES refused it, or tegami gave up).",
    EventType.EMAIL_EXPIRED: "The email's link expired before it could be sent.",
    EventType.EMAIL_HELD: "Optional mail held while the bounce or complaint rate is high.",
    EventType.EMAIL_CANCELLED: "The app cancelled the email (`DELETE /emails/{id}`) before it "
    "was handed to SES: it is never sent.",
    EventType.RECIPIENT_SUPPRESSED: "No mail goes to the address any more: ask the user for "
    "another one.",
    EventType.RECIPIENT_UNSUPPRESSED: "An operator lifted the address's suppression.",
    EventType.RECIPIENT_OPTED_OUT: "The user turned off a category of optional mail.",
    EventType.RECIPIENT_OPTED_IN: "The user turned a category of optional mail back on.",
    EventType.RECIPIENT_ERASED: "The personal data held for a user's address was erased.",
    EventType.WEBHOOK_TEST: "Sent by `tegami webhooks test`.",
}


def model_for(event_type: EventType) -> type[_Envelope]:
    if event_type is EventType.RECIPIENT_ERASED:
        return RecipientErasedEvent
    if event_type is EventType.WEBHOOK_TEST:
        return WebhookTestEvent
    if event_type in EMAIL_EVENTS:
        return EmailEvent
    return RecipientEvent


def webhook_id(delivery_id: uuid.UUID) -> str:
    """The Standard Webhooks message id: the same on every attempt of one event."""
    return f"msg_{delivery_id.hex}"


def body(*, event_type: str, created_at: datetime, data: dict[str, Any]) -> str:
    """The exact bytes posted (and signed): the same on every attempt."""
    when = created_at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps(
        {"type": event_type, "timestamp": when, "data": data},
        ensure_ascii=False,
        separators=(",", ":"),
    )
