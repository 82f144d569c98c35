"""What may happen to a mail next (app.emails.lifecycle): pure, no database, no SES."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from app.emails import lifecycle
from app.emails.lifecycle import (
    Event,
    Line,
    Report,
    Standing,
    Transition,
    after_feedback,
    next_status,
)
from app.models import Category, MessageStatus
from app.recipients import rules
from app.recipients.rules import Decision, Feedback
from app.sns.events import EventKind
from app.webhooks.events import EventType

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_every_ses_event_has_a_history_kind() -> None:
    assert {kind.value for kind in EventKind} <= {event.value for event in Event}


# -- right before SendEmail ------------------------------------------------------------------


def standing(**fields: object) -> Standing:
    base: dict[str, object] = {
        "expires_at": None,
        "last_error": None,
        "erased": False,
        "suppressed": None,
        "opted_out": False,
    }
    return Standing(**(base | fields))  # type: ignore[arg-type]


def before_send(
    facts: Standing, category: Category = Category.MATCHING, **kw: bool
) -> Transition | None:
    return lifecycle.before_send(
        facts,
        category=category,
        has_content=kw.get("has_content", True),
        held=kw.get("held", False),
    )


def test_a_mail_that_nothing_stops_is_sent() -> None:
    assert before_send(standing()) is None


@pytest.mark.parametrize(
    ("facts", "status", "event", "detail", "webhook"),
    [
        (
            standing(expired=True),
            MessageStatus.EXPIRED,
            Event.EXPIRED,
            "the link expired",
            EventType.EMAIL_EXPIRED,
        ),
        (
            standing(suppressed="complaint"),
            MessageStatus.FAILED,
            Event.BLOCKED,
            "suppressed: complaint",
            EventType.EMAIL_FAILED,
        ),
        (
            standing(opted_out=True),
            MessageStatus.FAILED,
            Event.BLOCKED,
            "opted_out: matching",
            EventType.EMAIL_FAILED,
        ),
        (
            standing(erased=True),
            MessageStatus.FAILED,
            Event.BLOCKED,
            "recipient erased",
            EventType.EMAIL_FAILED,
        ),
        (
            standing(too_old=True, last_error="Throttling: slow down"),
            MessageStatus.FAILED,
            Event.GAVE_UP,
            "Throttling: slow down",
            EventType.EMAIL_FAILED,
        ),
    ],
)
def test_what_stops_a_mail_before_sending(
    facts: Standing, status: MessageStatus, event: Event, detail: str, webhook: EventType
) -> None:
    stopped = before_send(facts)
    assert stopped is not None
    assert (stopped.status, stopped.event, stopped.detail) == (status, event, detail)
    assert stopped.webhook is webhook
    assert stopped.last_error == detail
    assert stopped.leaves == frozenset({MessageStatus.SENDING})


def test_expiry_comes_before_everything_else() -> None:
    stopped = before_send(standing(expired=True, suppressed="hard_bounce", erased=True))
    assert stopped is not None and stopped.status is MessageStatus.EXPIRED


def test_opt_out_does_not_stop_account_mail() -> None:
    assert before_send(standing(opted_out=True), Category.ACCOUNT) is None


def test_a_mail_without_its_address_or_params_is_not_sent() -> None:
    stopped = before_send(standing(), has_content=False)
    assert stopped is not None and stopped.detail == lifecycle.ERASED


def test_the_guard_holds_optional_mail() -> None:
    held = before_send(standing(), held=True)
    assert held is not None
    assert (held.status, held.event, held.webhook) == (
        MessageStatus.HELD,
        Event.HELD,
        EventType.EMAIL_HELD,
    )


def test_a_mail_with_a_link_is_never_given_up_by_age_only_by_expiry() -> None:
    assert before_send(standing(too_old=True, expires_at=NOW)) is None


def test_given_up_without_an_error_says_the_day_passed() -> None:
    stopped = before_send(standing(too_old=True))
    assert stopped is not None and stopped.detail == "not sent in 24h"


# -- sent, and after an SES error -------------------------------------------------------------


def test_sent_records_the_ses_message_id_and_clears_the_error() -> None:
    sent = lifecycle.sent("0100-abc")
    assert sent.status is MessageStatus.SENT and sent.detail == "0100-abc"
    assert sent.clears_error and sent.taken_by_ses
    assert sent.webhook is EventType.EMAIL_SENT


def test_a_test_keys_mail_is_sent_without_ses() -> None:
    sent = lifecycle.sent_as_test()
    assert sent.status is MessageStatus.SENT and not sent.taken_by_ses


@dataclass(frozen=True)
class Mail:
    id: uuid.UUID
    category: Category
    expires_at: datetime | None
    created_at: datetime


def after_error(
    mail: Mail, *, attempt: int = 1, mail_error: bool = False, account: bool = False
) -> Transition:
    return lifecycle.after_error(
        mail,
        code="Throttling",
        message="slow down",
        about_the_mail=mail_error,
        about_the_account=account,
        attempt=attempt,
        now=NOW,
        quiet=None,
    )


ACCOUNT_MAIL = Mail(uuid.uuid4(), Category.ACCOUNT, None, NOW)


def test_an_error_about_the_mail_fails_it() -> None:
    failed = after_error(ACCOUNT_MAIL, mail_error=True)
    assert (failed.status, failed.event, failed.detail) == (
        MessageStatus.FAILED,
        Event.SEND_FAILED,
        "Throttling: slow down",
    )
    assert failed.why == "Throttling"


def test_a_retry_waits_a_capped_backoff_and_is_not_news() -> None:
    for attempt in (1, 3, 20):
        retry = after_error(ACCOUNT_MAIL, attempt=attempt)
        assert retry.status is MessageStatus.QUEUED and retry.event is Event.SEND_RETRY
        assert retry.retry_in is not None
        assert 0 < retry.retry_in <= lifecycle.MAX_BACKOFF_SECONDS
        assert retry.webhook is None


def test_an_error_about_the_account_waits_for_the_pause_not_a_backoff() -> None:
    paused = after_error(ACCOUNT_MAIL, account=True)
    assert (paused.status, paused.event, paused.retry_in) == (
        MessageStatus.QUEUED,
        Event.SEND_PAUSED,
        0.0,
    )
    assert paused.detail == "Throttling: slow down (sending paused)"


def test_a_mail_past_its_retry_age_is_given_up() -> None:
    old = Mail(uuid.uuid4(), Category.ACCOUNT, None, NOW - lifecycle.MAX_RETRY_AGE)
    given_up = after_error(old)
    assert (given_up.status, given_up.event) == (MessageStatus.FAILED, Event.GAVE_UP)


def test_a_link_that_expires_before_the_retry_expires_the_mail() -> None:
    expiring = Mail(uuid.uuid4(), Category.ACCOUNT, NOW + timedelta(milliseconds=1), NOW)
    expired = after_error(expiring, attempt=5)
    assert (expired.status, expired.webhook) == (MessageStatus.EXPIRED, EventType.EMAIL_EXPIRED)


# -- SES feedback: out-of-order events never move a status back ------------------------------


@pytest.mark.parametrize(
    ("current", "proposed", "expected"),
    [
        (MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.DELIVERED),
        (MessageStatus.SENDING, MessageStatus.BOUNCED, MessageStatus.BOUNCED),
        (MessageStatus.DELIVERED, MessageStatus.BOUNCED, MessageStatus.BOUNCED),
        (MessageStatus.DELIVERED, MessageStatus.COMPLAINED, MessageStatus.COMPLAINED),
        (MessageStatus.BOUNCED, MessageStatus.DELIVERED, None),
        (MessageStatus.COMPLAINED, MessageStatus.DELIVERED, None),
        (MessageStatus.COMPLAINED, MessageStatus.BOUNCED, None),
        (MessageStatus.FAILED, MessageStatus.DELIVERED, None),
        (MessageStatus.DELIVERED, MessageStatus.DELIVERED, None),
        (MessageStatus.HELD, MessageStatus.DELIVERED, None),
        (MessageStatus.EXPIRED, MessageStatus.BOUNCED, None),
    ],
)
def test_next_status(
    current: MessageStatus, proposed: MessageStatus, expected: MessageStatus | None
) -> None:
    assert next_status(current, proposed) is expected


SOFT = Decision(soft_bounce_count=1, message_status=MessageStatus.BOUNCED, resend=True)
SOFT_BOUNCE = Report(
    Event.BOUNCE,
    Feedback.SOFT_BOUNCE,
    "0100-abc",
    ses_type="Transient",
    ses_subtype="General",
    diagnostic="452 mailbox full",
)
DELIVERED = Report(Event.DELIVERY, Feedback.DELIVERY, "0100-abc")


def feedback(
    decision: Decision,
    status: MessageStatus,
    expires_at: datetime | None = None,
    report: Report = SOFT_BOUNCE,
    sent_as: str | None = "0100-abc",
) -> Transition:
    mail = Sent(status, expires_at, sent_as)
    return after_feedback(report, decision, mail=mail, now=NOW)


@dataclass(frozen=True)
class Sent:
    status: MessageStatus
    expires_at: datetime | None
    ses_message_id: str | None


def test_soft_bounced_message_is_queued_again_after_the_delay() -> None:
    change = feedback(SOFT, MessageStatus.SENT)
    assert change.status is MessageStatus.QUEUED
    assert change.next_attempt_at == NOW + lifecycle.RESEND_DELAY
    when = (NOW + lifecycle.RESEND_DELAY).isoformat()
    assert change.lines == (
        Line(Event.BOUNCE, "bounce Transient/General: 452 mailbox full", Feedback.SOFT_BOUNCE),
        Line(Event.RESEND_SCHEDULED, f"soft bounce: sent again at {when}"),
    )
    assert change.last_error is None
    assert change.webhook is EventType.EMAIL_BOUNCED


def test_soft_bounced_message_that_would_expire_first_is_bounced() -> None:
    expires = NOW + lifecycle.RESEND_DELAY - timedelta(seconds=1)
    change = feedback(SOFT, MessageStatus.SENT, expires_at=expires)
    assert change.status is MessageStatus.BOUNCED and change.then is None
    assert change.last_error == "bounce Transient/General: 452 mailbox full"


def test_soft_bounce_repeated_while_the_message_waits_changes_nothing() -> None:
    change = feedback(SOFT, MessageStatus.QUEUED)
    assert change.status is None and change.next_attempt_at is None


def test_soft_bounce_after_delivery_bounces_without_resending() -> None:
    change = feedback(SOFT, MessageStatus.DELIVERED)
    assert change.status is MessageStatus.BOUNCED and change.then is None


def test_late_delivery_does_not_unbounce() -> None:
    delivered = rules.decide(Feedback.DELIVERY, soft_bounce_count=0)
    change = feedback(delivered, MessageStatus.BOUNCED, report=DELIVERED)
    assert change.status is None
    # Still a line of its history, and news for the app.
    assert change.lines == (Line(Event.DELIVERY, None, Feedback.DELIVERY),)
    assert change.webhook is EventType.EMAIL_DELIVERED


def test_feedback_about_an_earlier_send_is_only_recorded() -> None:
    change = feedback(SOFT, MessageStatus.SENT, sent_as="0100-sent-again")
    assert change.status is None and change.ses_message_id == "0100-abc"


def test_feedback_that_beat_the_record_of_the_send_moves_the_status() -> None:
    assert feedback(SOFT, MessageStatus.SENDING, sent_as=None).status is MessageStatus.QUEUED


@pytest.mark.parametrize(
    ("report", "summary", "detail", "for_app", "webhook"),
    [
        (
            SOFT_BOUNCE,
            "bounce Transient/General",
            "bounce Transient/General: 452 mailbox full",
            ("Transient", "General", "452 mailbox full"),
            EventType.EMAIL_BOUNCED,
        ),
        (
            Report(Event.COMPLAINT, Feedback.COMPLAINT, "x", ses_type="abuse"),
            "complaint abuse",
            "complaint abuse",
            ("abuse", None, None),
            EventType.EMAIL_COMPLAINED,
        ),
        (
            Report(Event.REJECT, Feedback.FAILURE, "x", diagnostic="Bad content"),
            "reject",
            "Bad content",
            (None, None, None),
            EventType.EMAIL_FAILED,
        ),
        (Report(Event.OPEN, Feedback.NOTED, "x"), "open", None, (None, None, None), None),
    ],
)
def test_what_feedback_says(
    report: Report,
    summary: str,
    detail: str | None,
    for_app: tuple[str | None, ...],
    webhook: EventType | None,
) -> None:
    assert (report.summary, report.detail, report.for_app, report.webhook) == (
        summary,
        detail,
        for_app,
        webhook,
    )


# -- the guard, operators, the app, erasure ---------------------------------------------------


@pytest.mark.parametrize(
    ("transition", "status", "event", "leaves", "webhook"),
    [
        (
            lifecycle.hold(),
            MessageStatus.HELD,
            Event.HELD,
            frozenset({MessageStatus.QUEUED}),
            EventType.EMAIL_HELD,
        ),
        (
            lifecycle.release(by_operator=False),
            MessageStatus.QUEUED,
            Event.RELEASED,
            frozenset({MessageStatus.HELD}),
            None,
        ),
        (
            lifecycle.discard(),
            MessageStatus.FAILED,
            Event.DISCARDED,
            frozenset({MessageStatus.HELD}),
            EventType.EMAIL_FAILED,
        ),
        (
            lifecycle.cancel(),
            MessageStatus.CANCELLED,
            Event.CANCELLED,
            frozenset({MessageStatus.QUEUED, MessageStatus.SCHEDULED, MessageStatus.HELD}),
            EventType.EMAIL_CANCELLED,
        ),
        (
            lifecycle.erase(),
            MessageStatus.FAILED,
            Event.BLOCKED,
            frozenset({MessageStatus.QUEUED, MessageStatus.SCHEDULED}),
            EventType.EMAIL_FAILED,
        ),
    ],
)
def test_changes_by_hand(
    transition: Transition,
    status: MessageStatus,
    event: Event,
    leaves: frozenset[MessageStatus],
    webhook: EventType | None,
) -> None:
    assert (transition.status, transition.event, transition.leaves, transition.webhook) == (
        status,
        event,
        leaves,
        webhook,
    )


def test_released_mail_is_due_now_and_says_who_released_it() -> None:
    assert lifecycle.release(by_operator=False).retry_in == 0
    assert lifecycle.release(by_operator=True).detail == "released by an operator"
    assert lifecycle.release(by_operator=False).detail == "rates back under the review level"


def test_discarded_mail_loses_its_link_params() -> None:
    assert lifecycle.discard().drops_params
    assert lifecycle.discard().last_error == "discarded by an operator"
