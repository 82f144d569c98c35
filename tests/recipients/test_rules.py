"""DESIGN.md's recipient rules as pure decisions: one row of the table per test."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.models import MessageStatus, SuppressionReason
from app.recipients import rules
from app.recipients.rules import Decision
from app.sns.events import EventKind, SesEvent

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def event(kind: EventKind, **fields: str | None) -> SesEvent:
    return SesEvent(
        kind=kind,
        ses_message_id="0100-test-000000",
        occurred_at=NOW,
        recipients=("taro@example.com",),
        **fields,  # type: ignore[arg-type]
    )


def decide(event: SesEvent, *, soft_bounce_count: int) -> Decision:
    """The rules on an SES event, as the SNS endpoint applies them (through its Feedback)."""
    return rules.decide(event.feedback, soft_bounce_count=soft_bounce_count)


def bounce(bounce_type: str, subtype: str = "General") -> SesEvent:
    return event(EventKind.BOUNCE, bounce_type=bounce_type, bounce_subtype=subtype)


@pytest.mark.parametrize(
    "subtype", ["General", "NoEmail", "Suppressed", "OnAccountSuppressionList", "Undetermined"]
)
def test_permanent_bounce_suppresses_at_once(subtype: str) -> None:
    decision = decide(bounce("Permanent", subtype), soft_bounce_count=0)
    assert decision.suppress is SuppressionReason.HARD_BOUNCE
    assert decision.message_status is MessageStatus.BOUNCED
    assert not decision.resend


@pytest.mark.parametrize("bounce_type", ["Transient", "Undetermined"])
def test_soft_bounce_below_the_limit_counts_and_sends_again(bounce_type: str) -> None:
    for before in range(rules.SOFT_BOUNCE_LIMIT - 1):
        decision = decide(bounce(bounce_type), soft_bounce_count=before)
        assert decision == Decision(
            soft_bounce_count=before + 1, message_status=MessageStatus.BOUNCED, resend=True
        )


@pytest.mark.parametrize("bounce_type", ["Transient", "Undetermined"])
def test_third_consecutive_soft_bounce_suppresses(bounce_type: str) -> None:
    decision = decide(bounce(bounce_type), soft_bounce_count=2)
    assert decision.suppress is SuppressionReason.SOFT_BOUNCE_LIMIT
    assert decision.soft_bounce_count == 3
    assert not decision.resend


def test_delivery_resets_the_count_and_never_suppresses_or_lifts() -> None:
    decision = decide(event(EventKind.DELIVERY), soft_bounce_count=2)
    assert decision == Decision(soft_bounce_count=0, message_status=MessageStatus.DELIVERED)
    # Nothing to reset: the count is left alone (no audit line for a non-change).
    assert decide(event(EventKind.DELIVERY), soft_bounce_count=0).soft_bounce_count is None


@pytest.mark.parametrize("feedback_type", ["abuse", "fraud", "virus", "other", None])
def test_complaint_suppresses(feedback_type: str | None) -> None:
    decision = decide(
        event(EventKind.COMPLAINT, complaint_feedback_type=feedback_type), soft_bounce_count=0
    )
    assert decision.suppress is SuppressionReason.COMPLAINT
    assert decision.message_status is MessageStatus.COMPLAINED


def test_not_spam_complaint_changes_nothing() -> None:
    decision = decide(
        event(EventKind.COMPLAINT, complaint_feedback_type="not-spam"), soft_bounce_count=2
    )
    assert decision == Decision()


@pytest.mark.parametrize(
    "kind",
    [
        EventKind.DELIVERY_DELAY,
        EventKind.SEND,
        EventKind.OPEN,
        EventKind.CLICK,
        EventKind.SUBSCRIPTION,
    ],
)
def test_informational_events_change_no_state(kind: EventKind) -> None:
    assert decide(event(kind), soft_bounce_count=2) == Decision()


@pytest.mark.parametrize("kind", [EventKind.REJECT, EventKind.RENDERING_FAILURE])
def test_reject_and_rendering_failure_fail_the_message_only(kind: EventKind) -> None:
    assert decide(event(kind), soft_bounce_count=2) == Decision(message_status=MessageStatus.FAILED)


def test_unknown_bounce_type_bounces_the_message_without_judging_the_address() -> None:
    assert decide(bounce("Mystery"), soft_bounce_count=2) == Decision(
        message_status=MessageStatus.BOUNCED
    )
