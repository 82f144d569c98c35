"""Applying one verified SES notification: once per SNS MessageId, then DESIGN's rules.

Parse (``app.sns.events``) → claim the MessageId (``app.sns.service``) → the rules per address
(``app.recipients.rules``) and the mail's transition (``app.emails.lifecycle``) → one statement
composed from the owners' fragments: on this hot path a round trip costs more than the work.
Soft bounces, and deliveries that reset a count, lock the recipients (in hash order, then the
message): concurrent feedback for one address counts one after the other, without deadlock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from app.db import compose, generic_plan_transaction
from app.emails import lifecycle, outbox
from app.recipients import rules
from app.recipients import service as recipients
from app.sns import service as sns
from app.sns.events import EventKind, SesEvent, read_ses_event
from app.sns.service import SnsOutcome
from app.webhooks import deliveries as webhooks

# Everything an event changes, composed (and checked) at import; with TEGAMI_WEBHOOK_URL set,
# the app's events (email.bounced, recipient.suppressed, ...) too.
_WRITE = compose(recipients.DECISIONS, outbox.FEEDBACK, select="SELECT 1")
_WRITE_WITH_EVENTS = compose(
    recipients.DECISIONS,
    outbox.FEEDBACK_WITH_EVENTS,
    webhooks.email_events(),
    webhooks.SUPPRESSED_EVENTS,
    select="SELECT 1",
)


@dataclass(frozen=True)
class _Feedback:
    event: SesEvent
    message: Mapping[str, Any]  # the SNS notification
    addresses: dict[bytes, str]  # by hash, in lock order
    now: datetime


class _NeedsRecipientLocks(Exception):
    """Raised inside the fast path's transaction to roll it back and take the locked path."""


async def apply_notification(
    connection: asyncpg.Connection,
    *,
    message: Mapping[str, Any],
    secret: str,
    now: datetime,
    on_reputation_event: Callable[[], None] | None = None,
) -> SnsOutcome:
    """Apply one verified Notification, once per SNS MessageId, on asyncpg's connection
    outside any transaction; committed when it returns. ``on_reputation_event``: called once
    a hard bounce or a complaint (they move the rates SES reviews) is committed."""
    event = read_ses_event(message["Message"])
    if event is None:
        return await sns.record_ignored(connection, message=message)
    feedback = _Feedback(event, message, event.addresses(secret=secret), now)
    outcome = None
    if not event.is_soft_bounce:
        try:
            async with generic_plan_transaction(connection):
                outcome = await _unlocked(connection, feedback)
        except _NeedsRecipientLocks:
            pass  # rolled back: nothing of it was kept
    if outcome is None:
        async with generic_plan_transaction(connection):
            outcome = await _locked(connection, feedback)
    moves_rates = event.kind is EventKind.COMPLAINT or event.is_hard_bounce
    if outcome is SnsOutcome.APPLIED and on_reputation_event is not None and moves_rates:
        on_reputation_event()
    return outcome


async def _unlocked(connection: asyncpg.Connection, feedback: _Feedback) -> SnsOutcome:
    """Events that change no soft-bounce count: claim and find; write. A Delivery whose
    addresses read 0 (no soft bounce committed: it is ordered before any in flight) too."""
    event = feedback.event
    claimed = await sns.claim_and_find(
        connection,
        message=feedback.message,
        hashes=list(feedback.addresses),
        ses_message_id=event.ses_message_id,
        tagged_ids=event.tagged_ids,
    )
    if claimed is None:
        return SnsOutcome.DUPLICATE
    if event.kind is EventKind.DELIVERY and claimed.highest_soft_bounce_count > 0:
        raise _NeedsRecipientLocks
    target = outbox.FeedbackTarget.of(claimed.message) if claimed.message is not None else None
    await _write(connection, feedback, dict.fromkeys(feedback.addresses, 0), target)
    return SnsOutcome.APPLIED


async def _locked(connection: asyncpg.Connection, feedback: _Feedback) -> SnsOutcome:
    """Soft bounces, and Deliveries that reset a count. DUPLICATE also for a soft bounce
    counted already (same feedbackId: checked under the locks, so a repeat sees the first)."""
    event, message, hashes = feedback.event, feedback.message, list(feedback.addresses)
    if not await sns.record_sns_message(connection, message=message, outcome=SnsOutcome.APPLIED):
        return SnsOutcome.DUPLICATE
    counts = await recipients.lock_soft_bounce_counts(
        connection, addresses=feedback.addresses, create=event.is_soft_bounce
    )
    if event.is_soft_bounce and await recipients.soft_bounce_seen(
        connection, hashes=hashes, feedback_id=event.feedback_id
    ):
        return SnsOutcome.DUPLICATE
    target = await outbox.find_for_feedback(
        connection, ses_message_id=event.ses_message_id, tagged_ids=event.tagged_ids
    )
    await _write(connection, feedback, counts, target)
    return SnsOutcome.APPLIED


async def _write(
    connection: asyncpg.Connection,
    feedback: _Feedback,
    counts: Mapping[bytes, int],
    target: outbox.FeedbackTarget | None,
) -> None:
    """The rules for each address (in lock order) and the mail's transition; one write."""
    event, report = feedback.event, feedback.event.report
    decisions = {
        hashed: rules.decide(event.feedback, soft_bounce_count=counts.get(hashed, 0))
        for hashed in feedback.addresses
    }
    cause = event.cause(sns_message_id=feedback.message["MessageId"])
    values = recipients.decision_values(
        decisions, addresses=feedback.addresses, cause=cause, detail=report.summary
    )
    if target is None and not recipients.changes_anything(values):
        return
    transition = None
    if target is not None:
        # The mail's own recipient; an event that does not name it judges it alone.
        own = decisions.get(target.address_hash)
        if own is None:
            own = rules.decide(event.feedback, soft_bounce_count=0)
        transition = lifecycle.after_feedback(report, own, mail=target, now=feedback.now)
    values |= outbox.feedback_values(target, transition, cause=cause)
    statement = _WRITE_WITH_EVENTS if webhooks.enabled() else _WRITE
    await connection.execute(statement.sql, *statement.args(values))
