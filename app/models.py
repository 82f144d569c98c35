"""Every table, in one metadata (Alembic compares against it; tables cross domains)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class MessageStatus(StrEnum):
    # Waits for its send time (`send_at`, or the end of quiet hours); then goes like queued.
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    HELD = "held"
    EXPIRED = "expired"
    FAILED = "failed"
    # Stopped by DELETE /emails/{id} before it was handed to SES.
    CANCELLED = "cancelled"


class Category(StrEnum):
    # Account mail is sent because the user just asked for it: opt-out does not stop it.
    ACCOUNT = "account"
    # Optional mail: an unsubscribe stops it.
    MATCHING = "matching"

    @property
    def optional(self) -> bool:
        """An unsubscribe (opt-out) stops this category; suppression stops every one."""
        return self in OPTIONAL_CATEGORIES


OPTIONAL_CATEGORIES = frozenset({Category.MATCHING})


# A message in one of these may still be handed to SES.
PENDING_STATUSES = (MessageStatus.QUEUED, MessageStatus.SENDING)
# DELETE /emails/{id} stops a mail in one of these (not yet handed to SES).
CANCELLABLE_STATUSES = (MessageStatus.QUEUED, MessageStatus.SCHEDULED, MessageStatus.HELD)


class MailType(StrEnum):
    """The mails of the seed, as the send path names them (`POST /emails/<type>`); what each
    says and how long its link lives is in app/emails/catalog.py."""

    VERIFY_EMAIL = "verify-email"
    PASSWORD_RESET = "password-reset"  # noqa: S105 (a mail type, not a password)
    EMAIL_CHANGE = "email-change"
    MATCHING_NOTIFICATION = "matching-notification"


class SuppressionReason(StrEnum):
    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE_LIMIT = "soft_bounce_limit"
    COMPLAINT = "complaint"
    MANUAL = "manual"
    # The person asked to be forgotten: no more mail, though SES's own list lets them go.
    ERASED = "erased"


def _now_column() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now())


class ApiKeyScope(StrEnum):
    """Who holds a key; what each scope may do is app.api_keys.PERMISSIONS."""

    APP = "app"  # the Next.js app: sends, reads its mails and recipients, opt-outs, erasure
    ADMIN = "admin"  # operators: everything
    SUPPORT = "support"  # the support desk: reads mail and recipients, changes nothing
    TEST = "test"  # staging and CI: sends (never to SES) and reads the mails it sent


class Permission(StrEnum):
    """What a route needs of the caller's key (app.api_keys.PERMISSIONS: which scope has it).
    Here beside ApiKeyScope, not in app.api_keys: the 403 error body names it."""

    SEND = "send"  # POST /emails/<type> (batch, preview), DELETE /emails/{id}
    READ_MAIL = "read_mail"  # GET /emails/{id}
    READ_RECIPIENTS = "read_recipients"  # GET /recipients/{email}
    OPT_OUT = "opt_out"  # PUT and DELETE /recipients/{email}/opt-outs/{category}
    ERASE = "erase"  # DELETE /recipients/{email}
    SUPPRESS = "suppress"  # PUT and DELETE /recipients/{email}/suppression
    STATUS = "status"  # GET /status/...
    WEBHOOKS = "webhooks"  # GET /webhooks/deliveries


class ApiKey(Base):
    __tablename__ = "api_key"
    __table_args__ = (
        CheckConstraint("scope IN ('app', 'admin', 'support', 'test')", name="scope"),
    )

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    # SHA-256 of the key: the key itself is shown once and never stored.
    key_hash: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    scope: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Written at most once a minute per key, on the auth cache's misses (app/api_keys.py).
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # After `tegami api-key rotate`: the replaced key, accepted until the grace period ends.
    previous_key_hash: Mapped[bytes | None] = mapped_column(LargeBinary, unique=True)
    previous_key_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Recipient(Base):
    """One row per address, matched case-insensitively through a keyed hash."""

    __tablename__ = "recipient"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    address_hash: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    # Null once erased (DELETE /recipients/{email}).
    address: Mapped[str | None] = mapped_column(Text)
    user_id: Mapped[str | None] = mapped_column(Text)
    soft_bounce_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = _now_column()
    updated_at: Mapped[datetime] = _now_column()


class Suppression(Base):
    """Blocks every category. Keyed by the address hash so it survives erasure."""

    __tablename__ = "suppression"

    address_hash: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    cause: Mapped[str] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()


class OptOut(Base):
    """Blocks one optional category for one recipient."""

    __tablename__ = "opt_out"

    recipient_id: Mapped[int] = mapped_column(
        ForeignKey("recipient.id", ondelete="CASCADE"), primary_key=True
    )
    category: Mapped[str] = mapped_column(Text, primary_key=True)
    cause: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()


class Message(Base):
    """The outbox and the log of every accepted mail."""

    __tablename__ = "message"
    __table_args__ = (
        UniqueConstraint("api_key_id", "idempotency_key"),
        # The worker's claim query: pending (and scheduled) messages by due time.
        Index(
            "ix_message_due",
            "next_attempt_at",
            postgresql_where=text("status IN ('queued', 'sending', 'scheduled')"),
        ),
        # The claim's lanes: pending mail of one category by due time (app/emails/outbox.py).
        Index(
            "ix_message_due_by_category",
            "category",
            "next_attempt_at",
            postgresql_where=text("status IN ('queued', 'sending', 'scheduled')"),
        ),
        # The claim's lane of test-key mail, which books no send slot: rare, so its own index
        # (the paced lanes' would walk every due real mail to find it).
        Index(
            "ix_message_due_test",
            "next_attempt_at",
            postgresql_where=text("test AND status IN ('queued', 'sending', 'scheduled')"),
        ),
        # The reputation window: the most recent sends.
        Index("ix_message_sent_at", "sent_at", postgresql_where=text("sent_at IS NOT NULL")),
        # Held mail, released when the reputation guard lifts.
        Index("ix_message_held", "id", postgresql_where=text("status = 'held'")),
        # Retention: the oldest mail first.
        Index("ix_message_created_at", "created_at"),
        # Support's search (app/support/search.py), newest first: one person's mail by the
        # keyed hash of the address (every spelling and case of it), or by the app's user id,
        # and mail carrying a tag (`tags @> {"job_id": "J-1"}`).
        Index("ix_message_recipient_created", "recipient_id", "created_at", "id"),
        Index(
            "ix_message_user_created",
            "user_id",
            "created_at",
            "id",
            postgresql_where=text("user_id IS NOT NULL"),
        ),
        Index(
            "ix_message_tags",
            "tags",
            postgresql_using="gin",
            postgresql_ops={"tags": "jsonb_path_ops"},
        ),
        # Retention: the few mails (the last days') that still hold link params, without a
        # scan of a year of mail every ten minutes (app/emails/outbox.py drop_spent_params).
        Index("ix_message_with_params", "id", postgresql_where=text("params IS NOT NULL")),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(Text)
    recipient_id: Mapped[int] = mapped_column(ForeignKey("recipient.id"), index=True)
    # The address exactly as the app gave it; null once erased.
    to_address: Mapped[str | None] = mapped_column(Text)
    user_id: Mapped[str | None] = mapped_column(Text)
    # The app's own labels (`{"job_id": "J-1"}`): searchable, sent to SES as message tags and
    # carried by every email.* event.
    tags: Mapped[dict[str, str]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    # Holds link tokens: purged once the mail is sent or expired.
    params: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = _now_column()
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ses_message_id: Mapped[str | None] = mapped_column(Text, unique=True)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_key.id"))
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    request_hash: Mapped[bytes | None] = mapped_column(LargeBinary)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Accepted with a `test` key: rendered and recorded, never handed to SES.
    test: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = _now_column()
    updated_at: Mapped[datetime] = _now_column()
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the mail was first due, if not at once: the app's `send_at`, or the end of quiet
    # hours. Its day of retries counts from here.
    send_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SendBatch(Base):
    """The answer to a batch sent with an Idempotency-Key: a retry gets it again, item by
    item, and nothing is accepted twice (items refused are in no ``message`` row)."""

    __tablename__ = "send_batch"
    __table_args__ = (UniqueConstraint("api_key_id", "idempotency_key"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_key.id"))
    idempotency_key: Mapped[str] = mapped_column(Text)
    request_hash: Mapped[bytes] = mapped_column(LargeBinary)
    # One entry per item, in order: {"id", "status"} or {"code", ...} (app/emails/service.py).
    results: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _now_column()


class MessageEvent(Base):
    """What happened to a message: attempts, SES answers, feedback."""

    __tablename__ = "message_event"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    message_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("message.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)
    cause: Mapped[str | None] = mapped_column(Text)
    # SES feedback as data (app.recipients.rules.Feedback: hard_bounce, complaint, ...): what
    # the reputation watch counts.
    feedback: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()


class AuditEvent(Base):
    """Every change of a recipient's state, with its cause: the audit trail promised to AWS."""

    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    address_hash: Mapped[bytes] = mapped_column(LargeBinary, index=True)
    action: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    cause: Mapped[str] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()


class SnsMessage(Base):
    """SNS MessageIds already applied: each is applied once."""

    __tablename__ = "sns_message"

    message_id: Mapped[str] = mapped_column(Text, primary_key=True)
    type: Mapped[str] = mapped_column(Text)
    topic_arn: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = _now_column()


class SendPacer(Base):
    """One row, the gate every worker claims through: the next free send slot (so the sum
    stays under the rate), whether SES errors about the account paused sending, and whether
    SES throttles."""

    __tablename__ = "send_pacer"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    next_slot_at: Mapped[datetime] = _now_column()
    # Set while sending is paused (an SES error about the account); the next probe is due at
    # paused_until.
    pause_reason: Mapped[str | None] = mapped_column(Text)
    paused_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set when SES throttled a call: every replica books at half the rate until SES takes a
    # mail again.
    throttled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SesListRemoval(Base):
    """An erased address still to be taken off SES's account suppression list: SES could not
    be reached at the erasure. The address is kept only until SES has let it go
    (app/recipients/ses_list.py retries with backoff)."""

    __tablename__ = "ses_list_removal"
    __table_args__ = (Index("ix_ses_list_removal_due", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    address: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = _now_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()


class WebhookDelivery(Base):
    """One event for the app, posted to TEGAMI_WEBHOOK_URL until it answers 2xx (app/webhooks)."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status"),
        # The delivery loop: pending events by due time.
        Index(
            "ix_webhook_delivery_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_webhook_delivery_created_at", "created_at"),
    )

    # The webhook-id is "msg_" and this id's hex: the same on every attempt.
    id: Mapped[uuid.UUID] = mapped_column(
        UUID, primary_key=True, server_default=text("gen_random_uuid()")
    )
    type: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = _now_column()
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
