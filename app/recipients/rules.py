"""The recipient rules of DESIGN.md as pure decisions: what one piece of feedback means for one
address (and the status it proposes for the message, which app.emails.lifecycle settles). No
I/O: ``app.sns.feedback`` reads the state and applies these. The input is this module's own
``Feedback`` (``app.sns.events`` maps SES's events to it), so the rules know nothing of SNS or
SES payloads.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from app.models import MessageStatus, SuppressionReason


class Feedback(StrEnum):
    """What the mailbox provider (through SES) said about one address."""

    HARD_BOUNCE = "hard_bounce"  # Bounce, Permanent
    SOFT_BOUNCE = "soft_bounce"  # Bounce, Transient or Undetermined
    BOUNCE = "bounce"  # a bounce type SES has not documented
    COMPLAINT = "complaint"
    NOT_SPAM = "not_spam"  # a complaint the provider took back (complaintFeedbackType not-spam)
    DELIVERY = "delivery"
    FAILURE = "failure"  # Reject, Rendering Failure: SES never sent it
    NOTED = "noted"  # DeliveryDelay, Send, Open, Click: history only


# Three consecutive soft bounces suppress the address.
SOFT_BOUNCE_LIMIT: Final = 3


@dataclass(frozen=True)
class Decision:
    """What one event means for one recipient (and the message it is about).

    ``soft_bounce_count`` is the new consecutive count, or None when unchanged.
    ``message_status`` is the status the message takes, or None for no change; with
    ``resend`` the message is sent again instead, when it still can be.
    """

    suppress: SuppressionReason | None = None
    soft_bounce_count: int | None = None
    message_status: MessageStatus | None = None
    resend: bool = False


def decide(feedback: Feedback, *, soft_bounce_count: int) -> Decision:
    """DESIGN.md's table. ``soft_bounce_count`` is the address's count before this feedback."""
    if feedback is Feedback.HARD_BOUNCE:
        return Decision(
            suppress=SuppressionReason.HARD_BOUNCE, message_status=MessageStatus.BOUNCED
        )
    if feedback is Feedback.SOFT_BOUNCE:
        count = soft_bounce_count + 1
        if count >= SOFT_BOUNCE_LIMIT:
            return Decision(
                suppress=SuppressionReason.SOFT_BOUNCE_LIMIT,
                soft_bounce_count=count,
                message_status=MessageStatus.BOUNCED,
            )
        return Decision(soft_bounce_count=count, message_status=MessageStatus.BOUNCED, resend=True)
    if feedback is Feedback.BOUNCE:
        # A bounce type SES has not documented: the message bounced, the address is not judged.
        return Decision(message_status=MessageStatus.BOUNCED)
    if feedback is Feedback.COMPLAINT:
        return Decision(
            suppress=SuppressionReason.COMPLAINT, message_status=MessageStatus.COMPLAINED
        )
    if feedback is Feedback.DELIVERY:
        # Resets the count only: a Delivery never lifts a suppression, whatever its order.
        return Decision(
            soft_bounce_count=0 if soft_bounce_count else None,
            message_status=MessageStatus.DELIVERED,
        )
    if feedback is Feedback.FAILURE:
        return Decision(message_status=MessageStatus.FAILED)
    # Not-spam, DeliveryDelay, Send, Open, Click, Subscription: recorded on the message only.
    return Decision()
