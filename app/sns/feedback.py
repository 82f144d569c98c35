"""Applying one verified SES notification: once per SNS MessageId, then DESIGN's rules.

Parse (``app.sns.events``) → claim the MessageId (``app.sns.service``) → ``rules.decide`` once
per address → write, in one transaction: the recipients' counts, suppressions and audit
(``app.recipients.service``) and the message's status and history (``app.emails.outbox``).
The writes are one statement composed from the two owners' fragments: on the SNS hot path a
round trip costs more than the work (bench/NOTES.md).

Most events (hard bounces, complaints, deliveries to an address with no soft bounce counted)
take two statements: claim and find; write. Soft bounces, and deliveries that reset a count,
take the locked path: the recipients are locked in address-hash order and then the message,
so concurrent feedback for one address counts one after the other and two events naming the
same addresses cannot deadlock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg

from app.db import NamedStatement
from app.emails import outbox
from app.errors import AppError, ErrorCode
from app.models import MessageStatus
from app.recipients import rules
from app.recipients import service as recipients
from app.recipients.addresses import address_hash, mask_address
from app.sns import service as sns
from app.sns.events import EventKind, SesEvent, SesEventError, parse_ses_event
from app.sns.service import SnsOutcome
from app.webhooks import deliveries as webhooks
from app.webhooks.events import EventType

log = logging.getLogger(__name__)

# SES types whose loss would change who gets mail: one we cannot read is refused (400),
# never quietly ignored. Anything else we cannot read (a test "Hello world", SES's
# AmazonSnsSubscriptionSucceeded notice, a future type) is recorded as ignored.
_STATE_CHANGING_TYPES: Final = frozenset(
    {"Bounce", "Complaint", "Delivery", "Reject", "Rendering Failure"}
)

# Everything an event changes, in one statement: each owner's part, composed; with
# TEGAMI_WEBHOOK_URL set, the app's events (email.bounced, recipient.suppressed, ...) too.
_WRITES = "WITH" + recipients.FEEDBACK_WRITES + "," + outbox.FEEDBACK_WRITES
_WRITE = NamedStatement.of(_WRITES + "\nSELECT 1")
_WRITE_WITH_EVENTS = NamedStatement.of(_WRITES + "," + webhooks.FEEDBACK_EVENTS_CTE + "\nSELECT 1")
# The event the app hears of, by SES event.
_WEBHOOK_TYPES: Final = {
    EventKind.DELIVERY: EventType.EMAIL_DELIVERED,
    EventKind.DELIVERY_DELAY: EventType.EMAIL_DELIVERY_DELAYED,
    EventKind.BOUNCE: EventType.EMAIL_BOUNCED,
    EventKind.COMPLAINT: EventType.EMAIL_COMPLAINED,
    EventKind.REJECT: EventType.EMAIL_FAILED,
    EventKind.RENDERING_FAILURE: EventType.EMAIL_FAILED,
}


class UnreadableSesEvent(AppError):
    status_code = 400
    code = ErrorCode.UNREADABLE_SES_EVENT


def read_ses_event(message: str) -> SesEvent | None:
    """The SES event in an SNS ``Message``; None when it is nothing we act on."""
    try:
        return parse_ses_event(message)
    except SesEventError as exc:
        if _ses_type(message) in _STATE_CHANGING_TYPES:
            raise UnreadableSesEvent(f"the SES event cannot be read: {exc}") from exc
        return None


def _ses_type(message: str) -> str | None:
    try:
        data = json.loads(message)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    name = data.get("eventType", data.get("notificationType"))
    return name if isinstance(name, str) else None


def event_cause(event: SesEvent, *, sns_message_id: str) -> str:
    """How the audit trail and the message history name this event."""
    cause = f"sns:{sns_message_id}"
    return f"{cause} feedback:{event.feedback_id}" if event.feedback_id else cause


async def apply_notification(
    connection: asyncpg.Connection,
    *,
    message: Mapping[str, Any],
    secret: str,
    now: datetime,
    on_reputation_event: Callable[[], None] | None = None,
) -> SnsOutcome:
    """Apply one verified Notification, once per SNS MessageId; committed when it returns.

    ``connection`` is asyncpg's (``app.db.driver_connection``), outside any transaction.
    ``on_reputation_event`` is called once a hard bounce or a complaint is committed: they
    move the rates SES reviews the account by.
    """
    event = read_ses_event(message["Message"])
    if event is None:
        # One statement: its own transaction.
        if not await sns.record_sns_message(
            connection, message=message, outcome=SnsOutcome.IGNORED
        ):
            return SnsOutcome.DUPLICATE
        log.info(
            "SNS notification is not SES feedback we act on; ignored",
            extra={"sns_message_id": message["MessageId"], "topic_arn": message["TopicArn"]},
        )
        return SnsOutcome.IGNORED
    outcome = await _apply(connection, event, message=message, secret=secret, now=now)
    moves_rates = event.kind is EventKind.COMPLAINT or event.is_hard_bounce
    if outcome is SnsOutcome.APPLIED and on_reputation_event is not None and moves_rates:
        on_reputation_event()
    return outcome


async def _apply(
    connection: asyncpg.Connection,
    event: SesEvent,
    *,
    message: Mapping[str, Any],
    secret: str,
    now: datetime,
) -> SnsOutcome:
    addresses = _addresses(event, secret=secret)
    feedback = _Feedback(event, message["MessageId"], addresses, now)
    if not event.is_soft_bounce:
        try:
            async with _transaction(connection):
                return await _apply_unlocked(connection, feedback, message=message)
        except _NeedsRecipientLocks:
            pass  # rolled back: nothing of it was kept
    async with _transaction(connection):
        return await _apply_locked(connection, feedback, message=message)


@dataclass(frozen=True)
class _Feedback:
    event: SesEvent
    sns_message_id: str
    # One entry per address hash (Taro@ and taro@ are one recipient).
    addresses: dict[bytes, str]
    now: datetime


def _addresses(event: SesEvent, *, secret: str) -> dict[bytes, str]:
    addresses: dict[bytes, str] = {}
    for address in event.recipients:
        addresses.setdefault(address_hash(address, secret=secret), address)
    return addresses


class _NeedsRecipientLocks(Exception):
    """Raised inside the fast path's transaction to roll it back and take the locked path."""


async def _apply_unlocked(
    connection: asyncpg.Connection, feedback: _Feedback, *, message: Mapping[str, Any]
) -> SnsOutcome:
    """Events that change no soft-bounce count: claim and find; write.

    A Delivery resets the count, but only an address whose count is above 0 needs it: read
    without a lock, a 0 means no soft bounce had committed, so this Delivery is ordered
    before any still in flight and leaves the count alone. Above 0, the locked path runs.
    """
    event = feedback.event
    claimed = await sns.claim_and_find(
        connection,
        message=message,
        hashes=sorted(feedback.addresses),
        ses_message_id=event.ses_message_id,
        tagged_ids=_tagged_ids(event),
    )
    if claimed is None:
        return SnsOutcome.DUPLICATE
    if event.kind is EventKind.DELIVERY and claimed.highest_soft_bounce_count > 0:
        raise _NeedsRecipientLocks
    target = outbox.FeedbackTarget.of(claimed.message) if claimed.message is not None else None
    counts = dict.fromkeys(feedback.addresses, 0)
    await _decide_and_write(connection, feedback, counts=counts, target=target)
    return SnsOutcome.APPLIED


async def _apply_locked(
    connection: asyncpg.Connection, feedback: _Feedback, *, message: Mapping[str, Any]
) -> SnsOutcome:
    """Soft bounces, and Deliveries that reset a count: the recipients are locked (in hash
    order, then the message), so concurrent feedback for one address counts one after the
    other. DUPLICATE also for a repeat of a soft bounce already counted (same feedbackId)."""
    event = feedback.event
    if not await sns.record_sns_message(connection, message=message, outcome=SnsOutcome.APPLIED):
        return SnsOutcome.DUPLICATE
    counts = await recipients.lock_soft_bounce_counts(
        connection, addresses=feedback.addresses, create=event.is_soft_bounce
    )
    # Checked under the locks, so a concurrent repeat waits and then sees the first.
    if (
        event.is_soft_bounce
        and event.feedback_id
        and await recipients.soft_bounce_seen(
            connection, hashes=sorted(feedback.addresses), feedback_id=event.feedback_id
        )
    ):
        log.info(
            "soft bounce already counted (same feedbackId)",
            extra={"sns_message_id": feedback.sns_message_id, "feedback_id": event.feedback_id},
        )
        return SnsOutcome.DUPLICATE
    target = await outbox.find_for_feedback(
        connection, ses_message_id=event.ses_message_id, tagged_ids=_tagged_ids(event)
    )
    await _decide_and_write(connection, feedback, counts=counts, target=target)
    return SnsOutcome.APPLIED


async def _decide_and_write(
    connection: asyncpg.Connection,
    feedback: _Feedback,
    *,
    counts: Mapping[bytes, int],
    target: outbox.FeedbackTarget | None,
) -> None:
    """DESIGN's rules for each address (in lock order) and the message, then one write."""
    event = feedback.event
    decisions = {
        hashed: rules.decide(event.feedback, soft_bounce_count=counts.get(hashed, 0))
        for hashed in sorted(feedback.addresses)
    }
    _log_decisions(feedback, decisions)
    cause = event_cause(event, sns_message_id=feedback.sns_message_id)
    address_values = recipients.feedback_values(
        decisions,
        addresses=feedback.addresses,
        cause=cause,
        address_detail=_address_detail(event),
    )
    if target is None and not recipients.changes_anything(address_values):
        return
    values = address_values | _message_values(event, decisions, target=target, now=feedback.now)
    statement = _WRITE
    if webhooks.enabled():
        statement = _WRITE_WITH_EVENTS
        values |= _webhook_values(event, feedback.addresses, values["suppress_hashes"])
    await connection.execute(statement.sql, *statement.args(values))


def _webhook_values(
    event: SesEvent, addresses: Mapping[bytes, str], suppressed: list[bytes]
) -> dict[str, Any]:
    """The parameters of ``webhooks.FEEDBACK_EVENTS_CTE``."""
    kind = _WEBHOOK_TYPES.get(event.kind)
    extra: dict[str, str | None] = {}
    diagnostic = None
    if event.kind is EventKind.BOUNCE:
        extra = {"ses_type": event.bounce_type, "ses_subtype": event.bounce_subtype}
        diagnostic = event.detail
    elif event.kind is EventKind.COMPLAINT:
        extra = {"ses_type": event.complaint_feedback_type}
    return {
        "webhook_type": kind.value if kind is not None else None,
        "webhook_extra": json.dumps(extra),
        # Apart, as text: the statement scrubs an erased address from it.
        "webhook_diagnostic": diagnostic,
        "suppress_addresses": [addresses[h] for h in suppressed],
    }


def _message_values(
    event: SesEvent,
    decisions: Mapping[bytes, rules.Decision],
    *,
    target: outbox.FeedbackTarget | None,
    now: datetime,
) -> dict[str, Any]:
    """The message's part: its history, and its status when the event is about its latest
    send (not an earlier send of a mail sent again since)."""
    history = [outbox.HistoryLine(event.kind.value, _event_detail(event), event.feedback.value)]
    change = None
    if target is not None and target.ses_message_id in (None, event.ses_message_id):
        # The message's own recipient; an event that does not name it judges it alone.
        decision = decisions.get(target.address_hash) or rules.decide(
            event.feedback, soft_bounce_count=0
        )
        change = rules.message_change(
            decision, status=target.status, expires_at=target.expires_at, now=now
        )
    last_error = None
    if change is not None and change.next_attempt_at is not None:
        when = change.next_attempt_at.isoformat()
        history.append(outbox.HistoryLine("resend_scheduled", f"soft bounce: sent again at {when}"))
    elif change is not None and change.status in (MessageStatus.FAILED, MessageStatus.BOUNCED):
        last_error = _event_detail(event)
    return outbox.feedback_values(
        target,
        ses_message_id=event.ses_message_id,
        history=history,
        status=change.status if change is not None else None,
        next_attempt_at=change.next_attempt_at if change is not None else None,
        last_error=last_error,
    )


def _log_decisions(feedback: _Feedback, decisions: Mapping[bytes, rules.Decision]) -> None:
    for hashed, decision in decisions.items():
        if decision.suppress is not None or decision.soft_bounce_count:
            log.info(
                "SES feedback applied to an address",
                extra={
                    "event": feedback.event.kind.value,
                    "to": mask_address(feedback.addresses[hashed]),
                    "suppressed": decision.suppress,
                    "soft_bounce_count": decision.soft_bounce_count,
                    "sns_message_id": feedback.sns_message_id,
                },
            )


@contextlib.asynccontextmanager
async def _transaction(connection: asyncpg.Connection) -> AsyncIterator[None]:
    """A transaction whose prepared statements run on their generic plans.

    Left to choose, PostgreSQL re-plans the statements with arrays and CTEs above on every
    execution (it estimates their generic plan dearer), which costs more than running them:
    1.9 ms of PostgreSQL CPU per event instead of 1.0 (bench/NOTES.md). Every statement here
    looks rows up by key. Set with BEGIN in one round trip, and for this transaction only:
    the accept statement runs three times slower on its generic plan.
    """
    await connection.execute("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan")
    try:
        yield
    except Exception:
        # When this fails too, app.db.driver_connection discards the connection.
        with contextlib.suppress(Exception):
            await connection.execute("ROLLBACK")
        raise
    await connection.execute("COMMIT")


def _tagged_ids(event: SesEvent) -> list[uuid.UUID]:
    tagged: list[uuid.UUID] = []
    for tag in event.tags.get("tegami_id", ()):
        try:
            tagged.append(uuid.UUID(tag))
        except ValueError:
            continue
    return tagged


def _address_detail(event: SesEvent) -> str:
    """What the audit trail says about the event: types only, never diagnostic text."""
    if event.kind is EventKind.BOUNCE:
        return f"bounce {event.bounce_type}/{event.bounce_subtype or '-'}"
    if event.kind is EventKind.COMPLAINT:
        return f"complaint {event.complaint_feedback_type or '-'}"
    return event.kind.value


def _event_detail(event: SesEvent) -> str | None:
    if event.kind in (EventKind.BOUNCE, EventKind.COMPLAINT):
        summary = _address_detail(event)
        return f"{summary}: {event.detail}" if event.detail else summary
    return event.detail
