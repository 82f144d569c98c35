"""What may happen to a mail next: every status change and history line, as pure decisions.

No I/O: the worker, SES feedback, the reputation guard, operators, the API's cancel and the
erasure ask a rule here for a ``Transition`` and hand it to the outbox (``outbox.apply``),
which writes the status, the history line and the app's ``email.*`` event in one statement.
A new status or history event starts here, where a pure test fails first
(tests/emails/test_lifecycle.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final, Protocol

from app.emails.scheduling import QuietHours, after_quiet_hours
from app.models import CANCELLABLE_STATUSES, Category, MessageStatus
from app.recipients.rules import Decision, Feedback
from app.retry import backoff
from app.webhooks.events import EventType


class Event(StrEnum):
    """The kinds of a mail's history lines (``message_event.kind``)."""

    ACCEPTED = "accepted"
    # The worker's outcomes
    SENT = "sent"
    SEND_RETRY = "send_retry"
    SEND_PAUSED = "send_paused"
    SEND_FAILED = "send_failed"
    GAVE_UP = "gave_up"
    EXPIRED = "expired"
    BLOCKED = "blocked"
    # The reputation guard, operators, the app
    HELD = "held"
    RELEASED = "released"
    DISCARDED = "discarded"
    CANCELLED = "cancelled"
    # SES feedback on a sent mail (by value, app.sns.events.EventKind), and what it caused
    SEND = "send"
    DELIVERY = "delivery"
    DELIVERY_DELAY = "delivery_delay"
    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    REJECT = "reject"
    RENDERING_FAILURE = "rendering_failure"
    OPEN = "open"
    CLICK = "click"
    SUBSCRIPTION = "subscription"
    RESEND_SCHEDULED = "resend_scheduled"


# -- retry policy after an SES error (the backoff itself is app.retry's) --------------------

# Mail without a link lifetime is tried for a day at most (the operator's window to mend an
# account SES paused), then failed with the last error.
MAX_RETRY_AGE: Final = timedelta(hours=24)
# Backoff cap: once SES is back, every waiting mail goes out within this (plus jitter).
MAX_BACKOFF_SECONDS: Final = 30.0
FIRST_BACKOFF_SECONDS: Final = 1.0
# A soft-bounced mail is sent again after this wait (SES has already retried for a while).
RESEND_DELAY: Final = timedelta(minutes=5)

# -- detail strings --------------------------------------------------------------------------

EXPIRED_DETAIL: Final = "the link expired"
ERASED: Final = "recipient erased"
HELD_DETAIL: Final = "bounce or complaint rate over SES's review level"
RELEASED_DETAIL: Final = "rates back under the review level"
RELEASED_BY_OPERATOR: Final = "released by an operator"
DISCARDED_DETAIL: Final = "discarded by an operator"
CANCELLED_DETAIL: Final = "cancelled through the API"
TEST_SENT_DETAIL: Final = "test key: rendered, not handed to SES"
GAVE_UP_DETAIL: Final = "not sent in 24h"


@dataclass(frozen=True)
class Line:
    """One line of a mail's history."""

    event: Event
    detail: str | None = None
    # SES feedback as data (the reputation watch counts hard bounces and complaints by it).
    feedback: Feedback | None = None


@dataclass(frozen=True)
class Report:
    """What SES said about a sent mail (app.sns.events reads it from SES's payload)."""

    event: Event
    feedback: Feedback
    ses_message_id: str
    ses_type: str | None = None  # bounceType, or complaintFeedbackType
    ses_subtype: str | None = None  # bounceSubType
    diagnostic: str | None = None

    @property
    def summary(self) -> str:
        """Types only, never diagnostic text (the audit trail's detail says this)."""
        if self.event is Event.BOUNCE:
            return f"bounce {self.ses_type}/{self.ses_subtype or '-'}"
        if self.event is Event.COMPLAINT:
            return f"complaint {self.ses_type or '-'}"
        return self.event.value

    @property
    def detail(self) -> str | None:
        """The history line's detail: the summary and SES's text."""
        if self.event in (Event.BOUNCE, Event.COMPLAINT):
            return f"{self.summary}: {self.diagnostic}" if self.diagnostic else self.summary
        return self.diagnostic

    @property
    def webhook(self) -> EventType | None:
        return _FEEDBACK_WEBHOOKS.get(self.event)

    @property
    def for_app(self) -> tuple[str | None, str | None, str | None]:
        """The event's SES fields (``ses_type``, ``ses_subtype``, ``diagnostic``): bounces
        carry all three, complaints their type, others none."""
        if self.event is Event.BOUNCE:
            return self.ses_type, self.ses_subtype, self.diagnostic
        if self.event is Event.COMPLAINT:
            return self.ses_type, None, None
        return None, None, None


# The event the app hears of, by SES event.
_FEEDBACK_WEBHOOKS: Final = {
    Event.DELIVERY: EventType.EMAIL_DELIVERED,
    Event.DELIVERY_DELAY: EventType.EMAIL_DELIVERY_DELAYED,
    Event.BOUNCE: EventType.EMAIL_BOUNCED,
    Event.COMPLAINT: EventType.EMAIL_COMPLAINED,
    Event.REJECT: EventType.EMAIL_FAILED,
    Event.RENDERING_FAILURE: EventType.EMAIL_FAILED,
}


@dataclass(frozen=True)
class Transition:
    """One change of a mail: its new status (None: it stays), the history line, and the
    ``email.*`` event the app hears of (None: not news, a retry say)."""

    status: MessageStatus | None
    event: Event
    detail: str | None = None
    webhook: EventType | None = None
    # When it is due again: at this time, or ``retry_in`` seconds after the database's now();
    # neither: as it was.
    next_attempt_at: datetime | None = None
    retry_in: float | None = None
    # The error kept on the mail: None keeps the one it had, unless ``clears_error``.
    last_error: str | None = None
    clears_error: bool = False
    # The link params (tokens) go: the mail will never be sent.
    drops_params: bool = False
    # SES's MessageId for the mail (recorded unless it has one).
    ses_message_id: str | None = None
    # The statuses it may leave (checked again as the row is written); None: any.
    leaves: frozenset[MessageStatus] | None = None
    # SES's feedback, when the change is about it (its line's data, the event's SES fields).
    report: Report | None = None
    # A second history line (a soft bounce's resend_scheduled).
    then: Line | None = None
    # Why a mail was not sent, in a word from a small set (an SES error code, suppressed,
    # opted_out, render, ...): the metrics' label.
    why: str | None = None

    @property
    def taken_by_ses(self) -> bool:
        """SES took the mail (a test key's mail is `sent` without SES ever seeing it)."""
        return self.status is MessageStatus.SENT and self.ses_message_id is not None

    @property
    def lines(self) -> tuple[Line, ...]:
        first = Line(self.event, self.detail, self.report.feedback if self.report else None)
        return (first,) if self.then is None else (first, self.then)


# -- the worker -----------------------------------------------------------------------------

_SENDING: Final = frozenset({MessageStatus.SENDING})


@dataclass(frozen=True)
class Standing:
    """What holds for a claimed mail right before SendEmail (read by the outbox, judged by
    the database's clock)."""

    expires_at: datetime | None
    last_error: str | None
    erased: bool
    suppressed: str | None
    opted_out: bool
    expired: bool = False  # the link expired
    too_old: bool = False  # past its retry age


# What the app hears of a mail the worker stopped (a retry is not news).
_STOPPED_WEBHOOKS: Final = {
    MessageStatus.FAILED: EventType.EMAIL_FAILED,
    MessageStatus.EXPIRED: EventType.EMAIL_EXPIRED,
    MessageStatus.HELD: EventType.EMAIL_HELD,
}


def _stopped(status: MessageStatus, event: Event, detail: str, *, why: str) -> Transition:
    return Transition(
        status,
        event,
        detail,
        webhook=_STOPPED_WEBHOOKS[status],
        last_error=detail,
        leaves=_SENDING,
        why=why,
    )


def before_send(
    standing: Standing, *, category: Category, has_content: bool, held: bool
) -> Transition | None:
    """The rules as they stand right before SendEmail: a result without sending (expired,
    suppressed, opted out, erased, held, given up), or None to send."""
    failed, blocked = MessageStatus.FAILED, Event.BLOCKED
    if standing.expired:
        return _stopped(MessageStatus.EXPIRED, Event.EXPIRED, EXPIRED_DETAIL, why="expired")
    if standing.suppressed is not None:
        detail = f"suppressed: {standing.suppressed}"
        return _stopped(failed, blocked, detail, why="suppressed")
    if standing.opted_out and category.optional:
        return _stopped(failed, blocked, f"opted_out: {category}", why="opted_out")
    if standing.erased or not has_content:
        return _stopped(failed, blocked, ERASED, why=ERASED)
    if held:
        return _stopped(MessageStatus.HELD, Event.HELD, HELD_DETAIL, why="held")
    if standing.expires_at is None and standing.too_old:
        detail = standing.last_error or GAVE_UP_DETAIL
        return _stopped(failed, Event.GAVE_UP, detail, why="gave_up")
    return None


def sent(ses_message_id: str) -> Transition:
    """SES took the mail (the history line names SES's MessageId)."""
    return Transition(
        MessageStatus.SENT,
        Event.SENT,
        ses_message_id,
        webhook=EventType.EMAIL_SENT,
        clears_error=True,
        ses_message_id=ses_message_id,
        leaves=_SENDING,
    )


def sent_as_test() -> Transition:
    """A test key's mail: rendered, recorded as sent, never handed to SES."""
    return Transition(
        MessageStatus.SENT,
        Event.SENT,
        TEST_SENT_DETAIL,
        webhook=EventType.EMAIL_SENT,
        clears_error=True,
        leaves=_SENDING,
    )


def render_failed(reason: str) -> Transition:
    return _stopped(MessageStatus.FAILED, Event.SEND_FAILED, f"render: {reason}", why="render")


def backoff_seconds(attempt: int) -> float:
    """After an SES error: from 1 s, doubling, capped, with jitter (app.retry)."""
    return backoff(attempt, first=FIRST_BACKOFF_SECONDS, cap=MAX_BACKOFF_SECONDS)


def retry_deadline(*, expires_at: datetime | None, created_at: datetime) -> datetime:
    return expires_at or created_at + MAX_RETRY_AGE


class ClaimedMail(Protocol):
    """The claimed mail an SES error is about (app.emails.outbox.Claimed)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def category(self) -> Category: ...
    @property
    def expires_at(self) -> datetime | None: ...
    @property
    def created_at(self) -> datetime: ...  # when it was first due (a scheduled mail's send time)


def after_error(
    mail: ClaimedMail,
    *,
    code: str,
    message: str,
    about_the_mail: bool,
    about_the_account: bool,
    attempt: int,
    now: datetime,
    quiet: QuietHours | None,
) -> Transition:
    """After SES refused a send: failed (about the mail), queued again after a backoff (at
    once while sending is paused for the account: the gate stops every worker until a probe
    gets through), given up past the retry deadline, or, for optional mail whose retry falls
    in quiet hours, scheduled for their end. (app.emails.sender says what an error is about:
    the mail, the account, or neither, a throttle or an outage.)"""
    reason = f"{code}: {message}"[:1000]
    if about_the_mail:
        return _stopped(MessageStatus.FAILED, Event.SEND_FAILED, reason, why=code)
    event = Event.SEND_PAUSED if about_the_account else Event.SEND_RETRY
    wait = 0.0 if about_the_account else backoff_seconds(attempt)
    next_attempt = now + timedelta(seconds=wait)
    # (the pre-send check judges the deadline exactly)
    if next_attempt >= retry_deadline(expires_at=mail.expires_at, created_at=mail.created_at):
        status = MessageStatus.EXPIRED if mail.expires_at else MessageStatus.FAILED
        return _stopped(status, Event.GAVE_UP, reason, why=code)
    if mail.category.optional:
        after = after_quiet_hours(next_attempt, message_id=mail.id, quiet=quiet)
        if after is not None:
            detail = f"{reason} (quiet hours: next attempt at {after.isoformat()})"
            return Transition(
                MessageStatus.SCHEDULED,
                event,
                detail,
                next_attempt_at=after,
                last_error=detail,
                leaves=_SENDING,
            )
    detail = (
        f"{reason} (sending paused)" if wait == 0 else f"{reason} (next attempt in {wait:.1f}s)"
    )
    return Transition(
        MessageStatus.QUEUED, event, detail, retry_in=wait, last_error=detail, leaves=_SENDING
    )


# -- SES feedback -----------------------------------------------------------------------------

# Feedback settles a message's status in this order; a later event never moves it back
# (a late Delivery does not un-bounce a message). Pending statuses rank lowest.
_RANK: Final[dict[MessageStatus, int]] = {
    MessageStatus.QUEUED: 0,
    MessageStatus.SENDING: 0,
    MessageStatus.SENT: 0,
    MessageStatus.DELIVERED: 1,
    MessageStatus.BOUNCED: 2,
    MessageStatus.FAILED: 2,
    MessageStatus.COMPLAINED: 3,
}
# Only a mail SES has (or is being) handed can be sent again after a soft bounce.
_RESENDABLE: Final = frozenset({MessageStatus.SENDING, MessageStatus.SENT})


def next_status(current: MessageStatus, proposed: MessageStatus) -> MessageStatus | None:
    """The status feedback moves a message to, or None when it stays (out-of-order events)."""
    current_rank = _RANK.get(current)
    if current_rank is None:  # held or expired: never handed to SES, feedback cannot move it
        return None
    return proposed if _RANK[proposed] > current_rank else None


class SentMail(Protocol):
    """The mail SES's feedback is about (app.emails.outbox.FeedbackTarget)."""

    @property
    def status(self) -> MessageStatus: ...
    @property
    def expires_at(self) -> datetime | None: ...
    @property
    def ses_message_id(self) -> str | None: ...  # its latest send's; None: not recorded yet


def after_feedback(
    report: Report, decision: Decision, *, mail: SentMail, now: datetime
) -> Transition:
    """What SES's feedback does to a mail: always a history line; a new status when
    ``decision`` (the rules for its recipient) moves it, unless the event is about an
    earlier send of a mail sent again since; sent again after a soft bounce."""
    status, expires_at = mail.status, mail.expires_at
    noted = Transition(
        None,
        report.event,
        report.detail,
        webhook=report.webhook,
        ses_message_id=report.ses_message_id,
        report=report,
    )
    if mail.ses_message_id not in (None, report.ses_message_id) or not decision.message_status:
        return noted
    if decision.resend:
        if status is MessageStatus.QUEUED:
            return noted  # already going out again (the same soft bounce, reported twice)
        when = now + RESEND_DELAY
        if status in _RESENDABLE and (expires_at is None or when < expires_at):
            resend = Line(Event.RESEND_SCHEDULED, f"soft bounce: sent again at {when.isoformat()}")
            return Transition(
                MessageStatus.QUEUED,
                report.event,
                report.detail,
                webhook=report.webhook,
                next_attempt_at=when,
                ses_message_id=report.ses_message_id,
                report=report,
                then=resend,
            )
    new = next_status(status, decision.message_status)
    if new is None:
        return noted
    failed = new in (MessageStatus.FAILED, MessageStatus.BOUNCED)
    return Transition(
        new,
        report.event,
        report.detail,
        webhook=report.webhook,
        last_error=report.detail if failed else None,
        ses_message_id=report.ses_message_id,
        report=report,
    )


# -- the reputation guard, operators, the app, erasure ----------------------------------------


def hold() -> Transition:
    """Optional mail waits while the bounce or complaint rate is over SES's review level."""
    return Transition(
        MessageStatus.HELD,
        Event.HELD,
        HELD_DETAIL,
        webhook=EventType.EMAIL_HELD,
        leaves=frozenset({MessageStatus.QUEUED}),
    )


def release(*, by_operator: bool) -> Transition:
    """Held mail back to the queue, due now (not news to the app)."""
    return Transition(
        MessageStatus.QUEUED,
        Event.RELEASED,
        RELEASED_BY_OPERATOR if by_operator else RELEASED_DETAIL,
        retry_in=0.0,
        leaves=frozenset({MessageStatus.HELD}),
    )


def discard() -> Transition:
    """Held mail an operator decided is never sent."""
    return Transition(
        MessageStatus.FAILED,
        Event.DISCARDED,
        DISCARDED_DETAIL,
        webhook=EventType.EMAIL_FAILED,
        last_error=DISCARDED_DETAIL,
        drops_params=True,
        leaves=frozenset({MessageStatus.HELD}),
    )


def cancel() -> Transition:
    """The app stops a mail not yet handed to SES."""
    return Transition(
        MessageStatus.CANCELLED,
        Event.CANCELLED,
        CANCELLED_DETAIL,
        webhook=EventType.EMAIL_CANCELLED,
        leaves=frozenset(CANCELLABLE_STATUSES),
    )


def erase() -> Transition:
    """Mail not yet claimed whose recipient is erased: never sent (the worker's check stops
    one claimed already)."""
    return Transition(
        MessageStatus.FAILED,
        Event.BLOCKED,
        ERASED,
        webhook=EventType.EMAIL_FAILED,
        last_error=ERASED,
        leaves=frozenset({MessageStatus.QUEUED, MessageStatus.SCHEDULED}),
    )
