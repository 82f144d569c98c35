"""The outbox: every statement that writes ``message``, ``message_event`` or ``send_pacer``, and
every read made for sending.

Who asks what of it:
- the API accepts a mail (``accept``);
- the worker claims due mail (``claim``), checks each mail right before SendEmail
  (``check_before_send``) and records the outcome (``finish``); it pauses and resumes sending
  for every replica (``pause_sending``, ``resume_sending``);
- the reputation guard holds and releases optional mail (``hold_optional``, ``release_held``);
- retention drops link params and old mail (``drop_spent_params``, ``delete_old``).

How a claim works, for the reader of the worker:
- **Fence.** A claim adds one to ``attempts`` and the claimer keeps that number; every later
  write for the mail (``finish``) and the pre-send check match it. A worker whose claim was
  taken over (its lease ran out, another worker claimed the mail) changes nothing.
- **Sized by the rate.** ``send_pacer`` holds the next free send slot for all replicas
  together. A claim takes at most what can be sent within ``horizon`` seconds of pacing, and
  books those slots in the same statement, so no worker holds a claim for longer than the
  horizon plus its sends, far inside the lease.
- **Account mail first.** Each category is a lane ordered by due time; a lane's key is its due
  time less the category's head start. Account mail overtakes up to ``ACCOUNT_HEAD_START`` of
  optional backlog; optional mail older than that goes first, so it is never starved.
- **Paused sending.** SES errors about the account (credentials, IAM, a paused account) set
  ``pause_reason``: claims then take nothing, except one probe mail every ``probe`` seconds.
  A probe that goes out resumes sending.

The hot statements are named asyncpg statements run on asyncpg's connection in autocommit
(``app.db.driver_connection``): each is one round trip and its own transaction.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import NamedStatement
from app.emails.catalog import Category
from app.models import MessageStatus
from app.webhooks import deliveries as webhooks

OUTBOX_CHANNEL = "tegami_outbox"
# The NOTIFY payload: which process accepted the mail. That process's own worker was already
# woken in memory, so it ignores its own NOTIFY (a second wake cost one empty claim per mail).
PROCESS_ORIGIN = uuid.uuid4().hex

# Account mail (a password reset, an address to verify) is sent because the user is waiting
# for it: it overtakes this much optional backlog (5,000 matching mails at 14/s is 6 minutes).
ACCOUNT_HEAD_START = timedelta(minutes=10)
HEAD_STARTS: dict[Category, timedelta] = {
    Category.ACCOUNT: ACCOUNT_HEAD_START,
    Category.MATCHING: timedelta(0),
}


# -- accept ------------------------------------------------------------------------------

_FIRST_ANSWER = NamedStatement.of(
    "SELECT id, request_hash FROM message WHERE api_key_id = :api_key_id "
    "AND idempotency_key = :idempotency_key"
)

# The whole accept in one statement (one round trip, one snapshot): an earlier request with
# this Idempotency-Key, the address's block (suppression, or opt-out of this category), and,
# only when there is neither, the recipient upsert, the message, its 'accepted' event and the
# NOTIFY that wakes workers in other replicas once the transaction commits.
_ACCEPT = NamedStatement.of(
    """
    WITH existing AS (
        SELECT id, request_hash FROM message
        WHERE api_key_id = CAST(:api_key_id AS integer)
          AND idempotency_key = CAST(:idempotency_key AS text)
    ),
    block AS (
        SELECT
            (SELECT reason FROM suppression WHERE address_hash = CAST(:address_hash AS bytea))
                AS suppressed,
            EXISTS (
                SELECT 1 FROM opt_out o JOIN recipient r ON r.id = o.recipient_id
                WHERE r.address_hash = CAST(:address_hash AS bytea)
                  AND o.category = CAST(:category AS text)
            ) AS opted_out
    ),
    go AS (
        SELECT 1 FROM block
        WHERE block.suppressed IS NULL
          AND NOT (block.opted_out AND CAST(:optional AS boolean))
          AND NOT EXISTS (SELECT 1 FROM existing)
    ),
    recipient_row AS (
        INSERT INTO recipient (address_hash, address, user_id)
        SELECT CAST(:address_hash AS bytea), CAST(:to_address AS text), CAST(:user_id AS text)
        FROM go
        ON CONFLICT (address_hash) DO UPDATE
            SET address = excluded.address,
                user_id = coalesce(excluded.user_id, recipient.user_id),
                updated_at = now()
        RETURNING id
    ),
    inserted AS (
        INSERT INTO message (id, kind, category, recipient_id, to_address, user_id, params,
            status, next_attempt_at, expires_at, api_key_id, idempotency_key, request_hash,
            created_at, updated_at)
        SELECT CAST(:id AS uuid), CAST(:kind AS text), CAST(:category AS text), recipient_row.id,
            CAST(:to_address AS text), CAST(:user_id AS text), CAST(:params AS jsonb),
            CAST(:status AS text), CAST(:now AS timestamptz), CAST(:expires_at AS timestamptz),
            CAST(:api_key_id AS integer), CAST(:idempotency_key AS text),
            CAST(:request_hash AS bytea), CAST(:now AS timestamptz), CAST(:now AS timestamptz)
        FROM recipient_row
        ON CONFLICT (api_key_id, idempotency_key) DO NOTHING
        RETURNING id
    ),
    accepted_event AS (
        INSERT INTO message_event (message_id, kind, cause)
        SELECT id, 'accepted', CAST(:cause AS text) FROM inserted
        RETURNING message_id
    )
    SELECT block.suppressed, block.opted_out,
        (SELECT id FROM existing) AS existing_id,
        (SELECT request_hash FROM existing) AS existing_hash,
        (SELECT message_id FROM accepted_event) AS inserted_id,
        (SELECT count(pg_notify(CAST(:channel AS text), CAST(:origin AS text)))
            FROM accepted_event) AS notified
    FROM block
    """
)


@dataclass(frozen=True)
class NewMail:
    id: uuid.UUID
    kind: str
    category: Category
    address_hash: bytes
    to_address: str
    user_id: str | None
    params: dict[str, str]
    expires_at: datetime | None
    api_key_id: int | None
    idempotency_key: str | None
    request_hash: bytes
    cause: str
    now: datetime


@dataclass(frozen=True)
class Accepting:
    """What the accept statement found: a block, an earlier request, or the new mail stored."""

    suppressed: str | None
    opted_out: bool
    existing_id: uuid.UUID | None
    existing_hash: bytes | None
    inserted: bool


async def accept(connection: asyncpg.Connection, *, mail: NewMail) -> Accepting:
    values = {
        "id": mail.id,
        "kind": mail.kind,
        "category": str(mail.category),
        "optional": mail.category.optional,
        "address_hash": mail.address_hash,
        "to_address": mail.to_address,
        "user_id": mail.user_id,
        "params": json.dumps(mail.params, ensure_ascii=False),
        "status": MessageStatus.QUEUED.value,
        "now": mail.now,
        "expires_at": mail.expires_at,
        "api_key_id": mail.api_key_id,
        "idempotency_key": mail.idempotency_key,
        "request_hash": mail.request_hash,
        "cause": mail.cause,
        "channel": OUTBOX_CHANNEL,
        "origin": PROCESS_ORIGIN,
    }
    row = await connection.fetchrow(_ACCEPT.sql, *_ACCEPT.args(values))
    return Accepting(
        suppressed=row["suppressed"],
        opted_out=row["opted_out"],
        existing_id=row["existing_id"],
        existing_hash=row["existing_hash"],
        inserted=row["inserted_id"] is not None,
    )


async def first_answer(
    connection: asyncpg.Connection, *, api_key_id: int | None, idempotency_key: str
) -> tuple[uuid.UUID, bytes]:
    """The mail an Idempotency-Key was first used for (a concurrent retry committed first)."""
    row = await connection.fetchrow(
        _FIRST_ANSWER.sql,
        *_FIRST_ANSWER.args({"api_key_id": api_key_id, "idempotency_key": idempotency_key}),
    )
    return row["id"], row["request_hash"]


# -- claim -------------------------------------------------------------------------------


def _lane(number: int) -> str:
    return f"""
    lane_{number} AS (
        SELECT id, next_attempt_at - make_interval(secs => CAST(:head_start_{number} AS float8))
            AS key
        FROM message
        WHERE status IN ('queued', 'sending') AND category = CAST(:category_{number} AS text)
            AND next_attempt_at <= now()
        ORDER BY next_attempt_at
        LIMIT COALESCE((SELECT n FROM room), 0)
        FOR UPDATE SKIP LOCKED
    )"""  # noqa: S608 (only lane numbers are formatted in; values are parameters)


_LANES = tuple(HEAD_STARTS)
_CLAIM = NamedStatement.of(
    f"""
    WITH gate AS (
        SELECT GREATEST(next_slot_at, now()) AS free_at, paused_until, pause_reason
        FROM send_pacer WHERE id = 1
        FOR UPDATE
    ),
    room AS (
        SELECT free_at, paused_until, pause_reason, CAST(CASE
            -- What the horizon has room for; at least one mail once the next free slot is
            -- inside it (at 1/s a second holds 0.98 of a slot).
            WHEN pause_reason IS NULL THEN LEAST(CAST(:limit AS int), GREATEST(
                CASE WHEN free_at - now() < make_interval(secs => CAST(:horizon AS float8))
                    THEN 1 ELSE 0 END,
                floor((CAST(:horizon AS float8) - EXTRACT(EPOCH FROM free_at - now()))
                    * CAST(:rate AS float8))))
            WHEN paused_until <= now() THEN 1  -- the probe
            ELSE 0
        END AS int) AS n
        FROM gate
    ),
    {",".join(_lane(number) for number in range(len(_LANES)))},
    due AS (
        SELECT id, key FROM (
            {" UNION ALL ".join(f"SELECT id, key FROM lane_{n}" for n in range(len(_LANES)))}
        ) AS lanes
        ORDER BY key
        LIMIT COALESCE((SELECT n FROM room), 0)
    ),
    claimed AS (
        UPDATE message AS m
        SET status = 'sending', attempts = m.attempts + 1,
            next_attempt_at = now() + make_interval(secs => CAST(:lease AS float8)),
            updated_at = now()
        FROM due WHERE m.id = due.id
        RETURNING m.id, m.kind, m.category, m.recipient_id, m.to_address, m.params,
            m.expires_at, m.attempts, m.created_at, due.key
    ),
    booked AS (
        UPDATE send_pacer SET
            next_slot_at = (SELECT free_at FROM room)
                + make_interval(secs => (SELECT count(*) FROM claimed) / CAST(:rate AS float8)),
            paused_until = CASE WHEN pause_reason IS NULL THEN NULL
                ELSE now() + make_interval(secs => CAST(:probe AS float8)) END
        WHERE id = 1 AND EXISTS (SELECT FROM claimed)
    )
    SELECT CAST(EXTRACT(EPOCH FROM room.free_at - now()) AS float8) AS first_slot,
        room.n AS room, room.pause_reason,
        CAST(EXTRACT(EPOCH FROM room.paused_until - now()) AS float8) AS paused_for,
        claimed.*
    FROM room LEFT JOIN claimed ON true
    ORDER BY claimed.key
    """  # noqa: S608 (only lane numbers are formatted in; values are parameters)
)

_ENSURE_GATE = NamedStatement.of(
    "INSERT INTO send_pacer (id, next_slot_at) VALUES (1, now()) ON CONFLICT (id) DO NOTHING"
)


@dataclass(frozen=True)
class Claimed:
    """One claimed mail; ``attempt`` is the fence every later write for it must match."""

    id: uuid.UUID
    kind: str
    category: Category
    recipient_id: int
    to_address: str | None
    params: dict[str, str] | None
    expires_at: datetime | None
    attempt: int
    created_at: datetime


@dataclass(frozen=True)
class Claim:
    """Mails in send order, and the pacing they were booked at: mail ``i`` has its slot
    ``first_slot + i / rate`` seconds after the claim."""

    mails: list[Claimed]
    first_slot: float
    # How many the gate allowed; 0 while the pacer is booked past the horizon or sending is
    # paused (then ``paused_for`` says for how much longer, before the next probe).
    room: int
    pause_reason: str | None
    paused_for: float

    @property
    def probing(self) -> bool:
        return self.pause_reason is not None


async def claim(
    connection: asyncpg.Connection,
    *,
    limit: int,
    rate: float,
    horizon: float,
    lease: float,
    probe: float,
) -> Claim:
    values: dict[str, Any] = {
        "limit": limit,
        "rate": rate,
        "horizon": horizon,
        "lease": lease,
        "probe": probe,
    }
    for number, category in enumerate(_LANES):
        values[f"category_{number}"] = str(category)
        values[f"head_start_{number}"] = HEAD_STARTS[category].total_seconds()
    rows = await connection.fetch(_CLAIM.sql, *_CLAIM.args(values))
    if not rows:  # no gate row yet (a new or emptied database)
        await connection.execute(_ENSURE_GATE.sql)
        rows = await connection.fetch(_CLAIM.sql, *_CLAIM.args(values))
    head = rows[0]
    return Claim(
        mails=[_claimed(row) for row in rows if row["id"] is not None],
        first_slot=max(0.0, head["first_slot"]),
        room=head["room"],
        pause_reason=head["pause_reason"],
        paused_for=max(0.0, head["paused_for"] or 0.0),
    )


def _claimed(row: asyncpg.Record) -> Claimed:
    params = row["params"]
    if isinstance(params, str):  # jsonb arrives as text on the driver connection
        params = json.loads(params)
    return Claimed(
        id=row["id"],
        kind=row["kind"],
        category=Category(row["category"]),
        recipient_id=row["recipient_id"],
        to_address=row["to_address"],
        params=params,
        expires_at=row["expires_at"],
        attempt=row["attempts"],
        created_at=row["created_at"],
    )


# -- the check right before SendEmail ----------------------------------------------------

# Read, not locked: the claim is still ours (fence), and what the rules say of the address
# now. Between this and SES's answer only the SES call happens.
_CHECK = NamedStatement.of(
    """
    SELECT m.id, m.expires_at, m.last_error, m.to_address IS NULL AS erased,
        (SELECT s.reason FROM suppression s JOIN recipient r ON r.address_hash = s.address_hash
         WHERE r.id = m.recipient_id) AS suppressed,
        EXISTS (SELECT 1 FROM opt_out o
                WHERE o.recipient_id = m.recipient_id AND o.category = m.category) AS opted_out
    FROM message AS m
    JOIN unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[])) AS mine(id, attempt)
        ON m.id = mine.id
    WHERE m.attempts = mine.attempt AND m.status = 'sending'
    """
)


@dataclass(frozen=True)
class Standing:
    """What holds for a claimed mail right before SendEmail."""

    expires_at: datetime | None
    last_error: str | None
    erased: bool
    suppressed: str | None
    opted_out: bool


async def check_before_send(
    connection: asyncpg.Connection, *, mails: Sequence[Claimed]
) -> dict[uuid.UUID, Standing]:
    """Each mail still ours, with its standing; a mail missing from the answer was lost to
    another worker."""
    rows = await connection.fetch(_CHECK.sql, [m.id for m in mails], [m.attempt for m in mails])
    return {
        row["id"]: Standing(
            expires_at=row["expires_at"],
            last_error=row["last_error"],
            erased=row["erased"],
            suppressed=row["suppressed"],
            opted_out=row["opted_out"],
        )
        for row in rows
    }


# -- finish ------------------------------------------------------------------------------

# The outcomes of a batch and their history, in one statement (one round trip, one
# transaction): at a hundred mails a second each batch is one mail, and SQLAlchemy's
# transaction around two statements cost nearly as much CPU as the send. Fenced: a mail
# whose claim another worker has taken since is left alone, and gets no event.
_FINISH_SQL = """
    WITH outcome AS (
        SELECT * FROM unnest(
            CAST(:ids AS uuid[]), CAST(:attempts AS int[]), CAST(:statuses AS text[]),
            CAST(:next_attempts AS timestamptz[]), CAST(:ses_message_ids AS text[]),
            CAST(:last_errors AS text[]), CAST(:kinds AS text[]), CAST(:details AS text[])
        ) AS o(id, attempt, status, next_attempt_at, ses_message_id, last_error, kind, detail)
    ),
    finished AS (
        UPDATE message AS m SET status = o.status, next_attempt_at = o.next_attempt_at,
            ses_message_id = COALESCE(o.ses_message_id, m.ses_message_id),
            last_error = o.last_error,
            sent_at = CASE WHEN o.status = 'sent' THEN now() ELSE m.sent_at END,
            updated_at = now()
        FROM outcome AS o
        WHERE m.id = o.id AND m.status = 'sending' AND m.attempts = o.attempt
        RETURNING m.id{returning}
    ){events}
    INSERT INTO message_event (message_id, kind, detail, cause)
    SELECT o.id, o.kind, o.detail, 'worker' FROM outcome AS o JOIN finished USING (id)
    RETURNING message_id
    """
_FINISH = NamedStatement.of(_FINISH_SQL.format(returning="", events=""))
# With TEGAMI_WEBHOOK_URL set: the app's events (email.sent, ...) in the same statement.
_FINISH_WITH_EVENTS = NamedStatement.of(
    _FINISH_SQL.format(
        returning=", m.kind, m.user_id, m.to_address, m.status",
        # A constant of the webhooks module: no value is formatted in.
        events=", emails_changed AS (SELECT * FROM finished)," + webhooks.EMAIL_EVENTS_CTE,  # noqa: S608
    )
)


@dataclass(frozen=True)
class Result:
    """What became of one claimed mail."""

    message_id: uuid.UUID
    attempt: int
    status: MessageStatus
    event: str
    detail: str | None = None
    ses_message_id: str | None = None
    next_attempt_at: datetime | None = None


async def finish(
    connection: asyncpg.Connection, *, results: Sequence[Result], now: datetime
) -> set[uuid.UUID]:
    """Record the outcomes; returns the mails recorded (the others were lost to another
    worker's claim, and nothing of them was written)."""
    values: dict[str, Any] = {
        "ids": [r.message_id for r in results],
        "attempts": [r.attempt for r in results],
        "statuses": [r.status.value for r in results],
        "next_attempts": [r.next_attempt_at or now for r in results],
        "ses_message_ids": [r.ses_message_id for r in results],
        "last_errors": [None if r.status is MessageStatus.SENT else r.detail for r in results],
        "kinds": [r.event for r in results],
        "details": [r.ses_message_id or r.detail for r in results],
    }
    statement = _FINISH_WITH_EVENTS if webhooks.enabled() else _FINISH
    rows = await connection.fetch(statement.sql, *statement.args(values))
    return {row["message_id"] for row in rows}


# -- pausing sending for every replica ---------------------------------------------------

# Conditional on the row's state, which PostgreSQL re-checks after waiting for another
# worker's update of it: of two workers pausing (or resuming) at once, one does it.
_PAUSE = NamedStatement.of(
    """
    UPDATE send_pacer SET pause_reason = :reason,
        paused_until = now() + make_interval(secs => CAST(:probe AS float8))
    WHERE id = 1 AND pause_reason IS NULL
    RETURNING true
    """
)
_RESUME = NamedStatement.of(
    """
    UPDATE send_pacer AS gate SET pause_reason = NULL, paused_until = NULL
    FROM (SELECT pause_reason FROM send_pacer WHERE id = 1) AS before
    WHERE gate.id = 1 AND gate.pause_reason IS NOT NULL
    RETURNING before.pause_reason
    """
)


async def pause_sending(connection: asyncpg.Connection, *, reason: str, probe: float) -> bool:
    """Stop every worker's claims until a probe gets through; True if this began the pause."""
    await connection.execute(_ENSURE_GATE.sql)
    started = await connection.fetchval(
        _PAUSE.sql, *_PAUSE.args({"reason": reason, "probe": probe})
    )
    return bool(started)


async def resume_sending(connection: asyncpg.Connection) -> str | None:
    """Lift the pause; the reason it was paused for, or None if it was not."""
    reason: str | None = await connection.fetchval(_RESUME.sql)
    return reason


# -- the reputation guard ----------------------------------------------------------------

# Optional mail waits as `held` while the guard holds, and goes back to the queue after.
_HOLD = text(
    """
    WITH held AS (
        UPDATE message SET status = 'held', updated_at = now()
        WHERE status = 'queued' AND category = ANY(:categories)
        RETURNING id
    )
    INSERT INTO message_event (message_id, kind, detail, cause)
    SELECT id, 'held', 'bounce or complaint rate over SES''s review level', 'reputation_guard'
    FROM held
    """
)
_RELEASE = text(
    """
    WITH released AS (
        UPDATE message SET status = 'queued', next_attempt_at = now(), updated_at = now()
        WHERE status = 'held'
        RETURNING id
    )
    INSERT INTO message_event (message_id, kind, detail, cause)
    SELECT id, 'released', 'rates back under the review level', 'reputation_guard'
    FROM released
    """
)


async def hold_optional(connection: AsyncConnection, *, categories: Iterable[Category]) -> int:
    held = await connection.execute(_HOLD, {"categories": sorted(map(str, categories))})
    return held.rowcount


async def release_held(connection: AsyncConnection) -> int:
    return (await connection.execute(_RELEASE)).rowcount


# -- retention ---------------------------------------------------------------------------

_DROP_PARAMS = text(
    """
    UPDATE message SET params = NULL, updated_at = now()
    WHERE params IS NOT NULL AND (
        status IN ('expired', 'failed', 'delivered', 'bounced', 'complained')
        OR (status = 'sent' AND (
            expires_at < now()
            OR (expires_at IS NULL AND sent_at < now() - interval '72 hours')))
    )
    """
)
_DELETE_OLD = text(
    """
    DELETE FROM message WHERE id IN (
        SELECT id FROM message
        WHERE created_at < now() - make_interval(days => :days)
          AND status NOT IN ('queued', 'sending', 'held')
        ORDER BY created_at
        LIMIT :batch
    )
    """
)


async def drop_spent_params(connection: AsyncConnection) -> int:
    """Link params hold tokens: dropped once the mail can no longer be sent again."""
    return (await connection.execute(_DROP_PARAMS)).rowcount


async def delete_old(connection: AsyncConnection, *, days: int, batch: int) -> int:
    """Up to ``batch`` finished mails older than ``days`` (their events go with them)."""
    return (await connection.execute(_DELETE_OLD, {"days": days, "batch": batch})).rowcount
