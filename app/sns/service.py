"""SNS subscription messages, and the record that applies each SNS MessageId once.

Notifications (the SES events themselves) are applied by ``app.sns.feedback``. Everything
here runs on asyncpg's own connection (``app.db.driver_connection``), one autocommitted
statement at a time: no transaction is held open while SNS is fetched.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any, Final

import asyncpg
import httpx
from sqlalchemy import delete, func
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import NamedStatement
from app.errors import AppError, ErrorCode
from app.models import SnsMessage
from app.sns.signature import SnsVerificationError, check_subscribe_url

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT_SECONDS: Final = 10.0


class SnsOutcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    CONFIRMED = "confirmed"
    RECORDED = "recorded"


class SubscribeFailed(AppError):
    # Not the caller's fault and worth another try: SNS re-sends the confirmation on 5xx.
    status_code = 502
    code = ErrorCode.SUBSCRIBE_FAILED


class SubscribeUrlRefused(AppError):
    status_code = 403
    code = ErrorCode.SUBSCRIBE_URL


# -- de-duplication -------------------------------------------------------------------------

CLAIM_SNS_MESSAGE = NamedStatement.of(
    """
    INSERT INTO sns_message (message_id, type, topic_arn, outcome)
    VALUES (:message_id, :type, :topic_arn, :outcome)
    ON CONFLICT (message_id) DO NOTHING
    RETURNING true
    """
)


def claim_values(message: Mapping[str, Any], outcome: SnsOutcome) -> dict[str, Any]:
    """The parameters of ``CLAIM_SNS_MESSAGE`` (also of the SNS apply path's own claim)."""
    return {
        "message_id": message["MessageId"],
        "type": message["Type"],
        "topic_arn": message["TopicArn"],
        "outcome": outcome.value,
    }


async def record_sns_message(
    connection: asyncpg.Connection, *, message: Mapping[str, Any], outcome: SnsOutcome
) -> bool:
    """Claim the MessageId; False when it was already applied (or is being, concurrently:
    the insert waits for the other transaction and then finds it).

    ``connection`` is asyncpg's (``app.db.driver_connection``).
    """
    values = claim_values(message, outcome)
    claimed = await connection.fetchval(CLAIM_SNS_MESSAGE.sql, *CLAIM_SNS_MESSAGE.args(values))
    return claimed is not None


async def record_ignored(
    connection: asyncpg.Connection, *, message: Mapping[str, Any]
) -> SnsOutcome:
    """A notification that is not SES feedback we act on: recorded (one statement, its own
    transaction) so that a repeat is a duplicate."""
    if not await record_sns_message(connection, message=message, outcome=SnsOutcome.IGNORED):
        return SnsOutcome.DUPLICATE
    log.info(
        "SNS notification is not SES feedback we act on; ignored",
        extra={"sns_message_id": message["MessageId"], "topic_arn": message["TopicArn"]},
    )
    return SnsOutcome.IGNORED


# The fast path of SES feedback, its first statement: claim the MessageId and, only then, find
# and lock the message it is about (as app.emails.outbox.find_for_feedback does), with the
# highest soft-bounce count among the event's addresses (read without a lock). No row: a
# duplicate, or a message tegami does not know (``claimed_here`` tells which).
_CLAIM_AND_FIND = NamedStatement.of(
    """
    WITH claimed AS (
        INSERT INTO sns_message (message_id, type, topic_arn, outcome)
        VALUES (:message_id, :type, :topic_arn, :outcome)
        ON CONFLICT (message_id) DO NOTHING
        RETURNING true
    )
    SELECT m.id, m.status, m.expires_at, m.ses_message_id, r.address_hash,
        (SELECT COALESCE(max(soft_bounce_count), 0) FROM recipient
            WHERE address_hash = ANY(CAST(:hashes AS bytea[]))) AS counted
    FROM message AS m JOIN recipient AS r ON r.id = m.recipient_id
    WHERE (m.ses_message_id = :ses_message_id OR m.id = ANY(CAST(:tagged_ids AS uuid[])))
        AND EXISTS (SELECT FROM claimed)
    ORDER BY m.ses_message_id IS NOT DISTINCT FROM :ses_message_id DESC
    LIMIT 1
    FOR UPDATE OF m
    """
)

# Whether this transaction inserted the MessageId (the row's xmin is our transaction id).
_CLAIMED_HERE = NamedStatement.of(
    """
    SELECT
        EXISTS (SELECT FROM sns_message
            WHERE message_id = :message_id AND xmin = CAST(pg_current_xact_id() AS xid)),
        (SELECT COALESCE(max(soft_bounce_count), 0) FROM recipient
            WHERE address_hash = ANY(CAST(:hashes AS bytea[])))
    """
)


@dataclass(frozen=True)
class Claimed:
    """A Notification's MessageId claimed in this transaction: the message it names (a row
    of app.emails.outbox.FeedbackTarget's shape, or None), the addresses' highest count."""

    message: asyncpg.Record | None
    highest_soft_bounce_count: int


async def claim_and_find(
    connection: asyncpg.Connection,
    *,
    message: Mapping[str, Any],
    hashes: Sequence[bytes],
    ses_message_id: str,
    tagged_ids: Sequence[uuid.UUID],
) -> Claimed | None:
    """Claim the MessageId and find the message, in one round trip; None for a duplicate."""
    values = {
        **claim_values(message, SnsOutcome.APPLIED),
        "hashes": list(hashes),
        "ses_message_id": ses_message_id,
        "tagged_ids": list(tagged_ids),
    }
    row = await connection.fetchrow(_CLAIM_AND_FIND.sql, *_CLAIM_AND_FIND.args(values))
    if row is not None:
        return Claimed(message=row, highest_soft_bounce_count=row["counted"])
    claimed, counted = await connection.fetchrow(_CLAIMED_HERE.sql, *_CLAIMED_HERE.args(values))
    return Claimed(message=None, highest_soft_bounce_count=counted) if claimed else None


_IS_RECORDED = NamedStatement.of(
    "SELECT EXISTS (SELECT 1 FROM sns_message WHERE message_id = :message_id)"
)


async def is_recorded(connection: asyncpg.Connection, *, message_id: str) -> bool:
    found = await connection.fetchval(_IS_RECORDED.sql, message_id)
    return bool(found)


# -- subscription ---------------------------------------------------------------------------


async def confirm_subscription(
    connection: asyncpg.Connection, *, message: Mapping[str, Any], http: httpx.AsyncClient
) -> SnsOutcome:
    """Confirm by fetching SubscribeURL (only an SNS ConfirmSubscription URL for this topic)."""
    try:
        check_subscribe_url(message["SubscribeURL"], topic_arn=message["TopicArn"])
    except SnsVerificationError as exc:
        raise SubscribeUrlRefused("SubscribeURL is not an SNS confirmation URL") from exc
    if await is_recorded(connection, message_id=message["MessageId"]):
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
    await record_sns_message(connection, message=message, outcome=SnsOutcome.CONFIRMED)
    log.info(
        "SNS subscription confirmed",
        extra={"event": "sns_subscription_confirmed", "topic_arn": message["TopicArn"]},
    )
    return SnsOutcome.CONFIRMED


async def record_unsubscribe_confirmation(
    connection: asyncpg.Connection, *, message: Mapping[str, Any]
) -> SnsOutcome:
    # Recorded, never followed: fetching its SubscribeURL would subscribe us again.
    if not await record_sns_message(connection, message=message, outcome=SnsOutcome.RECORDED):
        return SnsOutcome.DUPLICATE
    log.warning(
        "SNS says the subscription was removed; SES feedback stops arriving",
        extra={"event": "sns_unsubscribed", "topic_arn": message["TopicArn"]},
    )
    return SnsOutcome.RECORDED


async def forget_old_message_ids(connection: AsyncConnection) -> int:
    """SNS MessageIds only need to outlive SNS's retries (days): kept 30 days."""
    old = SnsMessage.received_at < func.now() - timedelta(days=30)
    return (await connection.execute(delete(SnsMessage).where(old))).rowcount
