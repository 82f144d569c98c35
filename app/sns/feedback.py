"""Applying one verified SES notification: once per SNS MessageId, then DESIGN's rules.

The hot path of /sns/ses-events, written like the send path: statements on asyncpg's own
connection in one transaction, no ORM session. Most events (hard bounces, complaints,
deliveries to an address with no soft bounce counted) take two statements: claim the
MessageId and lock the message; write the outcome. Soft bounces, and deliveries that reset a
count, take the locked path: the recipients are locked in address-hash order and then the
message, so concurrent feedback for one address counts one after the other and two events
naming the same addresses cannot deadlock. The decisions themselves are
``app.recipients.rules``, which does no I/O.
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

from app.db import NamedStatement
from app.errors import AppError
from app.models import MessageStatus
from app.recipients import rules
from app.recipients.addresses import address_hash, mask_address
from app.sns.events import EventKind, SesEvent, SesEventError, parse_ses_event
from app.sns.service import SnsOutcome, claim_values, record_sns_message
from app.webhooks import deliveries as webhooks
from app.webhooks.events import EventType

log = logging.getLogger(__name__)

# SES types whose loss would change who gets mail: one we cannot read is refused (400),
# never quietly ignored. Anything else we cannot read (a test "Hello world", SES's
# AmazonSnsSubscriptionSucceeded notice, a future type) is recorded as ignored.
_STATE_CHANGING_TYPES: Final = frozenset(
    {"Bounce", "Complaint", "Delivery", "Reject", "Rendering Failure"}
)


class UnreadableSesEvent(AppError):
    status_code = 400
    code = "unreadable_ses_event"


# The rules apply to addresses tegami never mailed, so a soft bounce creates the recipient it
# counts for. An erased recipient (address NULL) stays erased.
_CREATE_RECIPIENTS = NamedStatement.of(
    """
    INSERT INTO recipient (address_hash, address)
    SELECT * FROM unnest(CAST(:hashes AS bytea[]), CAST(:addresses AS text[]))
    ON CONFLICT (address_hash) DO NOTHING
    """
)

# The locks are taken in the order rows leave the sort: address-hash order.
_LOCK_COUNTS = NamedStatement.of(
    """
    SELECT address_hash, soft_bounce_count FROM recipient
    WHERE address_hash = ANY(CAST(:hashes AS bytea[]))
    ORDER BY address_hash
    FOR UPDATE
    """
)

# SES can publish one soft bounce twice under two SNS MessageIds: it must not count twice.
# Its own statement, after the locks: a repeat waiting for them then sees the first's audit.
_SOFT_BOUNCE_SEEN = NamedStatement.of(
    """
    SELECT EXISTS (
        SELECT 1 FROM audit_event
        WHERE address_hash = ANY(CAST(:hashes AS bytea[]))
            AND action = 'soft_bounce_counted'
            AND right(cause, char_length(CAST(:suffix AS text))) = :suffix
    )
    """
)

# By SES MessageId, else by the tegami_id tag (the event beat the worker's record of the SES
# MessageId). Locked: the worker may be recording it right now.
_FIND_MESSAGE = NamedStatement.of(
    """
    SELECT m.id, m.status, m.expires_at, m.ses_message_id, r.address_hash
    FROM message AS m JOIN recipient AS r ON r.id = m.recipient_id
    WHERE m.ses_message_id = :ses_message_id OR m.id = ANY(CAST(:tagged_ids AS uuid[]))
    ORDER BY m.ses_message_id IS NOT DISTINCT FROM :ses_message_id DESC
    LIMIT 1
    FOR UPDATE OF m
    """
)

# The fast path's first statement: claim the MessageId and find and lock the message, and
# read (without a lock) the highest soft-bounce count among the event's addresses. No row:
# a duplicate, or a message tegami does not know (``_CLAIMED_HERE`` tells which).
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

# Everything the event changes, in one statement. ``audit_order`` keeps each address's lines
# in the order they happened (counted, then suppressed), addresses in lock order.
_WRITE_OUTCOME_SQL = """
    WITH counts AS (
        SELECT * FROM unnest(
            CAST(:count_hashes AS bytea[]), CAST(:counts AS int[]),
            CAST(:count_details AS text[]), CAST(:count_order AS int[])
        ) AS c(address_hash, count, detail, audit_order)
    ),
    counted AS (
        UPDATE recipient AS r SET soft_bounce_count = c.count, updated_at = now()
        FROM counts AS c WHERE r.address_hash = c.address_hash
    ),
    suppressions AS (
        SELECT * FROM unnest(
            CAST(:suppress_hashes AS bytea[]), CAST(:suppress_reasons AS text[]),
            CAST(:suppress_order AS int[])
        ) AS s(address_hash, reason, audit_order)
    ),
    suppressed AS (
        -- The first cause is kept: an address already suppressed is not audited again.
        INSERT INTO suppression (address_hash, reason, cause, detail)
        SELECT address_hash, reason, :cause, :address_detail FROM suppressions
        ON CONFLICT (address_hash) DO NOTHING
        RETURNING address_hash
    ),
    audited AS (
        INSERT INTO audit_event (address_hash, action, reason, cause, detail)
        SELECT address_hash, action, reason, :cause, detail FROM (
            SELECT address_hash, audit_order, NULL AS reason, detail,
                CASE WHEN count > 0 THEN 'soft_bounce_counted'
                    ELSE 'soft_bounce_count_reset' END AS action
            FROM counts
            UNION ALL
            SELECT s.address_hash, s.audit_order, s.reason,
                CAST(:address_detail AS text), 'suppressed'
            FROM suppressions AS s JOIN suppressed USING (address_hash)
        ) AS lines
        ORDER BY audit_order
    ),
    changed AS (
        UPDATE message SET
            ses_message_id = COALESCE(ses_message_id, CAST(:ses_message_id AS text)),
            status = COALESCE(CAST(:status AS text), status),
            next_attempt_at = COALESCE(CAST(:next_attempt_at AS timestamptz), next_attempt_at),
            last_error = COALESCE(CAST(:last_error AS text), last_error),
            updated_at = CASE WHEN CAST(:status AS text) IS NULL THEN updated_at ELSE now() END
        WHERE id = CAST(:message_id AS uuid)
            AND (CAST(:status AS text) IS NOT NULL OR ses_message_id IS NULL)
    ){events}
    INSERT INTO message_event (message_id, kind, detail, cause)
    SELECT CAST(:message_id AS uuid), kind, detail, :cause
    FROM unnest(CAST(:event_kinds AS text[]), CAST(:event_details AS text[]))
        WITH ORDINALITY AS e(kind, detail, n)
    WHERE CAST(:message_id AS uuid) IS NOT NULL
    ORDER BY n
    """
_WRITE_OUTCOME = NamedStatement.of(_WRITE_OUTCOME_SQL.format(events=""))
# With TEGAMI_WEBHOOK_URL set: the app's events (email.bounced, recipient.suppressed, ...)
# in the same statement.
_WRITE_OUTCOME_WITH_EVENTS = NamedStatement.of(
    _WRITE_OUTCOME_SQL.format(events="," + webhooks.FEEDBACK_EVENTS_CTE)
)
# The event the app hears of, by SES event.
_WEBHOOK_TYPES: Final = {
    EventKind.DELIVERY: EventType.EMAIL_DELIVERED,
    EventKind.DELIVERY_DELAY: EventType.EMAIL_DELIVERY_DELAYED,
    EventKind.BOUNCE: EventType.EMAIL_BOUNCED,
    EventKind.COMPLAINT: EventType.EMAIL_COMPLAINED,
    EventKind.REJECT: EventType.EMAIL_FAILED,
    EventKind.RENDERING_FAILURE: EventType.EMAIL_FAILED,
}


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
    connection: Any,
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
    outcome = await _apply_event(connection, event, message=message, secret=secret, now=now)
    if (
        outcome is SnsOutcome.APPLIED
        and on_reputation_event is not None
        and event is not None
        and (event.kind is EventKind.COMPLAINT or event.is_hard_bounce)
    ):
        on_reputation_event()
    return outcome


async def _apply_event(
    connection: Any,
    event: SesEvent | None,
    *,
    message: Mapping[str, Any],
    secret: str,
    now: datetime,
) -> SnsOutcome:
    if event is None:
        # One statement: its own transaction.
        if not await record_sns_message(connection, message=message, outcome=SnsOutcome.IGNORED):
            return SnsOutcome.DUPLICATE
        log.info(
            "SNS notification is not SES feedback we act on; ignored",
            extra={"sns_message_id": message["MessageId"], "topic_arn": message["TopicArn"]},
        )
        return SnsOutcome.IGNORED
    target = _Target.of(event, secret=secret)
    if not event.is_soft_bounce:
        try:
            async with _transaction(connection):
                return await _apply_unlocked(
                    connection, event=event, target=target, message=message, now=now
                )
        except _NeedsRecipientLocks:
            pass  # rolled back: nothing of it was kept
    async with _transaction(connection):
        return await _apply_locked(connection, event=event, target=target, message=message, now=now)


@contextlib.asynccontextmanager
async def _transaction(connection: Any) -> AsyncIterator[None]:
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


class _NeedsRecipientLocks(Exception):
    """Raised inside the fast path's transaction to roll it back and take the locked path."""


@dataclass(frozen=True)
class _Target:
    """The event's addresses: one entry per address hash (Taro@ and taro@ are one recipient),
    in lock order."""

    addresses: dict[bytes, str]
    hashes: list[bytes]

    @classmethod
    def of(cls, event: SesEvent, *, secret: str) -> _Target:
        addresses: dict[bytes, str] = {}
        for address in event.recipients:
            addresses.setdefault(address_hash(address, secret=secret), address)
        return cls(addresses, sorted(addresses))


async def _apply_unlocked(
    connection: Any,
    *,
    event: SesEvent,
    target: _Target,
    message: Mapping[str, Any],
    now: datetime,
) -> SnsOutcome:
    """Events that change no soft-bounce count: two statements (claim and find; write).

    A Delivery resets the count, but only an address whose count is above 0 needs it: read
    without a lock, a 0 means no soft bounce had committed, so this Delivery is ordered
    before any still in flight and leaves the count alone. Above 0, the locked path runs.
    """
    values = {
        **claim_values(message, SnsOutcome.APPLIED),
        "hashes": target.hashes,
        "ses_message_id": event.ses_message_id,
        "tagged_ids": _tagged_ids(event),
    }
    row = await connection.fetchrow(_CLAIM_AND_FIND.sql, *_CLAIM_AND_FIND.args(values))
    found: _Message | None = None
    if row is None:
        claimed, counted = await connection.fetchrow(_CLAIMED_HERE.sql, *_CLAIMED_HERE.args(values))
        if not claimed:
            return SnsOutcome.DUPLICATE
    else:
        found, counted = _Message.of(row), row[5]
    if event.kind is EventKind.DELIVERY and counted > 0:
        raise _NeedsRecipientLocks
    decisions = {h: rules.decide(event, soft_bounce_count=0) for h in target.hashes}
    await _write(
        connection,
        event,
        target=target,
        decisions=decisions,
        found=found,
        sns_message_id=message["MessageId"],
        now=now,
    )
    return SnsOutcome.APPLIED


async def _apply_locked(
    connection: Any,
    *,
    event: SesEvent,
    target: _Target,
    message: Mapping[str, Any],
    now: datetime,
) -> SnsOutcome:
    """Soft bounces, and Deliveries that reset a count: the recipients are locked (in hash
    order, then the message), so concurrent feedback for one address counts one after the
    other. DUPLICATE also for a repeat of a soft bounce already counted (same feedbackId)."""
    if not await record_sns_message(connection, message=message, outcome=SnsOutcome.APPLIED):
        return SnsOutcome.DUPLICATE
    hashes = target.hashes
    if event.is_soft_bounce:
        addresses = [target.addresses[h] for h in hashes]
        await connection.execute(_CREATE_RECIPIENTS.sql, hashes, addresses)
    counts = {bytes(row[0]): row[1] for row in await connection.fetch(_LOCK_COUNTS.sql, hashes)}
    # Checked under the locks, so a concurrent repeat waits and then sees the first.
    if (
        event.is_soft_bounce
        and event.feedback_id
        and await connection.fetchval(
            _SOFT_BOUNCE_SEEN.sql, hashes, f" feedback:{event.feedback_id}"
        )
    ):
        log.info(
            "soft bounce already counted (same feedbackId)",
            extra={"sns_message_id": message["MessageId"], "feedback_id": event.feedback_id},
        )
        return SnsOutcome.DUPLICATE
    decisions = {h: rules.decide(event, soft_bounce_count=counts.get(h, 0)) for h in hashes}
    found = await _find_message(connection, event)
    await _write(
        connection,
        event,
        target=target,
        decisions=decisions,
        found=found,
        sns_message_id=message["MessageId"],
        now=now,
    )
    return SnsOutcome.APPLIED


async def _write(
    connection: Any,
    event: SesEvent,
    *,
    target: _Target,
    decisions: Mapping[bytes, rules.Decision],
    found: _Message | None,
    sns_message_id: str,
    now: datetime,
) -> None:
    """Log what the event did to each address, then write it all in one statement."""
    cause = event_cause(event, sns_message_id=sns_message_id)
    for hashed, decision in decisions.items():
        if decision.suppress is not None or decision.soft_bounce_count:
            log.info(
                "SES feedback applied to an address",
                extra={
                    "event": event.kind.value,
                    "to": mask_address(target.addresses[hashed]),
                    "suppressed": decision.suppress,
                    "soft_bounce_count": decision.soft_bounce_count,
                    "sns_message_id": sns_message_id,
                },
            )
    values = _outcome_values(event, decisions=decisions, message=found, cause=cause, now=now)
    if values is not None:
        statement = _WRITE_OUTCOME
        if webhooks.enabled():
            statement = _WRITE_OUTCOME_WITH_EVENTS
            values |= _webhook_values(event, target=target, suppress=values["suppress_hashes"])
        await connection.execute(statement.sql, *statement.args(values))


def _webhook_values(event: SesEvent, *, target: _Target, suppress: list[bytes]) -> dict[str, Any]:
    """The parameters of ``webhooks.FEEDBACK_EVENTS_CTE``."""
    kind = _WEBHOOK_TYPES.get(event.kind)
    extra = {}
    if event.kind is EventKind.BOUNCE:
        extra = {
            "ses_type": event.bounce_type,
            "ses_subtype": event.bounce_subtype,
            "diagnostic": event.detail,
        }
    elif event.kind is EventKind.COMPLAINT:
        extra = {"ses_type": event.complaint_feedback_type}
    return {
        "webhook_type": kind.value if kind is not None else None,
        "webhook_extra": json.dumps(extra),
        "suppress_addresses": [target.addresses[h] for h in suppress],
    }


@dataclass(frozen=True)
class _Message:
    id: uuid.UUID
    status: MessageStatus
    expires_at: datetime | None
    ses_message_id: str | None
    address_hash: bytes

    @classmethod
    def of(cls, row: Any) -> _Message:
        return cls(
            id=row[0],
            status=MessageStatus(row[1]),
            expires_at=row[2],
            ses_message_id=row[3],
            address_hash=bytes(row[4]),
        )


def _tagged_ids(event: SesEvent) -> list[uuid.UUID]:
    tagged: list[uuid.UUID] = []
    for tag in event.tags.get("tegami_id", ()):
        try:
            tagged.append(uuid.UUID(tag))
        except ValueError:
            continue
    return tagged


async def _find_message(connection: Any, event: SesEvent) -> _Message | None:
    row = await connection.fetchrow(_FIND_MESSAGE.sql, event.ses_message_id, _tagged_ids(event))
    return _Message.of(row) if row is not None else None


def _outcome_values(
    event: SesEvent,
    *,
    decisions: Mapping[bytes, rules.Decision],
    message: _Message | None,
    cause: str,
    now: datetime,
) -> dict[str, Any] | None:
    """The parameters of ``_WRITE_OUTCOME``; None when the event changes nothing at all."""
    detail = _address_detail(event)
    values: dict[str, Any] = {
        "cause": cause,
        "address_detail": detail,
        "count_hashes": [],
        "counts": [],
        "count_details": [],
        "count_order": [],
        "suppress_hashes": [],
        "suppress_reasons": [],
        "suppress_order": [],
        "message_id": None,
        "ses_message_id": None,
        "status": None,
        "next_attempt_at": None,
        "last_error": None,
        "event_kinds": [],
        "event_details": [],
    }
    for position, (hashed, decision) in enumerate(decisions.items()):
        count = decision.soft_bounce_count
        if count is not None:
            values["count_hashes"].append(hashed)
            values["counts"].append(count)
            values["count_details"].append(
                f"{detail}; {count} of {rules.SOFT_BOUNCE_LIMIT}" if count else detail
            )
            values["count_order"].append(2 * position)
        if decision.suppress is not None:
            values["suppress_hashes"].append(hashed)
            values["suppress_reasons"].append(decision.suppress.value)
            values["suppress_order"].append(2 * position + 1)
    if message is not None:
        _message_values(values, event, decisions=decisions, message=message, now=now)
    if message is None and not values["count_hashes"] and not values["suppress_hashes"]:
        return None
    return values


def _message_values(
    values: dict[str, Any],
    event: SesEvent,
    *,
    decisions: Mapping[bytes, rules.Decision],
    message: _Message,
    now: datetime,
) -> None:
    """The message's part of the outcome: its history, and its status when the event is about
    its latest send."""
    values["message_id"] = message.id
    values["ses_message_id"] = event.ses_message_id
    values["event_kinds"].append(event.kind.value)
    values["event_details"].append(_event_detail(event))
    if message.ses_message_id not in (None, event.ses_message_id):
        # About an earlier send of this message (it was sent again since): history only.
        return
    decision = decisions.get(message.address_hash)
    if decision is None:  # the event does not name the message's own recipient
        decision = rules.decide(event, soft_bounce_count=0)
    change = rules.message_change(
        decision, status=message.status, expires_at=message.expires_at, now=now
    )
    if change is None:
        return
    values["status"] = change.status.value
    if change.next_attempt_at is not None:
        values["next_attempt_at"] = change.next_attempt_at
        values["event_kinds"].append("resend_scheduled")
        values["event_details"].append(
            f"soft bounce: sent again at {change.next_attempt_at.isoformat()}"
        )
    elif change.status in (MessageStatus.FAILED, MessageStatus.BOUNCED):
        values["last_error"] = _event_detail(event)


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
