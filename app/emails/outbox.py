"""The outbox: every statement that writes ``message``, ``message_event`` or ``send_pacer``, and
every read made for sending.

Who asks what of it:
- the API accepts a mail (``accept``) or a batch of them (``accept_batch``), and cancels one
  not yet handed to SES (``cancel``);
- the worker claims due mail (``claim``), checks each mail right before SendEmail
  (``check_before_send``) and records the outcome (``finish``); it pauses and resumes sending
  for every replica (``pause_sending``, ``resume_sending``);
- the reputation guard holds and releases optional mail (``hold_optional``, ``release_held``);
- retention drops link params and old mail (``drop_spent_params``, ``delete_old``);
- SES feedback finds the message it is about (``find_for_feedback``) and changes it
  (``FEEDBACK``, a fragment composed into app.sns.feedback's one statement).

Every change of a mail's status is a ``lifecycle.Transition`` applied by one statement shape
(``_apply_fragment``): ``finish``, SES feedback, the guard's hold and release, an operator's
discard, the API's cancel and the erasure.

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
- **Test mail is not paced.** A test key's mail never reaches SES: it is claimed in a lane of
  its own beside the paced ones, books no slot, is never the probe, and waits for no pause.
  Real mail never waits behind it.

The hot statements are named asyncpg statements run on asyncpg's connection in autocommit
(``app.db.driver_connection``): each is one round trip and its own transaction.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import and_, delete, func, null, or_, select, text, true, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db import Fragment, NamedStatement, compose
from app.emails import lifecycle
from app.emails.lifecycle import Event, Standing, Transition
from app.models import PENDING_STATUSES, Category, Message, MessageEvent, MessageStatus
from app.recipients.addresses import ERASED_MARK, quoted_address_pattern
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
    "SELECT id, request_hash, send_at IS NOT NULL AS scheduled FROM message "
    "WHERE api_key_id = :api_key_id AND idempotency_key = :idempotency_key"
)

# The whole accept in one statement (one round trip, one snapshot): an earlier request with
# this Idempotency-Key, the address's block (suppression, or opt-out of this category), and,
# only when there is neither, the recipient upsert, the message, its `accepted` event and the
# NOTIFY that wakes workers in other replicas once the transaction commits.
_ACCEPT = NamedStatement.of(
    """
    WITH existing AS (
        SELECT id, request_hash, send_at IS NOT NULL AS scheduled FROM message
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
            tags, status, next_attempt_at, send_at, expires_at, api_key_id, idempotency_key,
            request_hash, test, created_at, updated_at)
        SELECT CAST(:id AS uuid), CAST(:kind AS text), CAST(:category AS text), recipient_row.id,
            CAST(:to_address AS text), CAST(:user_id AS text), CAST(:params AS jsonb),
            CAST(:tags AS jsonb),
            CAST(:status AS text), COALESCE(CAST(:due_at AS timestamptz), now()),
            CAST(:due_at AS timestamptz),
            now() + make_interval(secs => CAST(:lifetime AS float8)),
            CAST(:api_key_id AS integer), CAST(:idempotency_key AS text),
            CAST(:request_hash AS bytea), CAST(:test AS boolean), now(), now()
        FROM recipient_row
        ON CONFLICT (api_key_id, idempotency_key) DO NOTHING
        RETURNING id
    ),
    accepted_event AS (
        INSERT INTO message_event (message_id, kind, cause)
        SELECT id, CAST(:accepted AS text), CAST(:cause AS text) FROM inserted
        RETURNING message_id
    )
    SELECT block.suppressed, block.opted_out,
        (SELECT id FROM existing) AS existing_id,
        (SELECT request_hash FROM existing) AS existing_hash,
        (SELECT scheduled FROM existing) AS existing_scheduled,
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
    # The link's lifetime: it expires this long after the database's now() at accept (one
    # clock for every replica: the worker judges expiry by the same one).
    lifetime: timedelta | None
    api_key_id: int | None
    idempotency_key: str | None
    tags: dict[str, str]
    request_hash: bytes
    cause: str
    test: bool = False
    # Not due at once: `scheduled` until then (the app's send_at, or the end of quiet hours).
    due_at: datetime | None = None

    @property
    def status(self) -> MessageStatus:
        return MessageStatus.QUEUED if self.due_at is None else MessageStatus.SCHEDULED


@dataclass(frozen=True)
class Accepting:
    """What the accept statement found: a block, an earlier request, or the new mail stored."""

    suppressed: str | None
    opted_out: bool
    existing_id: uuid.UUID | None
    existing_hash: bytes | None
    inserted: bool
    existing_scheduled: bool = False


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
        "tags": json.dumps(mail.tags),
        "status": mail.status.value,
        "due_at": mail.due_at,
        "lifetime": mail.lifetime.total_seconds() if mail.lifetime is not None else None,
        "api_key_id": mail.api_key_id,
        "idempotency_key": mail.idempotency_key,
        "request_hash": mail.request_hash,
        "test": mail.test,
        "cause": mail.cause,
        "accepted": Event.ACCEPTED.value,
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
        existing_scheduled=bool(row["existing_scheduled"]),
    )


async def first_answer(
    connection: asyncpg.Connection, *, api_key_id: int | None, idempotency_key: str
) -> tuple[uuid.UUID, bytes, bool]:
    """The mail an Idempotency-Key was first used for (a concurrent retry committed first):
    its id, request hash, and whether it was scheduled."""
    row = await connection.fetchrow(
        _FIRST_ANSWER.sql,
        *_FIRST_ANSWER.args({"api_key_id": api_key_id, "idempotency_key": idempotency_key}),
    )
    return row["id"], row["request_hash"], row["scheduled"]


# A batch of mails of one type in one statement (one round trip, one transaction): per item,
# the address's block, then for the items neither refused nor blocked the recipients, the
# messages and their `accepted` events; the answer of every item in order; and with an
# Idempotency-Key, that answer stored for a retry (a retry finds it in ``existing`` and
# accepts nothing). Two requests with one key at once: the second's INSERT INTO send_batch
# violates the key's uniqueness once the first commits, so its whole statement is undone and
# it is answered from the first (``accept_batch``).
_ACCEPT_BATCH = NamedStatement.of(
    """
    WITH existing AS (
        SELECT request_hash, results FROM send_batch
        WHERE api_key_id = CAST(:api_key_id AS integer)
          AND idempotency_key = CAST(:idempotency_key AS text)
    ),
    item AS (
        SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:address_hashes AS bytea[]),
            CAST(:to_addresses AS text[]), CAST(:user_ids AS text[]), CAST(:params AS text[]),
            CAST(:due_ats AS timestamptz[]), CAST(:refusals AS text[]), CAST(:tags AS text[]))
            WITH ORDINALITY AS i(id, address_hash, to_address, user_id, params, due_at,
                refusal, tags, n)
    ),
    verdict AS (
        SELECT i.n,
            (SELECT s.reason FROM suppression AS s WHERE s.address_hash = i.address_hash)
                AS suppressed,
            CAST(:optional AS boolean) AND EXISTS (
                SELECT 1 FROM opt_out AS o JOIN recipient AS r ON r.id = o.recipient_id
                WHERE r.address_hash = i.address_hash AND o.category = CAST(:category AS text)
            ) AS opted_out
        FROM item AS i WHERE i.refusal IS NULL
    ),
    go AS (
        SELECT i.* FROM item AS i JOIN verdict AS v USING (n)
        WHERE v.suppressed IS NULL AND NOT v.opted_out AND NOT EXISTS (SELECT 1 FROM existing)
    ),
    recipient_row AS (
        -- One row per address (an upsert may not touch a row twice in one statement).
        INSERT INTO recipient (address_hash, address, user_id)
        SELECT DISTINCT ON (address_hash) address_hash, to_address, user_id
        FROM go ORDER BY address_hash, n DESC
        ON CONFLICT (address_hash) DO UPDATE
            SET address = excluded.address,
                user_id = coalesce(excluded.user_id, recipient.user_id),
                updated_at = now()
        RETURNING id, address_hash
    ),
    inserted AS (
        INSERT INTO message (id, kind, category, recipient_id, to_address, user_id, params,
            tags, status, next_attempt_at, send_at, expires_at, api_key_id, test, created_at,
            updated_at)
        SELECT go.id, CAST(:kind AS text), CAST(:category AS text), r.id, go.to_address,
            go.user_id, CAST(go.params AS jsonb), COALESCE(CAST(go.tags AS jsonb), '{}'),
            CASE WHEN go.due_at IS NULL THEN 'queued' ELSE 'scheduled' END,
            COALESCE(go.due_at, now()), go.due_at,
            now() + make_interval(secs => CAST(:lifetime AS float8)),
            CAST(:api_key_id AS integer), CAST(:test AS boolean), now(), now()
        FROM go JOIN recipient_row AS r USING (address_hash)
        RETURNING id
    ),
    accepted_event AS (
        INSERT INTO message_event (message_id, kind, cause)
        SELECT id, CAST(:accepted AS text), CAST(:cause AS text) FROM inserted
        RETURNING message_id
    ),
    answer AS (
        SELECT COALESCE(jsonb_agg(CASE
            WHEN i.refusal IS NOT NULL THEN CAST(i.refusal AS jsonb)
            WHEN v.suppressed IS NOT NULL
                THEN jsonb_build_object('code', 'suppressed', 'reason', v.suppressed)
            WHEN v.opted_out
                THEN jsonb_build_object('code', 'opted_out', 'category', CAST(:category AS text))
            ELSE jsonb_build_object('id', i.id,
                'status', CASE WHEN i.due_at IS NULL THEN 'queued' ELSE 'scheduled' END)
            END ORDER BY i.n), '[]'::jsonb) AS results
        FROM item AS i LEFT JOIN verdict AS v USING (n)
    ),
    stored AS (
        INSERT INTO send_batch (api_key_id, idempotency_key, request_hash, results)
        SELECT CAST(:api_key_id AS integer), CAST(:idempotency_key AS text),
            CAST(:request_hash AS bytea), answer.results
        FROM answer
        WHERE CAST(:idempotency_key AS text) IS NOT NULL AND NOT EXISTS (SELECT 1 FROM existing)
    )
    SELECT (SELECT request_hash FROM existing) AS existing_hash,
        (SELECT results FROM existing) AS existing_results,
        (SELECT results FROM answer) AS results,
        (SELECT count(*) FROM accepted_event) AS accepted,
        (SELECT count(pg_notify(CAST(:channel AS text), CAST(:origin AS text)))
            FROM (SELECT 1 FROM accepted_event LIMIT 1) AS one) AS notified
    """
)


@dataclass(frozen=True)
class BatchItem:
    """One item of a batch: a mail to store, or its refusal (the error the answer gives)."""

    id: uuid.UUID | None = None
    address_hash: bytes | None = None
    to_address: str | None = None
    user_id: str | None = None
    params: dict[str, str] | None = None
    due_at: datetime | None = None
    refusal: dict[str, Any] | None = None
    tags: dict[str, str] | None = None


@dataclass(frozen=True)
class BatchAnswer:
    """The answer of each item in order (``{"id", "status"}`` or ``{"code", ...}``), the
    stored one when ``replayed_hash`` is set (an earlier request with this key)."""

    results: list[dict[str, Any]]
    accepted: int
    replayed_hash: bytes | None = None


async def accept_batch(
    connection: asyncpg.Connection,
    *,
    kind: str,
    category: Category,
    lifetime: timedelta | None,
    items: Sequence[BatchItem],
    api_key_id: int | None,
    idempotency_key: str | None,
    request_hash: bytes,
    cause: str,
    test: bool,
) -> BatchAnswer:
    values = {
        "api_key_id": api_key_id,
        "idempotency_key": idempotency_key,
        "request_hash": request_hash,
        "ids": [i.id for i in items],
        "address_hashes": [i.address_hash for i in items],
        "to_addresses": [i.to_address for i in items],
        "user_ids": [i.user_id for i in items],
        "params": [
            json.dumps(i.params, ensure_ascii=False) if i.params is not None else None
            for i in items
        ],
        "due_ats": [i.due_at for i in items],
        "tags": [json.dumps(i.tags) if i.tags is not None else None for i in items],
        "refusals": [
            json.dumps(_storable(i.refusal), ensure_ascii=False) if i.refusal is not None else None
            for i in items
        ],
        "kind": kind,
        "category": str(category),
        "optional": category.optional,
        "lifetime": lifetime.total_seconds() if lifetime is not None else None,
        "test": test,
        "cause": cause,
        "accepted": Event.ACCEPTED.value,
        "channel": OUTBOX_CHANNEL,
        "origin": PROCESS_ORIGIN,
    }
    try:
        row = await connection.fetchrow(_ACCEPT_BATCH.sql, *_ACCEPT_BATCH.args(values))
    except asyncpg.UniqueViolationError:
        # A request with the same key committed first: nothing of this one was stored.
        row = await connection.fetchrow(_ACCEPT_BATCH.sql, *_ACCEPT_BATCH.args(values))
    if row["existing_hash"] is not None:
        return BatchAnswer(
            results=_json(row["existing_results"]),
            accepted=0,
            replayed_hash=bytes(row["existing_hash"]),
        )
    return BatchAnswer(results=_json(row["results"]), accepted=row["accepted"])


def _storable(value: Any) -> Any:
    """A refusal as jsonb can hold it: PostgreSQL refuses NUL in text, and a refused item may
    name a field with one (an unknown key)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


# -- applying transitions: the one way a mail's status and history change ------------------


# What app.emails.lifecycle decided for one mail: a row of the statement below.
@dataclass(frozen=True)
class Change:
    """A transition for one mail; ``attempt`` is the claim's fence (None: unfenced)."""

    message_id: uuid.UUID
    transition: Transition
    attempt: int | None = None

    @property
    def status(self) -> MessageStatus | None:
        return self.transition.status

    @property
    def event(self) -> Event:
        return self.transition.event

    @property
    def detail(self) -> str | None:
        return self.transition.detail

    @property
    def ses_message_id(self) -> str | None:
        return self.transition.ses_message_id

    @property
    def taken_by_ses(self) -> bool:
        return self.transition.taken_by_ses


# The columns of a transition row, as the statement reads them (``t.<name>``), and their type.
_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "uuid"),
    ("attempt", "int"),
    ("status", "text"),
    ("next_attempt_at", "timestamptz"),
    ("retry_in", "float8"),
    ("last_error", "text"),
    ("clears_error", "boolean"),
    ("drops_params", "boolean"),
    ("ses_message_id", "text"),
    ("taken", "boolean"),
    ("kind", "text"),
    ("detail", "text"),
    # SES feedback's only (``feedback=True``): its data, the follow-up line
    ("feedback", "text"),
    ("then_kind", "text"),
    ("then_detail", "text"),
    # The app's events' only (``events=True``)
    ("webhook_type", "text"),
    ("ses_type", "text"),
    ("ses_subtype", "text"),
    ("diagnostic", "text"),
)
_PARAMETERS = tuple(f"m_{name}" for name, _ in _COLUMNS)
_FEEDBACK_COLUMNS = frozenset({"feedback", "then_kind", "then_detail"})
_EVENT_COLUMNS = frozenset({"webhook_type", "ses_type", "ses_subtype", "diagnostic"})


def _row(message_id: uuid.UUID | None, t: Transition, attempt: int | None) -> tuple[Any, ...]:
    ses_type, ses_subtype, diagnostic = t.report.for_app if t.report else (None, None, None)
    return (
        message_id,
        attempt,
        t.status.value if t.status is not None else None,
        t.next_attempt_at,
        t.retry_in,
        t.last_error,
        t.clears_error,
        t.drops_params,
        t.ses_message_id,
        t.taken_by_ses,
        t.event.value,
        t.detail,
        t.report.feedback.value if t.report else None,
        t.then.event.value if t.then else None,
        t.then.detail if t.then else None,
        t.webhook.value if t.webhook else None,
        ses_type,
        ses_subtype,
        diagnostic,
    )


def _values(
    changes: Sequence[tuple[uuid.UUID | None, Transition, int | None]], *, cause: str
) -> dict[str, Any]:
    """The parameters of ``_apply_fragment``: one array per column, one element per change,
    and the statuses the transitions may leave (one set per statement: the worker's all leave
    `sending`; the others apply one transition)."""
    leaves = {t.leaves for _, t, _ in changes}
    if len(leaves) > 1:
        raise ValueError("one statement applies transitions that leave the same statuses")
    left = next(iter(leaves), None)
    rows = [_row(*change) for change in changes]
    columns = list(zip(*rows, strict=True)) or [()] * len(_COLUMNS)
    values = {name: list(column) for name, column in zip(_PARAMETERS, columns, strict=True)}
    return values | _constants(left, cause=cause)


def _constants(leaves: frozenset[str] | None, *, cause: str) -> dict[str, Any]:
    """The parameters one statement has once, whatever its number of changes."""
    return {
        "m_leaves": sorted(leaves) if leaves is not None else None,
        "m_cause": cause,
        "m_erased_mark": ERASED_MARK,
    }


def _apply_fragment(
    *,
    selection: str | None = None,
    feedback: bool = False,
    events: bool = False,
    one: bool = False,
) -> Fragment:
    """The one statement shape: the mails updated by their transitions (one row per change,
    or one transition for every mail ``selection`` picks: a condition on ``m``), each only
    from a status its transitions may leave and fenced by the claim where there is one; the
    history lines of those changed. ``applied`` (the changed mails: ``id``, the new
    ``status``, with ``events`` the transition's ``webhook_type`` and SES's fields) is what
    the app's ``email.*`` events are made of (app.webhooks.deliveries.email_events).
    ``feedback``: SES's part, whose text is recorded with the addresses of ``erased`` (the
    recipients' CTE) replaced, as the erasure replaced them, and whose transition may add a
    line (a resend scheduled). ``one``: at most one change (SES feedback is about one mail),
    its columns as plain parameters (``feedback_values``) rather than arrays of one, which
    encode and plan dearer on the SNS hot path.

    Its plan is made anew on each run (a generic plan of arrays looks dearer): it reads only
    the columns its callers need, which keeps the planning of the hot paths short."""
    columns = [
        (name, kind)
        for name, kind in _COLUMNS
        if (feedback or name not in _FEEDBACK_COLUMNS) and (events or name not in _EVENT_COLUMNS)
    ]
    if one:
        row = ", ".join(f"CAST(:m_{name} AS {kind}) AS {name}" for name, kind in columns)
        changes = f"(SELECT {row}, 1 AS ord) AS t"
    else:
        unnest = ", ".join(f"CAST(:m_{name} AS {kind}[])" for name, kind in columns)
        names = ", ".join(name for name, _ in columns)
        changes = f"unnest({unnest}) WITH ORDINALITY AS t({names}, ord)"
    mine = "m.id = t.id" if selection is None else selection

    def scrub(text: str) -> str:
        if not feedback:
            return text
        return (
            f"COALESCE(regexp_replace({text}, (SELECT pattern FROM erased), "  # noqa: S608
            f"CAST(:m_erased_mark AS text), 'gi'), {text})"
        )

    returned = "t.kind, t.detail"
    lines = "SELECT a.id, a.kind, a.detail, NULL FROM applied AS a"
    if feedback:
        returned += ", t.ord, t.feedback, t.then_kind, t.then_detail"
        lines = f"""SELECT a.id, line.kind, {scrub("line.detail")}, line.feedback
        FROM applied AS a CROSS JOIN LATERAL (VALUES (1, a.kind, a.detail, a.feedback),
            (2, a.then_kind, a.then_detail, NULL)) AS line(n, kind, detail, feedback)
        WHERE line.kind IS NOT NULL
        ORDER BY a.ord, line.n"""  # noqa: S608 (column names only)
    if events:
        returned += f", t.webhook_type, t.ses_type, t.ses_subtype, {scrub('t.diagnostic')}"
        returned += " AS diagnostic"
    sql = f"""
    applied AS (
        UPDATE message AS m SET status = COALESCE(t.status, m.status),
            -- A retry is due after its backoff by the database's clock (as every due time).
            next_attempt_at = COALESCE(t.next_attempt_at,
                now() + make_interval(secs => t.retry_in), m.next_attempt_at),
            ses_message_id = COALESCE(t.ses_message_id, m.ses_message_id),
            last_error = CASE WHEN t.clears_error THEN NULL
                ELSE COALESCE({scrub("t.last_error")}, m.last_error) END,
            params = CASE WHEN t.drops_params THEN NULL ELSE m.params END,
            -- When SES took it: a test key's mail is never sent, and never counts in the
            -- reputation window of sends.
            sent_at = CASE WHEN t.taken THEN now() ELSE m.sent_at END,
            updated_at = CASE WHEN t.status IS NULL THEN m.updated_at ELSE now() END
        FROM {changes}
        WHERE {mine}
            AND (CAST(:m_leaves AS text[]) IS NULL OR m.status = ANY(CAST(:m_leaves AS text[])))
            AND (t.attempt IS NULL OR m.attempts = t.attempt)
        RETURNING m.id, m.status, {returned}
    ),
    history AS (
        INSERT INTO message_event (message_id, kind, detail, feedback, cause)
        SELECT *, CAST(:m_cause AS text) FROM ({lines}) AS line
    )"""  # noqa: S608 (only column names and constant SQL are formatted in)
    return Fragment(sql=sql, prefix="m_", needs=frozenset({"erased"} if feedback else ()))


def _statement(**shape: Any) -> tuple[NamedStatement, NamedStatement]:
    """The statement without and with the app's ``email.*`` events (TEGAMI_WEBHOOK_URL)."""
    select = "SELECT id FROM applied"
    return (
        compose(_apply_fragment(**shape), select=select),
        compose(_apply_fragment(**shape, events=True), webhooks.email_events(), select=select),
    )


_APPLY = _statement()


def _chosen(statements: tuple[NamedStatement, NamedStatement]) -> NamedStatement:
    return statements[1] if webhooks.enabled() else statements[0]


async def apply(
    connection: asyncpg.Connection, *, changes: Sequence[Change], cause: str
) -> set[uuid.UUID]:
    """Apply each change to its mail; returns the mails changed (a fenced change whose claim
    another worker took since, or a mail no longer in a status its transition may leave, is
    left alone and gets no history line)."""
    statement = _chosen(_APPLY)
    if any(c.transition.then is not None for c in changes):
        raise ValueError("only SES feedback's part writes a second history line")
    values = _values([(c.message_id, c.transition, c.attempt) for c in changes], cause=cause)
    rows = await connection.fetch(statement.sql, *statement.args(values))
    return {row["id"] for row in rows}


@dataclass(frozen=True)
class Selection:
    """Which mails one transition applies to (besides the statuses it may leave): these ids,
    these categories, this recipient's; all that are None: every mail in those statuses."""

    ids: Sequence[uuid.UUID] | None = None
    categories: Iterable[Category] | None = None
    recipient_id: int | None = None


_SELECTORS = {
    "ids": "m.id = ANY(CAST(:m_select_ids AS uuid[]))",
    "categories": "m.category = ANY(CAST(:m_select_categories AS text[]))",
    "recipient_id": "m.recipient_id = CAST(:m_select_recipient_id AS int)",
}


@functools.cache
def _selecting(names: tuple[str, ...]) -> tuple[NamedStatement, NamedStatement]:
    condition = " AND ".join([_SELECTORS[name] for name in names] or ["true"])
    return _statement(selection=condition)


async def apply_to(
    executor: AsyncConnection | AsyncSession,
    *,
    transition: Transition,
    selection: Selection,
    cause: str,
) -> list[uuid.UUID]:
    """Apply one transition to every mail ``selection`` picks, in the caller's transaction
    (the ORM's connection or session: the rarely run changes, an operator's or the guard's).
    Returns the mails changed."""
    chosen = {
        "ids": selection.ids if selection.ids is None else list(selection.ids),
        "categories": None if selection.categories is None else list(selection.categories),
        "recipient_id": selection.recipient_id,
    }
    names = tuple(name for name, value in chosen.items() if value is not None)
    statement = _chosen(_selecting(names))
    values = _values([(None, transition, None)], cause=cause)
    values |= {f"m_select_{name}": chosen[name] for name in names}
    rows = await executor.execute(text(statement.source), values)
    return list(rows.scalars())


# -- cancel ------------------------------------------------------------------------------


async def cancel(
    session: AsyncSession, *, message_id: uuid.UUID, cause: str
) -> MessageStatus | None:
    """Stop a mail not yet handed to SES (queued, scheduled, held): None when it is now
    cancelled, else the status that kept it from being (sending, sent, ...). A claim holds its
    rows locked while it marks them `sending`, and the pre-send check needs `sending`: a mail
    is either cancelled before any claim, or claimed and never cancelled."""
    selection = Selection(ids=[message_id])
    if await apply_to(session, transition=lifecycle.cancel(), selection=selection, cause=cause):
        return None
    status = await session.scalar(select(Message.status).where(Message.id == message_id))
    return MessageStatus(status) if status is not None else None


# -- claim -------------------------------------------------------------------------------


def _lane(number: int) -> str:
    return f"""
    lane_{number} AS (
        SELECT id, next_attempt_at - make_interval(secs => CAST(:head_start_{number} AS float8))
            AS key
        FROM message
        WHERE (status IN ('queued', 'scheduled')
                OR (status = 'sending' AND CAST(:reclaim AS boolean)))
            AND category = CAST(:category_{number} AS text)
            AND next_attempt_at <= now()
            AND NOT test
        ORDER BY next_attempt_at
        LIMIT COALESCE((SELECT n FROM room), 0)
        FOR UPDATE SKIP LOCKED
    )"""  # noqa: S608 (only lane numbers are formatted in; values are parameters)


_LANES = tuple(HEAD_STARTS)
_CLAIM = NamedStatement.of(
    f"""
    WITH gate AS (
        SELECT GREATEST(next_slot_at, now()) AS free_at, paused_until, pause_reason,
            -- SES said "slow down" (to any replica) and has not taken a mail since: every
            -- replica books at half the rate.
            CAST(:rate AS float8) * CASE WHEN throttled_at IS NULL THEN 1.0 ELSE 0.5 END
                AS rate,
            throttled_at IS NOT NULL AS throttled
        FROM send_pacer WHERE id = 1
        FOR UPDATE
    ),
    room AS (
        SELECT free_at, paused_until, pause_reason, rate, throttled, CAST(CASE
            -- What the horizon has room for; at least one mail once the next free slot is
            -- inside it (at 1/s a second holds 0.98 of a slot).
            WHEN pause_reason IS NULL THEN LEAST(CAST(:limit AS int), GREATEST(
                CASE WHEN free_at - now() < make_interval(secs => CAST(:horizon AS float8))
                    THEN 1 ELSE 0 END,
                floor((CAST(:horizon AS float8) - EXTRACT(EPOCH FROM free_at - now()))
                    * rate)))
            WHEN paused_until <= now() THEN 1  -- the probe
            ELSE 0
        END AS int) AS n
        FROM gate
    ),
    {",".join(_lane(number) for number in range(len(_LANES)))},
    paced AS (
        SELECT id, key FROM (
            {" UNION ALL ".join(f"SELECT id, key FROM lane_{n}" for n in range(len(_LANES)))}
        ) AS lanes
        ORDER BY key
        LIMIT COALESCE((SELECT n FROM room), 0)
    ),
    -- Test-key mail: what the limit leaves, whatever the pacer or a pause says (but none
    -- without the gate row: the claim is then made again once it exists).
    test_lane AS (
        SELECT id, next_attempt_at AS key
        FROM message
        WHERE test AND (status IN ('queued', 'scheduled')
                OR (status = 'sending' AND CAST(:reclaim AS boolean)))
            AND next_attempt_at <= now()
        ORDER BY next_attempt_at
        LIMIT COALESCE((SELECT GREATEST(0, CAST(:limit AS int) - (SELECT count(*) FROM paced))
            FROM room), 0)
        FOR UPDATE SKIP LOCKED
    ),
    due AS (
        SELECT id, key FROM paced UNION ALL SELECT id, key FROM test_lane
    ),
    claimed AS (
        UPDATE message AS m
        SET status = 'sending', attempts = m.attempts + 1,
            next_attempt_at = now() + make_interval(secs => CAST(:lease AS float8)),
            updated_at = now()
        FROM due WHERE m.id = due.id
        -- A scheduled mail's day of retries counts from when it was due, not accepted.
        RETURNING m.id, m.kind, m.category, m.recipient_id, m.to_address, m.params,
            m.expires_at, m.attempts, COALESCE(m.send_at, m.created_at) AS created_at, m.test,
            m.tags, due.key
    ),
    booked AS (
        UPDATE send_pacer SET
            next_slot_at = (SELECT free_at FROM room)
                + make_interval(secs => (SELECT count(*) FROM paced) / (SELECT rate FROM room)),
            paused_until = CASE WHEN pause_reason IS NULL THEN NULL
                ELSE now() + make_interval(secs => CAST(:probe AS float8)) END
        WHERE id = 1 AND EXISTS (SELECT FROM paced)
    )
    SELECT CAST(EXTRACT(EPOCH FROM room.free_at - now()) AS float8) AS first_slot,
        room.n AS room, room.pause_reason, room.rate, room.throttled,
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
    test: bool = False
    # The app's tags, handed to SES as message tags beside tegami's own.
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """Mails in send order, and the pacing they were booked at: real mail ``i`` has its slot
    ``first_slot + i / rate`` seconds after the claim; test mail has none (``paced``)."""

    mails: list[Claimed]
    first_slot: float
    # How many the gate allowed; 0 while the pacer is booked past the horizon or sending is
    # paused (then ``paused_for`` says for how much longer, before the next probe).
    room: int
    pause_reason: str | None
    paused_for: float
    # The rate the slots were booked at: half the worker's while SES throttles.
    rate: float = 0.0
    throttled: bool = False

    @property
    def probing(self) -> bool:
        return self.pause_reason is not None

    @property
    def paced(self) -> list[Claimed]:
        """The mails that booked a send slot, in slot order: all but test mail."""
        return [mail for mail in self.mails if not mail.test]


async def claim(
    connection: asyncpg.Connection,
    *,
    limit: int,
    rate: float,
    horizon: float,
    lease: float,
    probe: float,
    reclaim: bool = True,
) -> Claim:
    """Claim due mail; with ``reclaim``, also mail whose lease ran out (its worker died, or
    lost the database for longer than the lease)."""
    values: dict[str, Any] = {
        "limit": limit,
        "rate": rate,
        "horizon": horizon,
        "lease": lease,
        "probe": probe,
        "reclaim": reclaim,
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
        rate=head["rate"],
        throttled=head["throttled"],
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
        test=row["test"],
        tags=_json(row["tags"]) or {},
    )


# -- the check right before SendEmail ----------------------------------------------------

# Read, not locked: the claim is still ours (fence), and what the rules say of the address
# now. Between this and SES's answer only the SES call happens.
_CHECK = NamedStatement.of(
    """
    SELECT m.id, m.expires_at, m.last_error, m.to_address IS NULL AS erased,
        -- Judged by the database's clock, which also set expires_at at accept: a worker
        -- whose own clock is behind never sends an expired link.
        m.expires_at <= now() AS expired,
        COALESCE(m.send_at, m.created_at) + make_interval(secs => CAST(:max_age AS float8))
            <= now() AS too_old,
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


async def check_before_send(
    connection: asyncpg.Connection, *, mails: Sequence[Claimed], max_age: timedelta
) -> dict[uuid.UUID, Standing]:
    """Each mail still ours, with its standing; a mail missing from the answer was lost to
    another worker."""
    values = {
        "ids": [m.id for m in mails],
        "attempts": [m.attempt for m in mails],
        "max_age": max_age.total_seconds(),
    }
    rows = await connection.fetch(_CHECK.sql, *_CHECK.args(values))
    return {
        row["id"]: Standing(
            expires_at=row["expires_at"],
            last_error=row["last_error"],
            erased=row["erased"],
            suppressed=row["suppressed"],
            opted_out=row["opted_out"],
            expired=bool(row["expired"]),
            too_old=bool(row["too_old"]),
        )
        for row in rows
    }


# -- finish ------------------------------------------------------------------------------


async def finish(connection: asyncpg.Connection, *, results: Sequence[Change]) -> set[uuid.UUID]:
    """Record the worker's outcomes (one round trip: at a hundred mails a second each batch
    is one mail); returns the mails recorded (the others were lost to another worker's
    claim, and nothing of them was written)."""
    return await apply(connection, changes=results, cause="worker")


# Mails handed to SES whose outcome is not written yet keep their lease: no other worker claims
# them while the worker that sent them still means to record what SES said.
_RENEW = NamedStatement.of(
    """
    UPDATE message AS m SET next_attempt_at = now() + make_interval(secs => CAST(:lease AS float8))
    FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[])) AS mine(id, attempt)
    WHERE m.id = mine.id AND m.attempts = mine.attempt AND m.status = 'sending'
    """
)


async def renew_lease(
    connection: asyncpg.Connection, *, mails: Sequence[Claimed], lease: float
) -> None:
    values = {"ids": [m.id for m in mails], "attempts": [m.attempt for m in mails], "lease": lease}
    await connection.execute(_RENEW.sql, *_RENEW.args(values))


# -- SES feedback (app.sns.feedback applies it, in one transaction) -----------------------

# By SES MessageId, else by the tegami_id tag (the event beat the worker's record of the SES
# MessageId). Locked: the worker may be recording it right now.
_FIND_FOR_FEEDBACK = NamedStatement.of(
    """
    SELECT m.id, m.status, m.expires_at, m.ses_message_id, r.address_hash
    FROM message AS m JOIN recipient AS r ON r.id = m.recipient_id
    WHERE m.ses_message_id = :ses_message_id OR m.id = ANY(CAST(:tagged_ids AS uuid[]))
    ORDER BY m.ses_message_id IS NOT DISTINCT FROM :ses_message_id DESC
    LIMIT 1
    FOR UPDATE OF m
    """
)


@dataclass(frozen=True)
class FeedbackTarget:
    """The message an SES event is about, locked for the feedback's transaction."""

    id: uuid.UUID
    status: MessageStatus
    expires_at: datetime | None
    ses_message_id: str | None
    address_hash: bytes

    @classmethod
    def of(cls, row: asyncpg.Record) -> FeedbackTarget:
        return cls(
            id=row["id"],
            status=MessageStatus(row["status"]),
            expires_at=row["expires_at"],
            ses_message_id=row["ses_message_id"],
            address_hash=bytes(row["address_hash"]),
        )


async def find_for_feedback(
    connection: asyncpg.Connection, *, ses_message_id: str, tagged_ids: Sequence[uuid.UUID]
) -> FeedbackTarget | None:
    row = await connection.fetchrow(
        _FIND_FOR_FEEDBACK.sql,
        *_FIND_FOR_FEEDBACK.args(
            {"ses_message_id": ses_message_id, "tagged_ids": list(tagged_ids)}
        ),
    )
    return FeedbackTarget.of(row) if row is not None else None


# The message's part of SES feedback, composed by app.sns.feedback with the recipients' into
# one statement: SES's text is recorded scrubbed of the addresses of people erased since
# (the recipients' ``erased``); with ``FEEDBACK_WITH_EVENTS``, the app's events read it.
FEEDBACK = _apply_fragment(feedback=True, one=True)
FEEDBACK_WITH_EVENTS = _apply_fragment(feedback=True, events=True, one=True)


def feedback_values(
    target: FeedbackTarget | None, transition: Transition | None, *, cause: str
) -> dict[str, Any]:
    """The parameters of ``FEEDBACK``, one value per column; with no mail found (every column
    NULL, so no id matches), it writes nothing."""
    if target is None or transition is None:
        return dict.fromkeys(_PARAMETERS) | _constants(None, cause=cause)
    row = _row(target.id, transition, None)
    return dict(zip(_PARAMETERS, row, strict=True)) | _constants(transition.leaves, cause=cause)


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


# SES throttled a call: every replica's claims book at half the rate from now on, and the
# slots already booked ahead at the full rate are spread over twice the time (the first
# throttle of an episode only: later ones would halve again and again).
_THROTTLE = NamedStatement.of(
    """
    UPDATE send_pacer AS gate SET throttled_at = now(),
        next_slot_at = CASE WHEN gate.throttled_at IS NULL AND gate.next_slot_at > now()
            THEN now() + 2 * (gate.next_slot_at - now()) ELSE gate.next_slot_at END
    FROM (SELECT throttled_at FROM send_pacer WHERE id = 1) AS before
    WHERE gate.id = 1
    RETURNING before.throttled_at IS NULL
    """
)
# SES took a mail again, with no throttle for ``quiet`` seconds: the full rate is back.
_UNTHROTTLE = NamedStatement.of(
    """
    UPDATE send_pacer SET throttled_at = NULL
    WHERE id = 1 AND throttled_at <= now() - make_interval(secs => CAST(:quiet AS float8))
    RETURNING true
    """
)


async def throttle(connection: asyncpg.Connection) -> bool:
    """Halve every replica's rate; True if this began the slowdown."""
    began = await connection.fetchval(_THROTTLE.sql)
    return bool(began)


async def unthrottle(connection: asyncpg.Connection, *, quiet: float) -> bool:
    """Back to the full rate; True if it was halved."""
    ended = await connection.fetchval(_UNTHROTTLE.sql, *_UNTHROTTLE.args({"quiet": quiet}))
    return bool(ended)


# -- erasure (app.erasure orchestrates it with the recipient's owner) ----------------------

# Every mail of the recipient loses its address, params and the app's user id; free text
# that quotes the address (``:m_pattern``, app.recipients.addresses.quoted_address_pattern's)
# is scrubbed on the mails and their history.
_WIPE = text(
    """
    UPDATE message SET to_address = NULL, params = NULL, user_id = NULL, updated_at = now()
    WHERE recipient_id = :m_recipient_id
        AND (to_address IS NOT NULL OR params IS NOT NULL OR user_id IS NOT NULL)
    """
)
_SCRUB = text(
    """
    WITH errors AS (
        UPDATE message SET last_error = regexp_replace(last_error, :m_pattern, :m_mark, 'gi')
        WHERE recipient_id = :m_recipient_id AND last_error ~* :m_pattern
    )
    UPDATE message_event SET detail = regexp_replace(detail, :m_pattern, :m_mark, 'gi')
    WHERE message_id IN (SELECT id FROM message WHERE recipient_id = :m_recipient_id)
        AND detail ~* :m_pattern
    """
)


async def erase_mail(session: AsyncSession, *, recipient_id: int, address: str, cause: str) -> bool:
    """Erase a recipient's personal data from its mail: every mail loses its address, params
    and the app's user id, mail not yet claimed is not sent (failed: the app hears
    `email.failed`, without the address), and free text that quotes the address is
    scrubbed. True when anything was there to erase."""
    mine = {"m_recipient_id": recipient_id}
    wiped = await session.execute(_WIPE, mine)
    await apply_to(
        session,
        transition=lifecycle.erase(),
        selection=Selection(recipient_id=recipient_id),
        cause=cause,
    )
    pattern = {"m_pattern": quoted_address_pattern(address), "m_mark": ERASED_MARK}
    await session.execute(_SCRUB, mine | pattern)
    return bool(wiped.rowcount)  # type: ignore[attr-defined]


# -- the reputation guard ----------------------------------------------------------------

# Optional mail waits as `held` while the guard holds, and goes back to the queue after.
GUARD_CAUSE = "reputation_guard"
_FINAL_STATUSES = (
    MessageStatus.CANCELLED,
    MessageStatus.EXPIRED,
    MessageStatus.FAILED,
    MessageStatus.DELIVERED,
    MessageStatus.BOUNCED,
    MessageStatus.COMPLAINED,
)


async def hold_optional(connection: AsyncConnection, *, categories: Iterable[Category]) -> int:
    held = await apply_to(
        connection,
        transition=lifecycle.hold(),
        selection=Selection(categories=categories),
        cause=GUARD_CAUSE,
    )
    return len(held)


async def release_held(
    connection: AsyncConnection,
    *,
    ids: Sequence[uuid.UUID] | None = None,
    cause: str = GUARD_CAUSE,
) -> int:
    """Held mail (all of it, or ``ids``) back to the queue, due now."""
    transition = lifecycle.release(by_operator=cause != GUARD_CAUSE)
    return len(
        await apply_to(connection, transition=transition, selection=Selection(ids=ids), cause=cause)
    )


async def discard_held(
    connection: AsyncConnection, *, ids: Sequence[uuid.UUID] | None, cause: str
) -> int:
    """Held mail (all of it, or ``ids``) is never sent: failed, with the operator's cause."""
    discarded = await apply_to(
        connection, transition=lifecycle.discard(), selection=Selection(ids=ids), cause=cause
    )
    return len(discarded)


@dataclass(frozen=True)
class HeldMail:
    id: uuid.UUID
    kind: str
    category: str
    created_at: datetime
    to_address: str | None
    # The newest `held` line of its history: why and since when.
    why: str | None
    held_at: datetime | None


async def held_mail(connection: AsyncConnection) -> list[HeldMail]:
    """Mail the reputation guard holds, oldest first."""
    last_hold = (
        select(MessageEvent.detail, MessageEvent.created_at)
        .where(MessageEvent.message_id == Message.id, MessageEvent.kind == Event.HELD)
        .order_by(MessageEvent.created_at.desc())
        .limit(1)
        .lateral("last_hold")
    )
    rows = await connection.execute(
        select(
            Message.id,
            Message.kind,
            Message.category,
            Message.created_at,
            Message.to_address,
            last_hold.c.detail,
            last_hold.c.created_at,
        )
        .outerjoin(last_hold, true())
        .where(Message.status == MessageStatus.HELD)
        .order_by(Message.created_at)
    )
    return [HeldMail(*row) for row in rows]


# -- retention ---------------------------------------------------------------------------


async def drop_spent_params(connection: AsyncConnection) -> int:
    """Link params hold tokens: dropped once the mail can no longer be sent again: final mail
    at once; sent mail when its link expires (a soft bounce may still resend it until then),
    or 72 hours after sending when it has no expiry."""
    now = func.now()
    sent_and_spent = and_(
        Message.status == MessageStatus.SENT,
        or_(
            Message.expires_at < now,
            and_(Message.expires_at.is_(None), Message.sent_at < now - timedelta(hours=72)),
        ),
    )
    statement = (
        update(Message)
        .where(
            Message.params.is_not(None),
            or_(Message.status.in_(_FINAL_STATUSES), sent_and_spent),
        )
        # null(): a bare None would be stored as the JSON value null, not SQL NULL.
        .values(params=null(), updated_at=now)
    )
    return (await connection.execute(statement)).rowcount


async def delete_old(connection: AsyncConnection, *, days: int, batch: int) -> int:
    """Up to ``batch`` finished mails older than ``days`` (their events go with them)."""
    oldest = (
        select(Message.id)
        .where(
            Message.created_at < func.now() - timedelta(days=days),
            Message.status.not_in((*PENDING_STATUSES, MessageStatus.HELD, MessageStatus.SCHEDULED)),
        )
        .order_by(Message.created_at)
        .limit(batch)
    )
    return (await connection.execute(delete(Message).where(Message.id.in_(oldest)))).rowcount
