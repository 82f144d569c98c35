"""Applying one verified SNS message: once per MessageId, then the recipient rules.

Runs in the request's session and never commits (the router does). Recipients are locked in
address-hash order, so two events naming the same addresses cannot deadlock.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

import httpx
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.errors import AppError
from app.models import Message, MessageEvent, MessageStatus, Recipient, SnsMessage
from app.recipients import rules
from app.recipients import service as recipients
from app.recipients.addresses import address_hash, mask_address
from app.sns.events import EventKind, SesEvent, SesEventError, parse_ses_event
from app.sns.signature import SnsVerificationError, check_subscribe_url

log = logging.getLogger(__name__)

# SES types whose loss would change who gets mail: one we cannot read is refused (400),
# never quietly ignored. Anything else we cannot read (a test "Hello world", SES's
# AmazonSnsSubscriptionSucceeded notice, a future type) is recorded as ignored.
_STATE_CHANGING_TYPES: Final = frozenset(
    {"Bounce", "Complaint", "Delivery", "Reject", "Rendering Failure"}
)

SUBSCRIBE_TIMEOUT_SECONDS: Final = 10.0


class SnsOutcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    CONFIRMED = "confirmed"
    RECORDED = "recorded"


class UnreadableSesEvent(AppError):
    status_code = 400
    code = "unreadable_ses_event"


class SubscribeFailed(AppError):
    # Not the caller's fault and worth another try: SNS re-sends the confirmation on 5xx.
    status_code = 502
    code = "subscribe_failed"


class SubscribeUrlRefused(AppError):
    status_code = 403
    code = "subscribe_url"


# -- de-duplication -------------------------------------------------------------------------


async def record_sns_message(
    session: AsyncSession, *, message: Mapping[str, Any], outcome: SnsOutcome
) -> bool:
    """Claim the MessageId; False when it was already applied (or is being, concurrently:
    the insert waits for the other transaction and then finds it)."""
    statement = (
        insert(SnsMessage)
        .values(
            message_id=message["MessageId"],
            type=message["Type"],
            topic_arn=message["TopicArn"],
            outcome=outcome.value,
        )
        .on_conflict_do_nothing(index_elements=[SnsMessage.message_id])
        .returning(SnsMessage.message_id)
    )
    return (await session.execute(statement)).scalar_one_or_none() is not None


async def is_recorded(session: AsyncSession, *, message_id: str) -> bool:
    found = await session.execute(
        select(SnsMessage.message_id).where(SnsMessage.message_id == message_id)
    )
    return found.scalar_one_or_none() is not None


# -- subscription ---------------------------------------------------------------------------


async def confirm_subscription(
    session: AsyncSession, *, message: Mapping[str, Any], http: httpx.AsyncClient
) -> SnsOutcome:
    """Confirm by fetching SubscribeURL (only an SNS ConfirmSubscription URL for this topic)."""
    try:
        check_subscribe_url(message["SubscribeURL"], topic_arn=message["TopicArn"])
    except SnsVerificationError as exc:
        raise SubscribeUrlRefused("SubscribeURL is not an SNS confirmation URL") from exc
    if await is_recorded(session, message_id=message["MessageId"]):
        return SnsOutcome.DUPLICATE
    try:
        response = await http.get(
            message["SubscribeURL"], timeout=SUBSCRIBE_TIMEOUT_SECONDS, follow_redirects=False
        )
    except httpx.HTTPError as exc:
        log.warning(
            "could not confirm the SNS subscription",
            extra={
                "event": "sns_subscription_failed",
                "topic_arn": message["TopicArn"],
                "error": type(exc).__name__,
            },
        )
        raise SubscribeFailed("could not reach SNS to confirm the subscription") from exc
    if response.status_code != 200:
        log.warning(
            "SNS refused the subscription confirmation",
            extra={
                "event": "sns_subscription_failed",
                "topic_arn": message["TopicArn"],
                "status": response.status_code,
            },
        )
        raise SubscribeFailed(f"SNS answered {response.status_code} to the confirmation")
    await record_sns_message(session, message=message, outcome=SnsOutcome.CONFIRMED)
    log.info(
        "SNS subscription confirmed",
        extra={"event": "sns_subscription_confirmed", "topic_arn": message["TopicArn"]},
    )
    return SnsOutcome.CONFIRMED


async def record_unsubscribe_confirmation(
    session: AsyncSession, *, message: Mapping[str, Any]
) -> SnsOutcome:
    # Recorded, never followed: fetching its SubscribeURL would subscribe us again.
    if not await record_sns_message(session, message=message, outcome=SnsOutcome.RECORDED):
        return SnsOutcome.DUPLICATE
    log.warning(
        "SNS says the subscription was removed; SES feedback stops arriving",
        extra={"event": "sns_unsubscribed", "topic_arn": message["TopicArn"]},
    )
    return SnsOutcome.RECORDED


# -- notifications --------------------------------------------------------------------------


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


async def apply_notification(
    session: AsyncSession, *, message: Mapping[str, Any], settings: Settings, now: datetime
) -> SnsOutcome:
    """Apply one verified Notification, once per SNS MessageId."""
    event = read_ses_event(message["Message"])
    outcome = SnsOutcome.APPLIED if event is not None else SnsOutcome.IGNORED
    if not await record_sns_message(session, message=message, outcome=outcome):
        return SnsOutcome.DUPLICATE
    if event is None:
        log.info(
            "SNS notification is not SES feedback we act on; ignored",
            extra={"sns_message_id": message["MessageId"], "topic_arn": message["TopicArn"]},
        )
        return SnsOutcome.IGNORED
    applied = await apply_event(
        session,
        event=event,
        sns_message_id=message["MessageId"],
        secret=settings.address_hash_secret.get_secret_value(),
        now=now,
    )
    return SnsOutcome.APPLIED if applied else SnsOutcome.DUPLICATE


def event_cause(event: SesEvent, *, sns_message_id: str) -> str:
    """How the audit trail and the message history name this event."""
    cause = f"sns:{sns_message_id}"
    return f"{cause} feedback:{event.feedback_id}" if event.feedback_id else cause


async def apply_event(
    session: AsyncSession, *, event: SesEvent, sns_message_id: str, secret: str, now: datetime
) -> bool:
    """Apply the rules to every recipient the event names, then to its message.

    False when it was a repeat of a soft bounce already counted (same SES feedbackId).
    """
    cause = event_cause(event, sns_message_id=sns_message_id)
    # One entry per address (Taro@ and taro@ are one recipient), in lock order.
    targets: dict[bytes, str] = {}
    for address in event.recipients:
        targets.setdefault(address_hash(address, secret=secret), address)
    hashes = sorted(targets)

    counts: dict[bytes, int] = {}
    if event.is_soft_bounce or event.kind is EventKind.DELIVERY:
        for hashed in hashes:
            counts[hashed] = await recipients.lock_soft_bounce_count(
                session,
                address_hash=hashed,
                address=targets[hashed] if event.is_soft_bounce else None,
            )
        # Checked under the locks, so a concurrent repeat waits and then sees the first.
        if (
            event.is_soft_bounce
            and event.feedback_id
            and await recipients.soft_bounce_seen(
                session, address_hashes=hashes, feedback_id=event.feedback_id
            )
        ):
            log.info(
                "soft bounce already counted (same feedbackId)",
                extra={"sns_message_id": sns_message_id, "feedback_id": event.feedback_id},
            )
            return False

    decisions: dict[bytes, rules.Decision] = {}
    for hashed in hashes:
        decision = rules.decide(event, soft_bounce_count=counts.get(hashed, 0))
        decisions[hashed] = decision
        await _apply_to_address(
            session, event=event, address_hash=hashed, decision=decision, cause=cause
        )
        if decision.suppress is not None or decision.soft_bounce_count:
            log.info(
                "SES feedback applied to an address",
                extra={
                    "event": event.kind.value,
                    "to": mask_address(targets[hashed]),
                    "suppressed": decision.suppress,
                    "soft_bounce_count": decision.soft_bounce_count,
                    "sns_message_id": sns_message_id,
                },
            )

    message = await _find_message(session, event)
    if message is not None:
        await _apply_to_message(
            session, event=event, message=message, decisions=decisions, cause=cause, now=now
        )
    return True


async def _apply_to_address(
    session: AsyncSession,
    *,
    event: SesEvent,
    address_hash: bytes,
    decision: rules.Decision,
    cause: str,
) -> None:
    detail = _address_detail(event)
    if decision.soft_bounce_count is not None:
        count = decision.soft_bounce_count
        await recipients.set_soft_bounce_count(
            session,
            address_hash=address_hash,
            count=count,
            cause=cause,
            detail=f"{detail}; {count} of {rules.SOFT_BOUNCE_LIMIT}" if count else detail,
        )
    if decision.suppress is not None:
        await recipients.suppress(
            session,
            address_hash=address_hash,
            reason=decision.suppress,
            cause=cause,
            detail=detail,
        )


async def _find_message(session: AsyncSession, event: SesEvent) -> Message | None:
    """The message by SES MessageId, else by the tegami_id tag (the event beat the worker's
    record of the SES MessageId). Locked: the worker may be recording it right now."""
    found = (
        await session.execute(
            select(Message).where(Message.ses_message_id == event.ses_message_id).with_for_update()
        )
    ).scalar_one_or_none()
    if found is not None:
        return found
    for tag in event.tags.get("tegami_id", ()):
        try:
            message_id = uuid.UUID(tag)
        except ValueError:
            continue
        found = (
            await session.execute(select(Message).where(Message.id == message_id).with_for_update())
        ).scalar_one_or_none()
        if found is not None:
            return found
    return None


async def _apply_to_message(
    session: AsyncSession,
    *,
    event: SesEvent,
    message: Message,
    decisions: Mapping[bytes, rules.Decision],
    cause: str,
    now: datetime,
) -> None:
    session.add(
        MessageEvent(
            message_id=message.id, kind=event.kind.value, detail=_event_detail(event), cause=cause
        )
    )
    if message.ses_message_id is None:
        message.ses_message_id = event.ses_message_id
    elif message.ses_message_id != event.ses_message_id:
        # About an earlier send of this message (it was sent again since): history only.
        return
    recipient_hash = (
        await session.execute(
            select(Recipient.address_hash).where(Recipient.id == message.recipient_id)
        )
    ).scalar_one()
    decision = decisions.get(recipient_hash)
    if decision is None:  # the event does not name the message's own recipient
        decision = rules.decide(event, soft_bounce_count=0)
    change = rules.message_change(
        decision, status=MessageStatus(message.status), expires_at=message.expires_at, now=now
    )
    if change is None:
        return
    message.status = change.status
    message.updated_at = now
    if change.next_attempt_at is not None:
        message.next_attempt_at = change.next_attempt_at
        session.add(
            MessageEvent(
                message_id=message.id,
                kind="resend_scheduled",
                detail=f"soft bounce: sent again at {change.next_attempt_at.isoformat()}",
                cause=cause,
            )
        )
    elif change.status in (MessageStatus.FAILED, MessageStatus.BOUNCED):
        message.last_error = _event_detail(event)


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
