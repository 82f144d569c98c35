"""The outbox worker: claims due mail, checks it right before SendEmail, sends at the shared
rate, records what happened as SES answers.

Any number of workers share one database; the statements, and how claims are fenced, sized
and ordered, are in ``app.emails.outbox``. A worker that dies mid-send delays its mails only
until their lease runs out, and a SIGKILL sends again only the calls SES had not answered (or
answered in the last few milliseconds): each answer is written within ``RECORD_GROUP_SECONDS``.

An answered send is recorded whatever it takes: the write is tried again with no deadline
while the worker keeps renewing the lease of the mails it holds, and mail whose lease ran out
is claimed again only by a worker that has had the database for a whole lease (so never while
its own writes are waiting: a worker that lost the database for longer than the lease records
what SES said before anyone sends those mails again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import MailBackend, Settings
from app.db import driver_connection
from app.emails import lifecycle, outbox, scheduling
from app.emails.catalog import EMAIL_KINDS
from app.emails.guard import REPUTATION_CHANNEL, Guard
from app.emails.lifecycle import Event, Standing
from app.emails.links import UnsubscribeLinks
from app.emails.outbox import OUTBOX_CHANNEL, PROCESS_ORIGIN, Change, Claim, Claimed
from app.emails.rendering import SenderInfo, render_email
from app.emails.sender import Outcome, OutgoingMail, Sender, SendError
from app.models import MessageStatus
from app.ops.alerts import post_alert
from app.ops.metrics import (
    EMAILS_FAILED,
    EMAILS_SENT,
    SEND_LATENCY,
    SEND_RETRIES,
    SES_CALL_LATENCY,
)
from app.recipients.addresses import mask_address
from app.retry import backoff, retrying

log = logging.getLogger(__name__)

# While SES refuses the account, one mail is tried this often; the first that goes out
# resumes sending.
PROBE_SECONDS = 10.0
# A claim books at most this much of the shared pacing ahead: a password reset behind a
# backlog waits for about this plus its own slot.
CLAIM_HORIZON_SECONDS = 1.0
# Mails whose slots fall within this of each other share one pre-send check.
CHECK_GROUP_SECONDS = 0.05
RATE_REFRESH_SECONDS = 300.0
# While SES says the account cannot send (GetAccount), the worker looks again this often.
ACCOUNT_PAUSED_WAIT_SECONDS = 60.0
FALLBACK_RATE = 1.0
MAILBOX_RATE = 100.0
# Answers that come in within this of each other are written in one statement: a SIGKILL sends
# again only what SES had not answered this long before (the bench's drain: see bench/NOTES.md).
RECORD_GROUP_SECONDS = 0.02
# Writing an answered send is tried again this often at most, for as long as it takes.
RECORD_RETRY_CAP_SECONDS = 2.0
# Throttled, and then SES took a mail with no throttle for this long: full rate again.
THROTTLE_QUIET_SECONDS = 1.0
# On throttling, GetAccount is read again at once, but not more often than this.
RATE_REREAD_SECONDS = 10.0
# Slots are spaced for 98 % of the rate: a send that leaves late (a slow render, a busy
# event loop) bunches with the next ones, and SES must still never see more than its rate
# over any window (measured: 14.1/s over 10 s at 100 %; bench/README.md).
PACING_MARGIN = 0.98


class Worker:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        sender: Sender,
        settings: Settings,
        links: UnsubscribeLinks,
        wake: asyncio.Event | None = None,
        batch_size: int = 100,
        poll_seconds: float = 1.0,
        reputation: Guard | None = None,
        http: httpx.AsyncClient | None = None,
        probe_seconds: float = PROBE_SECONDS,
    ) -> None:
        self.engine = engine
        self.sender = sender
        self.settings = settings
        self.links = links
        self.wake = wake or asyncio.Event()
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.reputation = reputation
        self.http = http
        self.probe_seconds = probe_seconds
        self.account_wait_seconds = ACCOUNT_PAUSED_WAIT_SECONDS
        self.lease = settings.send_lease_seconds
        self.rate = settings.max_send_rate or FALLBACK_RATE
        self._in_flight: set[asyncio.Task[None]] = set()
        self._in_flight_count = 0
        # Event-loop time of the last failed database call (None: none yet). Mail whose lease
        # ran out is claimed again only a whole lease after it (``may_reclaim``).
        self._db_trouble_at: float | None = None
        # Event-loop time SES last throttled a call; each claim's remaining slots spread out.
        self._throttled_at: float | None = None
        self._throttle_written_at = -1e9
        self._reread = asyncio.Event()
        self._reread_at = -1e9
        self._background: set[asyncio.Task[None]] = set()
        self.quiet = scheduling.QuietHours.of(settings.quiet_hours, settings.timezone)
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

    @property
    def paced_rate(self) -> float:
        return self.rate * PACING_MARGIN

    # -- one round ------------------------------------------------------------------------

    def db_trouble(self) -> None:
        self._db_trouble_at = asyncio.get_running_loop().time()

    @property
    def may_reclaim(self) -> bool:
        """Whether this worker may take over mail whose lease ran out: only once it has had
        the database for a whole lease. A lease that ran out while the database was away says
        nothing about its worker, which renews it (or records the outcome) within seconds of
        the database's return."""
        if self._db_trouble_at is None:
            return True
        return asyncio.get_running_loop().time() - self._db_trouble_at >= self.lease

    async def claim(self, limit: int) -> Claim:
        try:
            async with driver_connection(self.engine) as conn:
                return await outbox.claim(
                    conn,
                    limit=limit,
                    rate=self.paced_rate,
                    horizon=CLAIM_HORIZON_SECONDS,
                    lease=self.lease,
                    probe=self.probe_seconds,
                    reclaim=self.may_reclaim,
                )
        except Exception:
            self.db_trouble()
            raise

    def claim_wait(self, claim: Claim) -> float:
        """How long to wait before claiming again after a claim the gate gave no room."""
        if claim.pause_reason is not None:
            return max(0.05, min(claim.paused_for, self.probe_seconds))
        # Claim again once about half the horizon (or at least one slot) has been sent.
        refill = max(CLAIM_HORIZON_SECONDS / 2, 1 / (claim.rate or self.paced_rate))
        return max(0.02, claim.first_slot - (CLAIM_HORIZON_SECONDS - refill))

    async def process(self, claim: Claim) -> None:
        """Send a claim's mails in their slots, each checked right before; each outcome is
        recorded as it comes (``Recorder``), and the claim's leases renewed until it is."""
        loop = asyncio.get_running_loop()
        start = loop.time() + claim.first_slot
        rate = claim.rate or self.paced_rate
        # Test mail booked no slot (it never reaches SES): it goes at once, beside real mail.
        slots = sorted(
            [(start + i / rate, mail) for i, mail in enumerate(claim.paced)]
            + [(loop.time(), mail) for mail in claim.mails if mail.test],
            key=lambda slot: slot[0],
        )
        recorder = Recorder(self, claim.mails)
        recording = asyncio.create_task(recorder.run())
        renewing = asyncio.create_task(self._renew(recorder))
        # Booked at half the rate already: SES's throttling is in the slots. A throttle from
        # before this claim is in the pacer's answer; one during it spreads what is left.
        spread = claim.throttled
        began = loop.time()
        sends: list[asyncio.Task[None]] = []
        try:
            while slots:
                if not spread and (self._throttled_at or 0.0) >= began:
                    # SES throttles: the rest of this claim goes out at half its rate.
                    spread = True
                    now = loop.time()
                    slots = [(now + 2 * max(0.0, when - now), mail) for when, mail in slots]
                lead = slots[0][0] - CHECK_GROUP_SECONDS - loop.time()
                if lead > 0:
                    await asyncio.sleep(lead)
                horizon = loop.time() + CHECK_GROUP_SECONDS
                group = [slot for slot in slots if slot[0] <= horizon]
                slots = slots[len(group) :]
                try:
                    standings = await self._check([mail for _, mail in group])
                except Exception as exc:
                    # Unchecked mail is not sent: its lease runs out and a worker claims it
                    # again. The sends already made are still recorded.
                    log.warning(
                        "pre-send check failed; those mails wait for their lease",
                        extra={"event": "check_failed", "error": repr(exc), "mails": len(group)},
                    )
                    recorder.let_go(mail for _, mail in group)
                    continue
                for when, mail in group:
                    standing = standings.get(mail.id)
                    if standing is None:
                        _log_lost(mail.id, "before sending")
                        recorder.let_go([mail])
                        continue
                    stopped = self._stopped(mail, standing)
                    if stopped is not None:
                        recorder.add(stopped)
                    else:
                        sends.append(
                            asyncio.create_task(self._send_and_record(mail, when, recorder))
                        )
            await asyncio.gather(*sends)
        finally:
            recorder.close()
            try:
                await recording
            finally:
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
        await self._gate(claim, recorder.results)
        _count([r for r in recorder.results if r.message_id in recorder.recorded], claim.mails)

    async def _send_and_record(self, mail: Claimed, when: float, recorder: Recorder) -> None:
        recorder.add(await self._send_at(mail, when))

    async def _check(self, mails: Sequence[Claimed]) -> dict[uuid.UUID, Standing]:
        async def check() -> dict[uuid.UUID, Standing]:
            try:
                async with driver_connection(self.engine) as conn:
                    return await outbox.check_before_send(
                        conn, mails=mails, max_age=lifecycle.MAX_RETRY_AGE
                    )
            except Exception:
                self.db_trouble()
                raise

        # Tried again while the database is away, within a part of the lease.
        return await retrying(check, within=self.lease / 4)

    async def _renew(self, recorder: Recorder) -> None:
        """Renew the lease of the claim's mails not yet recorded, until they are: no other
        worker claims a mail whose outcome this one still means to write."""
        while True:
            await asyncio.sleep(self.lease / 3)
            mails = recorder.unwritten()
            if not mails:
                continue
            try:
                async with driver_connection(self.engine) as conn:
                    await outbox.renew_lease(conn, mails=mails, lease=self.lease)
            except Exception as exc:  # the database is away: tried again next time round
                self.db_trouble()
                log.info(
                    "could not renew leases", extra={"event": "renew_failed", "error": repr(exc)}
                )

    def _stopped(self, mail: Claimed, standing: Standing) -> Change | None:
        """A result without sending (expired, suppressed, opted out, held, given up), or None
        to send: the rules as they stand right before SendEmail, times by the database's
        clock."""
        transition = lifecycle.before_send(
            standing,
            category=mail.category,
            has_content=mail.to_address is not None and mail.params is not None,
            held=self.reputation is not None and self.reputation.holds(mail.category),
        )
        return Change(mail.id, transition, mail.attempt) if transition is not None else None

    def render(self, mail: Claimed, now: datetime) -> OutgoingMail:
        assert mail.to_address is not None and mail.params is not None
        raw = render_email(
            kind=EMAIL_KINDS[mail.kind],
            params=mail.params,
            to=mail.to_address,
            from_address=self.settings.from_address,
            unsubscribe_url=self.links(
                recipient_id=mail.recipient_id, category=mail.category, now=now
            ),
            sender=self._sender_info,
            now=now,
        )
        return OutgoingMail(
            raw=raw,
            to=mail.to_address,
            from_address=self.settings.from_address,
            tags={**mail.tags, "tegami_id": str(mail.id), "tegami_type": mail.kind},
        )

    async def _send_at(self, mail: Claimed, when: float) -> Change:
        delay = when - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)
        now = datetime.now(UTC)
        try:
            rendered = self.render(mail, now)
        except (KeyError, ValueError) as exc:
            return Change(mail.id, lifecycle.render_failed(str(exc)), mail.attempt)
        if mail.test:
            # A test key's mail: rendered (so it could be sent), recorded, never handed to SES.
            return Change(mail.id, lifecycle.sent_as_test(), mail.attempt)
        started = time.perf_counter()
        try:
            ses_id = await self.sender.send(rendered)
        except SendError as exc:
            if exc.outcome is Outcome.THROTTLED:
                self._throttled()
            return self._after_error(mail, exc, now)
        finally:
            SES_CALL_LATENCY.observe(time.perf_counter() - started)
        SEND_LATENCY.observe((datetime.now(UTC) - mail.created_at).total_seconds())
        log.info(
            "sent",
            extra={
                "event": "email_sent",
                "email_id": str(mail.id),
                "type": mail.kind,
                "to": mask_address(rendered.to),
                "ses_message_id": ses_id,
            },
        )
        return Change(mail.id, lifecycle.sent(ses_id), mail.attempt)

    def _after_error(self, mail: Claimed, exc: SendError, now: datetime) -> Change:
        transition = lifecycle.after_error(
            mail,
            code=exc.code,
            message=exc.message,
            about_the_mail=exc.outcome is Outcome.PERMANENT,
            about_the_account=exc.outcome is Outcome.PAUSED,
            attempt=mail.attempt,
            now=now,
            quiet=self.quiet,
        )
        if transition.status is MessageStatus.FAILED and transition.event is Event.SEND_FAILED:
            log.warning(
                "SES refused a mail",
                extra={"event": "email_failed", "email_id": str(mail.id), "error": exc.code},
            )
        elif transition.status in (MessageStatus.QUEUED, MessageStatus.SCHEDULED):
            SEND_RETRIES.labels(outcome=exc.outcome.value).inc()
            log.info(
                "SES send will be retried",
                extra={
                    "event": "email_retry",
                    "email_id": str(mail.id),
                    "error": exc.code,
                    "retry_in": round(transition.retry_in or 0.0, 2),
                },
            )
        return Change(mail.id, transition, mail.attempt)

    def _throttled(self) -> None:
        """SES throttled a call: spread this worker's booked slots, halve every replica's
        rate through the pacer, and read GetAccount again early (the rate may have changed)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._throttled_at = now
        if now - self._throttle_written_at >= 0.5:
            self._throttle_written_at = now
            task = asyncio.create_task(self._write_throttle())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        if now - self._reread_at >= RATE_REREAD_SECONDS:
            self._reread_at = now
            self._reread.set()

    async def _write_throttle(self) -> None:
        try:
            async with driver_connection(self.engine) as conn:
                began = await outbox.throttle(conn)
        except Exception as exc:  # the next throttle tries again
            self.db_trouble()
            log.warning("could not slow the pacer", extra={"error": repr(exc)})
            return
        if began:
            log.warning(
                "SES throttles; every replica sends at half the rate until SES takes mail again",
                extra={"event": "ses_throttled", "rate": self.rate / 2},
            )

    async def _gate(self, claim: Claim, results: list[Change]) -> None:
        """Pause sending for every worker on an error about the account; resume when a probe
        went out: only SES's own answer says so, never a test key's mail (sent without SES)."""
        paused = next((r for r in results if r.event is Event.SEND_PAUSED), None)
        try:
            if paused is not None:
                async with driver_connection(self.engine) as conn:
                    started = await outbox.pause_sending(
                        conn, reason=paused.detail or "paused", probe=self.probe_seconds
                    )
                if started:
                    log.error(
                        "SES refuses to send for this account; sending paused, probing every %ss",
                        self.probe_seconds,
                        extra={"event": "ses_sending_paused", "reason": paused.detail},
                    )
                    await post_alert(
                        self.http,
                        self.settings.alert_webhook_url,
                        f":rotating_light: tegami paused sending: SES said {paused.detail}. "
                        "Mail waits in the queue; sending resumes by itself once SES takes "
                        "a mail again.",
                    )
            elif claim.probing and any(r.taken_by_ses for r in results):
                async with driver_connection(self.engine) as conn:
                    reason = await outbox.resume_sending(conn)
                if reason is not None:
                    log.warning(
                        "SES takes mail again; sending resumed",
                        extra={"event": "ses_sending_resumed", "reason": reason},
                    )
                    await post_alert(
                        self.http,
                        self.settings.alert_webhook_url,
                        ":white_check_mark: tegami resumed sending: SES takes mail again.",
                    )
                    self.wake.set()
            if claim.throttled and any(r.ses_message_id for r in results):
                await self._unthrottle()
        except Exception as exc:  # the database is away: the next error or probe tries again
            self.db_trouble()
            log.warning("could not set the send gate", extra={"error": repr(exc)})

    async def _unthrottle(self) -> None:
        """SES took mail again after throttling: the full rate for every replica, once no
        throttle came for a moment."""
        loop = asyncio.get_running_loop()
        if self._throttled_at is not None and (
            loop.time() - self._throttled_at < THROTTLE_QUIET_SECONDS
        ):
            return
        async with driver_connection(self.engine) as conn:
            ended = await outbox.unthrottle(conn, quiet=THROTTLE_QUIET_SECONDS)
        self._throttled_at = None
        if ended:
            log.warning(
                "SES takes mail again; full send rate",
                extra={"event": "ses_throttle_ended", "rate": self.rate},
            )

    async def drain(self) -> int:
        """Process until nothing is due now (tests, one-off runs). Returns how many were handled.

        Waits while the pacer is booked ahead; returns at once while sending is paused."""
        handled = 0
        while True:
            claim = await self.claim(self.batch_size)
            if claim.mails:
                await self.process(claim)
                handled += len(claim.mails)
            elif claim.room == 0 and claim.pause_reason is None:
                await asyncio.sleep(self.claim_wait(claim))
            else:
                return handled

    # -- the loop -------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Claim and send until ``stopping`` is set; then finish what is in flight."""
        await self.refresh_rate()
        if self.reputation is not None:
            # Before the first claim: an account SES has paused sends nothing, from the start.
            await self.reputation.poll_account()
        tasks = [
            asyncio.create_task(self._listen(stopping)),
            asyncio.create_task(self._refresh_rate_forever(stopping)),
        ]
        try:
            await self._loop(stopping)
        finally:
            if self._in_flight:
                await asyncio.gather(*self._in_flight, return_exceptions=True)
            for task in [*tasks, *self._background]:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _loop(self, stopping: asyncio.Event) -> None:
        errors = 0
        while not stopping.is_set():
            if self.reputation is not None and self.reputation.account_paused:
                # SES's GetAccount says the account cannot send: wait (new mail cannot change
                # that), ask SES again, fail nothing.
                await _first_of(stopping, within=self.account_wait_seconds)
                await self.reputation.poll_account()
                continue
            room = self.settings.send_concurrency - self._in_flight_count
            if room <= 0:
                await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            self.wake.clear()
            try:
                claim = await self.claim(min(self.batch_size, room))
                errors = 0
            except Exception as exc:
                errors += 1
                log.warning(
                    "claim failed; retrying", extra={"event": "claim_failed", "error": repr(exc)}
                )
                await self._pause(stopping, backoff(errors, first=0.5, cap=30.0))
                continue
            if claim.mails:
                self._start(claim)
            if claim.room == 0:
                # The pacer is booked ahead (or sending is paused): new mail cannot go sooner.
                await _first_of(stopping, within=self.claim_wait(claim))
            elif len(claim.mails) < claim.room:
                # Nothing more was due: wait for new mail (or the poll) rather than claim
                # again at once, which at a steady trickle doubled the claims.
                await self._pause(stopping, self.poll_seconds)

    def _start(self, claim: Claim) -> None:
        count = len(claim.mails)
        self._in_flight_count += count
        task = asyncio.create_task(self.process(claim))
        self._in_flight.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._in_flight.discard(finished)
            self._in_flight_count -= count
            if not finished.cancelled() and finished.exception() is not None:
                log.error("batch failed", exc_info=finished.exception())

        task.add_done_callback(done)

    async def _pause(self, stopping: asyncio.Event, seconds: float) -> None:
        """Sleep until new mail, stop, or timeout."""
        await _first_of(self.wake, stopping, within=seconds)

    async def _refresh_rate_forever(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            # Early when SES throttles: its MaxSendRate may have been lowered.
            await _first_of(self._reread, stopping, within=RATE_REFRESH_SECONDS)
            early = self._reread.is_set()
            self._reread.clear()
            if stopping.is_set():
                return
            await self.refresh_rate()
            if early and self.reputation is not None:
                await self.reputation.poll_account()

    async def _listen(self, stopping: asyncio.Event) -> None:
        """LISTEN for mail accepted by other replicas, and for their reputation verdicts;
        reconnects when the database drops."""

        def new_mail(_conn: object, _pid: int, _channel: str, origin: object) -> None:
            if origin != PROCESS_ORIGIN:
                self.wake.set()

        def reputation_changed(_conn: object, _pid: int, _channel: str, _origin: object) -> None:
            # Its own verdict too (a flip is rare): one process may hold several watches.
            if self.reputation is not None:
                self.reputation.nudge()

        while not stopping.is_set():
            try:
                async with self.engine.connect() as conn:
                    raw = (await conn.get_raw_connection()).driver_connection
                    assert raw is not None
                    closed = asyncio.Event()
                    raw.add_termination_listener(lambda _conn, done=closed: done.set())
                    await raw.add_listener(OUTBOX_CHANNEL, new_mail)
                    await raw.add_listener(REPUTATION_CHANNEL, reputation_changed)
                    try:
                        await _first_of(stopping, closed)
                    finally:
                        if not raw.is_closed():
                            await raw.remove_listener(OUTBOX_CHANNEL, new_mail)
                            await raw.remove_listener(REPUTATION_CHANNEL, reputation_changed)
            except Exception as exc:
                log.info(
                    "LISTEN connection lost", extra={"event": "listen_lost", "error": repr(exc)}
                )
                await asyncio.sleep(2.0)


class Recorder:
    """Writes a claim's outcomes as SES answers: each answer within ``RECORD_GROUP_SECONDS``,
    those that came in together in one statement. A write that fails is tried again, with no
    deadline (a mail SES took and not recorded would be sent again), while the worker renews
    the leases of the mails still unwritten (``unwritten``)."""

    def __init__(self, worker: Worker, mails: Sequence[Claimed]) -> None:
        self._worker = worker
        self._open = {mail.id: mail for mail in mails}
        self._waiting: list[Change] = []
        self._arrived = asyncio.Event()
        self._closed = False
        self.results: list[Change] = []
        self.recorded: set[uuid.UUID] = set()

    def add(self, result: Change) -> None:
        self._waiting.append(result)
        self.results.append(result)
        self._arrived.set()

    def let_go(self, mails: Iterable[Claimed]) -> None:
        """Mails that will have no outcome from this claim (unchecked, lost): their lease runs
        out."""
        for mail in mails:
            self._open.pop(mail.id, None)

    def unwritten(self) -> list[Claimed]:
        return list(self._open.values())

    def close(self) -> None:
        """No more results: ``run`` returns once the last are written."""
        self._closed = True
        self._arrived.set()

    async def run(self) -> None:
        while True:
            await self._arrived.wait()
            if not self._closed:
                # The answers that come in meanwhile go in the same statement.
                await asyncio.sleep(RECORD_GROUP_SECONDS)
            self._arrived.clear()
            batch, self._waiting = self._waiting, []
            if batch:
                await self._write(batch)
            if self._closed and not self._waiting:
                return

    async def _write(self, results: list[Change]) -> None:
        attempt = 0
        while True:
            try:
                async with driver_connection(self._worker.engine) as conn:
                    recorded = await outbox.finish(conn, results=results)
                break
            except Exception as exc:
                self._worker.db_trouble()
                attempt += 1
                if attempt == 1 or attempt % 10 == 0:
                    log.warning(
                        "could not record send results; trying again until they are",
                        extra={"event": "record_failed", "error": repr(exc), "attempt": attempt},
                    )
                await asyncio.sleep(backoff(attempt, first=0.1, cap=RECORD_RETRY_CAP_SECONDS))
        if attempt:
            log.info(
                "send results recorded after the database came back",
                extra={"event": "record_recovered", "attempts": attempt + 1},
            )
        for result in results:
            self._open.pop(result.message_id, None)
            if result.message_id in recorded:
                self.recorded.add(result.message_id)
            else:
                _log_lost(result.message_id, f"after it was {result.event}")


def _log_lost(message_id: uuid.UUID, when: str) -> None:
    log.warning(
        "lost the mail to another worker (its lease ran out); left it alone %s",
        when,
        extra={"event": "email_claim_lost", "email_id": str(message_id)},
    )


async def _first_of(*events: asyncio.Event, within: float | None = None) -> None:
    """Return when any of ``events`` is set, or after ``within`` seconds."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _count(results: list[Change], mails: list[Claimed]) -> None:
    kinds = {m.id: m.kind for m in mails}
    for result in results:
        kind = kinds.get(result.message_id, "unknown")
        if result.status is MessageStatus.SENT:
            EMAILS_SENT.labels(type=kind).inc()
        elif result.status is MessageStatus.EXPIRED:
            EMAILS_FAILED.labels(type=kind, reason="expired").inc()
        elif result.status is MessageStatus.FAILED:
            # The SES error code, or suppressed / opted_out / render: a small, fixed set.
            EMAILS_FAILED.labels(type=kind, reason=result.transition.why or "unknown").inc()
