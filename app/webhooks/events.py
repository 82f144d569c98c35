"""The events tegami posts to the app, and the shape of each (the OpenAPI `webhooks`).

Pure: no I/O. The Standard Webhooks body is ``{"type", "timestamp", "data"}``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from app.errors import OptedOutCategory
from app.models import MailType, MessageStatus, SuppressionReason


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


# SES's documented values (Bounce.bounceType, Complaint.complaintFeedbackType), so the app can
# switch on them exhaustively.
BounceType = Literal["Permanent", "Transient", "Undetermined"]
ComplaintFeedbackType = Literal["abuse", "auth-failure", "fraud", "not-spam", "other", "virus"]


@dataclass(frozen=True)
class ReadFrom:
    """Where an `email.*` field is read when the outbox records the event (app.webhooks.
    deliveries builds the payload from these): over the outbox's ``applied`` row ``a`` (the
    mail's new status, SES's fields) and the mail ``m`` as the statement found it. Not part of
    the schema."""

    sql: str


# Adding a field to every `email.*` event is one field here, with its description and the
# ReadFrom it is read from (then `tegami openapi` refreshes the published document).
class EmailEventData(BaseModel):
    """What every `email.*` event carries; each event narrows the SES fields it fills."""

    email_id: Annotated[uuid.UUID, ReadFrom("a.id")] = Field(
        description="The id the send (`POST /emails/<type>`) answered with."
    )
    type: Annotated[MailType, ReadFrom("m.kind")] = Field(
        description="The email type, as in the path it was sent with."
    )
    user_id: Annotated[str | None, ReadFrom("m.user_id")] = Field(
        description="The app's own user id, when it gave one."
    )
    address: Annotated[str | None, ReadFrom("m.to_address")] = Field(
        description="The recipient, as the app gave it (null if erased)."
    )
    status: Annotated[MessageStatus, ReadFrom("a.status")] = Field(
        description="The email's status after the event."
    )
    test: Annotated[bool, ReadFrom("m.test")] = Field(
        description="Sent with a `test` key: rendered and recorded, never handed to SES "
        "(`email.sent` then means rendered). Always false for real mail."
    )
    tags: Annotated[dict[str, str], ReadFrom("m.tags")] = Field(
        default_factory=dict, description="The tags the send gave (`{}` when none)."
    )
    ses_type: Annotated[None, ReadFrom("a.ses_type")] = Field(
        default=None, description="Only bounces and complaints carry one."
    )
    ses_subtype: Annotated[None, ReadFrom("a.ses_subtype")] = Field(
        default=None, description="Only bounces carry one."
    )
    diagnostic: Annotated[None, ReadFrom("a.diagnostic")] = Field(
        default=None, description="Only bounces carry one."
    )


def read_from(model: type[BaseModel]) -> dict[str, str]:
    """Each field of ``model`` and the SQL it is read from (its ``ReadFrom``), in order; a
    field without one is a mistake caught here, at import of whoever builds the payload."""
    found: dict[str, str] = {}
    for name, info in model.model_fields.items():
        sources = [m.sql for m in info.metadata if isinstance(m, ReadFrom)]
        if len(sources) != 1:
            raise TypeError(f"{model.__name__}.{name} needs one ReadFrom(...) to say its source")
        found[name] = sources[0]
    return found


class EmailBouncedData(EmailEventData):
    ses_type: BounceType = Field(  # type: ignore[assignment]
        description="SES's bounceType: Permanent (the address does not work) or Transient / "
        "Undetermined (tegami sends again later while the link is valid)."
    )
    ses_subtype: str | None = Field(  # type: ignore[assignment]
        default=None, description="SES's bounceSubType (General, NoEmail, Suppressed, ...)."
    )
    diagnostic: str | None = Field(  # type: ignore[assignment]
        default=None, description="The receiving server's diagnostic, when SES had one."
    )


class EmailComplainedData(EmailEventData):
    ses_type: ComplaintFeedbackType | None = Field(  # type: ignore[assignment]
        default=None,
        description="SES's complaintFeedbackType, when the mailbox provider sent one.",
    )


class RecipientSuppressionData(BaseModel):
    address: str | None = Field(description="The address the change is about (null if erased).")
    user_id: str | None = Field(description="The app's user id last given with this address.")
    reason: SuppressionReason = Field(
        description="Why no mail goes to the address (for `unsuppressed`: why it did not)."
    )
    category: None = None


class RecipientOptOutData(BaseModel):
    address: str | None = Field(description="The address the change is about.")
    user_id: str | None = Field(description="The app's user id last given with this address.")
    reason: None = None
    category: OptedOutCategory = Field(description="The category of optional mail.")


class RecipientEventData(BaseModel):
    """What the recipients' owner records; the events below narrow it per type."""

    address: str | None
    user_id: str | None
    reason: str | None = None
    category: str | None = None


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
        "email.failed",
        "email.expired",
        "email.held",
        "email.cancelled",
    ]
    data: EmailEventData


class EmailBouncedEvent(_Envelope):
    type: Literal["email.bounced"]
    data: EmailBouncedData


class EmailComplainedEvent(_Envelope):
    type: Literal["email.complained"]
    data: EmailComplainedData


class RecipientSuppressionEvent(_Envelope):
    type: Literal["recipient.suppressed", "recipient.unsuppressed"]
    data: RecipientSuppressionData


class RecipientOptOutEvent(_Envelope):
    type: Literal["recipient.opted_out", "recipient.opted_in"]
    data: RecipientOptOutData


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


_MODELS: dict[EventType, type[_Envelope]] = {
    EventType.EMAIL_BOUNCED: EmailBouncedEvent,
    EventType.EMAIL_COMPLAINED: EmailComplainedEvent,
    EventType.RECIPIENT_SUPPRESSED: RecipientSuppressionEvent,
    EventType.RECIPIENT_UNSUPPRESSED: RecipientSuppressionEvent,
    EventType.RECIPIENT_OPTED_OUT: RecipientOptOutEvent,
    EventType.RECIPIENT_OPTED_IN: RecipientOptOutEvent,
    EventType.RECIPIENT_ERASED: RecipientErasedEvent,
    EventType.WEBHOOK_TEST: WebhookTestEvent,
}


def model_for(event_type: EventType) -> type[_Envelope]:
    """The shape of one event's body, narrowed for its type (the OpenAPI `webhooks`)."""
    return _MODELS.get(event_type, EmailEvent)


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
