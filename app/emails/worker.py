"""The outbox worker: claims due mails, re-checks the rules, sends at the shared rate, records.

Any number of workers share one database: claims use ``FOR UPDATE SKIP LOCKED`` and a lease
(``next_attempt_at`` moves ahead while a mail is being sent), so a worker that dies mid-send
only delays its mails until the lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import MailBackend, Settings
from app.db import NamedStatement, driver_connection
from app.emails.catalog import EMAIL_KINDS, OPTIONAL_CATEGORIES, Category
from app.emails.pacer import reserve_slots
from app.emails.rendering import SenderInfo, render_email
from app.emails.sender import Outcome, OutgoingMail, Sender, SendError
from app.emails.service import OUTBOX_CHANNEL, PROCESS_ORIGIN
from app.models import MessageStatus
from app.ops.metrics import (
    EMAILS_FAILED,
    EMAILS_SENT,
    SEND_LATENCY,
    SEND_RETRIES,
    SES_CALL_LATENCY,
)
from app.ops.reputation import ReputationWatch
from app.ops.retention import purge_forever
from app.recipients.addresses import mask_address
from app.unsubscribe.tokens import UnsubscribeClaim, make_token

log = logging.getLogger(__name__)
T = TypeVar("T")

LEASE = timedelta(seconds=60)
# Mail without a link lifetime is retried for a day at most, then failed.
MAX_RETRY_AGE = timedelta(hours=24)
# Backoff cap: once SES is back, every waiting mail goes out within this (plus jitter).
MAX_BACKOFF_SECONDS = 30.0
PAUSED_RETRY_SECONDS = 60.0
RATE_REFRESH_SECONDS = 300.0
FALLBACK_RATE = 1.0
MAILBOX_RATE = 100.0
# Slots are spaced for 98 % of the rate: a send that leaves late (a slow render, a busy
# event loop) bunches with the next ones, and SES must still never see more than its rate
# over any window (measured: 14.1/s over 10 s at 100 %; bench/README.md).
PACING_MARGIN = 0.98

# One statement, run on asyncpg's connection in autocommit (app.db.driver_connection): it
# is on the way from accept to SES, where SQLAlchemy's transaction (BEGIN, statement, COMMIT)
# tripled the round trips and their waits behind other work in the process.
_CLAIM = NamedStatement.of(
    """
    WITH due AS (
        SELECT id FROM message
        WHERE status IN ('queued', 'sending') AND next_attempt_at <= now()
        ORDER BY next_attempt_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE message AS m
    SET status = 'sending', attempts = m.attempts + 1,
        next_attempt_at = now() + make_interval(secs => :lease), updated_at = now()
    FROM due WHERE m.id = due.id
    RETURNING m.id, m.kind, m.category, m.recipient_id, m.to_address, m.params, m.expires_at,
        m.attempts, m.created_at,
        (SELECT s.reason FROM suppression s JOIN recipient r ON r.address_hash = s.address_hash
         WHERE r.id = m.recipient_id) AS suppressed,
        EXISTS (SELECT 1 FROM opt_out o
                WHERE o.recipient_id = m.recipient_id AND o.category = m.category) AS opted_out
    """
)

# The outcomes of a batch and their history, in one statement (one round trip, one
# transaction) on asyncpg's connection: at a hundred mails a second each batch is one mail,
# and SQLAlchemy's transaction around two statements cost nearly as much CPU as the send.
_FINISH = NamedStatement.of(
    """
    WITH outcome AS (
        SELECT * FROM unnest(
            CAST(:ids AS uuid[]), CAST(:statuses AS text[]),
            CAST(:next_attempts AS timestamptz[]), CAST(:ses_message_ids AS text[]),
            CAST(:last_errors AS text[]), CAST(:kinds AS text[]), CAST(:details AS text[])
        ) AS o(id, status, next_attempt_at, ses_message_id, last_error, kind, detail)
    ),
    finished AS (
        UPDATE message AS m SET status = o.status, next_attempt_at = o.next_attempt_at,
            ses_message_id = COALESCE(o.ses_message_id, m.ses_message_id),
            last_error = o.last_error,
            sent_at = CASE WHEN o.status = 'sent' THEN now() ELSE m.sent_at END,
            updated_at = now()
        FROM outcome AS o
        WHERE m.id = o.id AND m.status = 'sending'
    )
    INSERT INTO message_event (message_id, kind, detail, cause)
    SELECT id, kind, detail, 'worker' FROM outcome
    """
)


@dataclass(frozen=True)
class Claimed:
    id: uuid.UUID
    kind: str
    category: str
    recipient_id: int
    to_address: str | None
    params: dict[str, str] | None
    expires_at: datetime | None
    attempts: int
    created_at: datetime
    suppressed: str | None
    opted_out: bool


@dataclass(frozen=True)
class Result:
    message_id: uuid.UUID
    status: MessageStatus
    event: str
    detail: str | None = None
    ses_message_id: str | None = None
    next_attempt_at: datetime | None = None


def _claimed(row: Mapping[str, Any]) -> Claimed:
    fields = dict(row)
    if isinstance(fields["params"], str):  # jsonb arrives as text on the driver connection
        fields["params"] = json.loads(fields["params"])
    return Claimed(**fields)


def backoff_seconds(attempts: int) -> float:
    """Exponential from 1 s, capped, with jitter so retries from many mails spread out."""
    ceiling = min(MAX_BACKOFF_SECONDS, 2.0 ** max(0, attempts - 1))
    return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not security)


def retry_deadline(message: Claimed) -> datetime:
    return message.expires_at or message.created_at + MAX_RETRY_AGE


class Worker:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        sender: Sender,
        settings: Settings,
        wake: asyncio.Event | None = None,
        batch_size: int = 100,
        poll_seconds: float = 1.0,
        reputation: ReputationWatch | None = None,
    ) -> None:
        self.engine = engine
        self.sender = sender
        self.settings = settings
        self.wake = wake or asyncio.Event()
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.reputation = reputation
        self.rate = settings.max_send_rate or FALLBACK_RATE
        self._in_flight: set[asyncio.Task[None]] = set()
        self._in_flight_count = 0
        self._sender_info = SenderInfo(
            name=settings.sender_name,
            postal_address=settings.sender_postal_address,
            contact=settings.sender_contact,
        )

    # -- rate ---------------------------------------------------------------------------

    async def refresh_rate(self) -> float:
        """TEGAMI_MAX_SEND_RATE when set; else SES's MaxSendRate; else 1/s, said in the log."""
        if self.settings.max_send_rate:
            self.rate = self.settings.max_send_rate
            return self.rate
        try:
            rate = await self.sender.max_send_rate()
        except Exception as exc:  # any failure to read it leaves the safe rate
            log.warning(
                "could not read MaxSendRate from SES; sending at %s/s",
                FALLBACK_RATE,
                extra={"event": "send_rate_unknown", "error": repr(exc)},
            )
            self.rate = FALLBACK_RATE
            return self.rate
        if rate is None:
            default = MAILBOX_RATE if self.settings.mail_backend == MailBackend.MAILBOX else None
            if default is None:
                log.warning("SES did not report MaxSendRate; sending at %s/s", FALLBACK_RATE)
            self.rate = default or FALLBACK_RATE
        else:
            self.rate = rate
        log.info("send rate %s/s", self.rate, extra={"event": "send_rate", "rate": self.rate})
        return self.rate

    # -- one round ------------------------------------------------------------------------

    async def claim(self, limit: int) -> list[Claimed]:
        async with driver_connection(self.engine) as conn:
            rows = await conn.fetch(
                _CLAIM.sql, *_CLAIM.args({"limit": limit, "lease": LEASE.total_seconds()})
            )
        return [_claimed(row) for row in rows]

    async def process(self, batch: list[Claimed]) -> None:
        """Send a claimed batch at the shared rate and record every outcome."""
        now = datetime.now(UTC)
        results: list[Result] = []
        sendable: list[Claimed] = []
        for message in batch:
            verdict = self._verdict(message, now)
            if verdict is None:
                sendable.append(message)
            else:
                results.append(verdict)
        if sendable:
            rate = self.rate * PACING_MARGIN
            # Tried again while the database is away: a batch dropped here would wait for
            # its lease (a minute) before any worker sent it.
            first = await _retrying(
                lambda: reserve_slots(self.engine, count=len(sendable), rate=rate),
                within=LEASE.total_seconds() / 2,
            )
            loop = asyncio.get_running_loop()
            start = loop.time() + first
            results.extend(
                await asyncio.gather(
                    *(self._send_at(m, start + i / rate) for i, m in enumerate(sendable))
                )
            )
        await self._record(results)
        _count(results, kinds={m.id: m.kind for m in batch})

    def _verdict(self, message: Claimed, now: datetime) -> Result | None:
        """A result without sending (expired, suppressed, opted out), or None to send."""
        if message.expires_at is not None and message.expires_at <= now:
            return Result(message.id, MessageStatus.EXPIRED, "expired", "the link expired")
        if message.suppressed is not None:
            return Result(
                message.id, MessageStatus.FAILED, "blocked", f"suppressed: {message.suppressed}"
            )
        if message.opted_out and Category(message.category) in OPTIONAL_CATEGORIES:
            return Result(
                message.id, MessageStatus.FAILED, "blocked", f"opted_out: {message.category}"
            )
        if message.to_address is None or message.params is None:
            return Result(message.id, MessageStatus.FAILED, "blocked", "recipient erased")
        if self.reputation is not None and self.reputation.holds(message.category):
            return Result(
                message.id,
                MessageStatus.HELD,
                "held",
                "bounce or complaint rate over SES's review level",
                next_attempt_at=now,
            )
        return None

    def unsubscribe_url(self, recipient_id: int, now: datetime) -> str:
        claim = UnsubscribeClaim(
            recipient_id=recipient_id, category=Category.MATCHING, issued_at=int(now.timestamp())
        )
        secret = self.settings.unsubscribe_secret[0].get_secret_value()
        return f"{self.settings.public_base_url}/unsubscribe/{make_token(claim, secret=secret)}"

    def render(self, message: Claimed, now: datetime) -> OutgoingMail:
        assert message.to_address is not None and message.params is not None
        raw = render_email(
            kind=EMAIL_KINDS[message.kind],
            params=message.params,
            to=message.to_address,
            from_address=self.settings.from_address,
            unsubscribe_url=self.unsubscribe_url(message.recipient_id, now),
            sender=self._sender_info,
            now=now,
        )
        return OutgoingMail(
            raw=raw,
            to=message.to_address,
            from_address=self.settings.from_address,
            tags={"tegami_id": str(message.id), "tegami_type": message.kind},
        )

    async def _send_at(self, message: Claimed, when: float) -> Result:
        delay = when - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)
        now = datetime.now(UTC)
        try:
            mail = self.render(message, now)
        except (KeyError, ValueError) as exc:
            return Result(message.id, MessageStatus.FAILED, "send_failed", f"render: {exc}")
        started = time.perf_counter()
        try:
            ses_id = await self.sender.send(mail)
        except SendError as exc:
            return self._after_error(message, exc, now)
        finally:
            SES_CALL_LATENCY.observe(time.perf_counter() - started)
        SEND_LATENCY.observe((datetime.now(UTC) - message.created_at).total_seconds())
        log.info(
            "sent",
            extra={
                "event": "email_sent",
                "email_id": str(message.id),
                "type": message.kind,
                "to": mask_address(mail.to),
                "ses_message_id": ses_id,
            },
        )
        return Result(message.id, MessageStatus.SENT, "sent", ses_message_id=ses_id)

    def _after_error(self, message: Claimed, exc: SendError, now: datetime) -> Result:
        reason = f"{exc.code}: {exc.message}"[:1000]
        if exc.outcome is Outcome.PERMANENT:
            log.warning(
                "SES refused a mail",
                extra={"event": "email_failed", "email_id": str(message.id), "error": exc.code},
            )
            return Result(message.id, MessageStatus.FAILED, "send_failed", reason)
        wait = (
            PAUSED_RETRY_SECONDS
            if exc.outcome is Outcome.PAUSED
            else backoff_seconds(message.attempts)
        )
        next_attempt = now + timedelta(seconds=wait)
        if next_attempt >= retry_deadline(message):
            status = MessageStatus.EXPIRED if message.expires_at else MessageStatus.FAILED
            return Result(message.id, status, "gave_up", reason)
        SEND_RETRIES.labels(outcome=exc.outcome.value).inc()
        log.info(
            "SES send will be retried",
            extra={
                "event": "email_retry",
                "email_id": str(message.id),
                "error": exc.code,
                "retry_in": round(wait, 2),
            },
        )
        return Result(
            message.id,
            MessageStatus.QUEUED,
            "send_retry",
            f"{reason} (next attempt in {wait:.1f}s)",
            next_attempt_at=next_attempt,
        )

    async def _record(self, results: list[Result]) -> None:
        """Write the outcomes; retried for a while, because a mail sent but not recorded
        would be sent again when its lease runs out."""
        if not results:
            return
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "ids": [r.message_id for r in results],
            "statuses": [r.status.value for r in results],
            "next_attempts": [r.next_attempt_at or now for r in results],
            "ses_message_ids": [r.ses_message_id for r in results],
            "last_errors": [None if r.status is MessageStatus.SENT else r.detail for r in results],
            "kinds": [r.event for r in results],
            "details": [r.ses_message_id or r.detail for r in results],
        }
        delay = 0.5
        deadline = asyncio.get_running_loop().time() + LEASE.total_seconds() / 2
        while True:
            try:
                async with driver_connection(self.engine) as conn:
                    await conn.execute(_FINISH.sql, *_FINISH.args(values))
                return
            except Exception:
                if asyncio.get_running_loop().time() > deadline:
                    log.exception("could not record send results", extra={"event": "record_failed"})
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def drain(self) -> int:
        """Process until nothing is due now (tests, one-off runs). Returns how many were handled."""
        handled = 0
        while batch := await self.claim(self.batch_size):
            await self.process(batch)
            handled += len(batch)
        return handled

    # -- the loop -------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Claim and send until ``stopping`` is set; then finish what is in flight."""
        await self.refresh_rate()
        tasks = [
            asyncio.create_task(self._listen(stopping)),
            asyncio.create_task(self._refresh_rate_forever(stopping)),
        ]
        if self.reputation is not None:
            tasks.append(asyncio.create_task(self.reputation.run(stopping)))
        tasks.append(
            asyncio.create_task(
                purge_forever(
                    self.engine, retention_days=self.settings.retention_days, stopping=stopping
                )
            )
        )
        try:
            await self._loop(stopping)
        finally:
            if self._in_flight:
                await asyncio.gather(*self._in_flight, return_exceptions=True)
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _loop(self, stopping: asyncio.Event) -> None:
        errors = 0
        while not stopping.is_set():
            if self.reputation is not None and self.reputation.account_paused:
                # SES says the account cannot send: wait, fail nothing.
                await self._pause(stopping, PAUSED_RETRY_SECONDS)
                continue
            # Claim no more than can be sent now: concurrency room, and about a second of rate.
            room = self.settings.send_concurrency - self._in_flight_count
            if room <= 0:
                await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            self.wake.clear()
            limit = max(1, min(self.batch_size, room, int(self.rate)))
            try:
                batch = await self.claim(limit)
                errors = 0
            except Exception as exc:
                errors += 1
                log.warning(
                    "claim failed; retrying", extra={"event": "claim_failed", "error": repr(exc)}
                )
                await self._pause(stopping, min(30.0, 0.5 * 2**errors))
                continue
            if batch:
                self._start(batch)
            if len(batch) < limit:
                # Nothing more was due: wait for new mail (or the poll) rather than claim
                # again at once, which at a steady trickle doubled the claims.
                await self._pause(stopping, self.poll_seconds)

    def _start(self, batch: list[Claimed]) -> None:
        self._in_flight_count += len(batch)
        task = asyncio.create_task(self.process(batch))
        self._in_flight.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._in_flight.discard(finished)
            self._in_flight_count -= len(batch)
            if not finished.cancelled() and finished.exception() is not None:
                log.error("batch failed", exc_info=finished.exception())

        task.add_done_callback(done)

    async def _pause(self, stopping: asyncio.Event, seconds: float) -> None:
        """Sleep until new mail, stop, or timeout."""
        await _first_of(self.wake, stopping, within=seconds)

    async def _refresh_rate_forever(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await asyncio.sleep(RATE_REFRESH_SECONDS)
            await self.refresh_rate()

    async def _listen(self, stopping: asyncio.Event) -> None:
        """LISTEN for mail accepted by other replicas; reconnects when the database drops."""

        def notified(_conn: object, _pid: int, _channel: str, origin: object) -> None:
            if origin != PROCESS_ORIGIN:
                self.wake.set()

        while not stopping.is_set():
            try:
                async with self.engine.connect() as conn:
                    raw = (await conn.get_raw_connection()).driver_connection
                    assert raw is not None
                    closed = asyncio.Event()
                    raw.add_termination_listener(lambda _conn, done=closed: done.set())
                    await raw.add_listener(OUTBOX_CHANNEL, notified)
                    try:
                        await _first_of(stopping, closed)
                    finally:
                        if not raw.is_closed():
                            await raw.remove_listener(OUTBOX_CHANNEL, notified)
            except Exception as exc:
                log.info(
                    "LISTEN connection lost", extra={"event": "listen_lost", "error": repr(exc)}
                )
                await asyncio.sleep(2.0)


async def _retrying(operation: Callable[[], Awaitable[T]], *, within: float) -> T:
    """``operation``, tried again with backoff for ``within`` seconds, then its error."""
    delay = 0.5
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            return await operation()
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _first_of(*events: asyncio.Event, within: float | None = None) -> None:
    """Return when any of ``events`` is set, or after ``within`` seconds."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _count(results: list[Result], *, kinds: dict[uuid.UUID, str]) -> None:
    for result in results:
        kind = kinds.get(result.message_id, "unknown")
        if result.status is MessageStatus.SENT:
            EMAILS_SENT.labels(type=kind).inc()
        elif result.status is MessageStatus.EXPIRED:
            EMAILS_FAILED.labels(type=kind, reason="expired").inc()
        elif result.status is MessageStatus.FAILED:
            # The SES error code, or suppressed / opted_out / render: a small, fixed set.
            reason = (result.detail or result.event).split(":")[0]
            EMAILS_FAILED.labels(type=kind, reason=reason).inc()
