"""Watching the SES account's reputation, and protecting it on our own.

SES reviews an account at a 5% bounce rate or a 0.1% complaint rate and may pause it at 10% /
0.5%. SES counts hard bounces for the bounce rate and complaints for the complaint rate, over
recent sending; we count the same things over the last ``TEGAMI_REPUTATION_WINDOW`` of our own
sends (once ``TEGAMI_REPUTATION_MIN_SENDS`` have gone out). Note that Gmail sends no complaint
feedback to SES, so the complaint rate under-counts Gmail users.

At half a review threshold we log a warning; at the threshold an alert (log line with a stable
``event`` name for a CloudWatch metric filter, and a POST to ``TEGAMI_ALERT_WEBHOOK_URL``). While
a rate is at or over its review threshold the guard holds optional mail (matching
notifications), so account mail keeps flowing and the account is protected; the hold lifts
itself when the rate falls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import exists, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import GuardSettings, Settings
from app.emails import outbox
from app.emails.guard import REPUTATION_CHANNEL
from app.models import OPTIONAL_CATEGORIES, Message, MessageEvent
from app.ops.alerts import post_alert
from app.ops.metrics import BOUNCE_RATE, COMPLAINT_RATE, read_due_age, read_outbox
from app.recipients.rules import Feedback

if TYPE_CHECKING:
    from app.emails.sender import Sender

log = logging.getLogger(__name__)

# SES's levels (a review, a pause), and ours at half the review level. The levels of the
# watch share the words: warning, alert (review), critical (pause).
BOUNCE_REVIEW = 0.05
BOUNCE_PAUSE = 0.10
COMPLAINT_REVIEW = 0.001
COMPLAINT_PAUSE = 0.005
BOUNCE_WARNING = BOUNCE_REVIEW / 2
COMPLAINT_WARNING = COMPLAINT_REVIEW / 2
EVALUATE_SECONDS = 15.0
NUDGE_INTERVAL_SECONDS = 1.0
ACCOUNT_POLL_SECONDS = 60.0


class Level(StrEnum):
    OK = "ok"
    WARNING = "warning"  # at half the review threshold
    ALERT = "alert"  # at the review threshold: SES may put the account under review
    CRITICAL = "critical"  # at the pause threshold: SES may stop the account sending


def level_of(rate: float, *, review: float, pause: float) -> Level:
    if rate >= pause:
        return Level.CRITICAL
    if rate >= review:
        return Level.ALERT
    if rate >= review / 2:
        return Level.WARNING
    return Level.OK


@dataclass(frozen=True)
class Rates:
    sends: int
    hard_bounces: int
    complaints: int

    @property
    def bounce_rate(self) -> float:
        return self.hard_bounces / self.sends if self.sends else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.complaints / self.sends if self.sends else 0.0


@dataclass(frozen=True)
class Verdict:
    """What the rates mean: a level per rate, and whether optional mail is held."""

    counted: bool  # enough sends for the rates to mean anything
    bounce: Level
    complaint: Level
    hold: bool


def judge(rates: Rates, *, min_sends: int, guard: bool) -> Verdict:
    if rates.sends < min_sends:
        return Verdict(counted=False, bounce=Level.OK, complaint=Level.OK, hold=False)
    bounce = level_of(rates.bounce_rate, review=BOUNCE_REVIEW, pause=BOUNCE_PAUSE)
    complaint = level_of(rates.complaint_rate, review=COMPLAINT_REVIEW, pause=COMPLAINT_PAUSE)
    over_review = {Level.ALERT, Level.CRITICAL}
    hold = guard and (bounce in over_review or complaint in over_review)
    return Verdict(counted=True, bounce=bounce, complaint=complaint, hold=hold)


async def read_rates(engine: AsyncEngine, *, window: int) -> Rates:
    """Hard bounces and complaints among the last ``window`` sends, as SES counts them: the
    feedback the SNS endpoint stored on each message's history (a not-spam complaint is the
    provider taking one back, and is not counted)."""
    recent = (
        select(Message.id)
        .where(Message.sent_at.is_not(None))
        .order_by(Message.sent_at.desc())
        .limit(window)
        .cte("recent")
    )

    def had(feedback: Feedback) -> Any:
        return exists().where(
            MessageEvent.message_id == recent.c.id, MessageEvent.feedback == feedback
        )

    statement = select(
        func.count(),
        func.count().filter(had(Feedback.HARD_BOUNCE)),
        func.count().filter(had(Feedback.COMPLAINT)),
    ).select_from(recent)
    async with engine.connect() as conn:
        sends, hard_bounces, complaints = (await conn.execute(statement)).one()
    return Rates(sends=sends, hard_bounces=hard_bounces, complaints=complaints)


async def guard_outlook(engine: AsyncEngine) -> str:
    """What the guard will do with released mail, read from the database as the guard reads
    it: said by `tegami held release` and `held list`."""
    settings = GuardSettings()
    if not settings.reputation_guard:
        return "The reputation guard is off (TEGAMI_REPUTATION_GUARD=false): it holds nothing."
    rates = await read_rates(engine, window=settings.reputation_window)
    verdict = judge(rates, min_sends=settings.reputation_min_sends, guard=True)
    figures = (
        f"bounce rate {rates.bounce_rate:.2%} (review at {BOUNCE_REVIEW:.0%}), "
        f"complaint rate {rates.complaint_rate:.3%} (review at {COMPLAINT_REVIEW:.1%}) "
        f"over the last {rates.sends} sends"
    )
    if verdict.hold:
        return (
            f"The guard holds optional mail again within {EVALUATE_SECONDS:.0f} s: {figures}. "
            "It releases it by itself once the rates fall."
        )
    return f"The guard will not hold it again while the rates stay low: {figures}."


@dataclass
class AccountStatus:
    """SES's own view of the account (GetAccount); None where it could not be read."""

    sending_enabled: bool | None = None
    enforcement_status: str | None = None
    production_access: bool | None = None
    checked_at: datetime | None = None
    error: str | None = None


@dataclass
class ReputationWatch:
    engine: AsyncEngine
    settings: Settings
    sender: Sender | None = None
    http: httpx.AsyncClient | None = None
    rates: Rates = field(default_factory=lambda: Rates(0, 0, 0))
    verdict: Verdict = field(default_factory=lambda: Verdict(False, Level.OK, Level.OK, hold=False))
    account: AccountStatus = field(default_factory=AccountStatus)
    evaluated_at: datetime | None = None
    # Called when held mail goes back to the queue (wakes the worker).
    on_release: Callable[[], None] | None = None
    _last_account_poll: float = 0.0
    _evaluating: asyncio.Task[None] | None = None
    _again: bool = False
    _nudged_at: float = 0.0

    @property
    def holding(self) -> bool:
        return self.verdict.hold

    def holds(self, category: str) -> bool:
        return self.verdict.hold and category in OPTIONAL_CATEGORIES

    @property
    def account_paused(self) -> bool:
        """SES says the account cannot send: the worker waits instead of failing mail."""
        return self.account.sending_enabled is False

    async def evaluate(self) -> Verdict:
        rates = await read_rates(self.engine, window=self.settings.reputation_window)
        verdict = judge(
            rates,
            min_sends=self.settings.reputation_min_sends,
            guard=self.settings.reputation_guard,
        )
        previous = self.verdict
        self.rates, self.verdict = rates, verdict
        self.evaluated_at = datetime.now(UTC)
        BOUNCE_RATE.set(rates.bounce_rate)
        COMPLAINT_RATE.set(rates.complaint_rate)
        async with self.engine.begin() as conn:
            if verdict.hold:
                await outbox.hold_optional(conn, categories=OPTIONAL_CATEGORIES)
            else:
                released = await outbox.release_held(conn)
                if released and self.on_release is not None:
                    self.on_release()
            if verdict.hold != previous.hold:
                # Other replicas hold (or release) at once, not at their next round.
                await conn.execute(
                    select(func.pg_notify(REPUTATION_CHANNEL, outbox.PROCESS_ORIGIN))
                )
        await self._announce(previous, verdict)
        return verdict

    def nudge(self) -> None:
        """Evaluate now: a hard bounce or complaint was just applied (here or, through
        NOTIFY, in another replica). Nudges that come while an evaluation runs make one more."""
        if self._evaluating is not None and not self._evaluating.done():
            self._again = True
            return
        self._evaluating = asyncio.get_running_loop().create_task(self._evaluate_nudged())

    async def _evaluate_nudged(self) -> None:
        while True:
            # At most one nudged evaluation a second: under a burst of feedback the rates are
            # read once, not once per event (on the SNS path that cost a fifth of its rate).
            wait = self._nudged_at + NUDGE_INTERVAL_SECONDS - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._nudged_at = time.monotonic()
            self._again = False
            try:
                await self.evaluate()
            except Exception as exc:  # the 15 s round tries again
                log.warning(
                    "reputation check failed",
                    extra={"event": "reputation_check_failed", "error": repr(exc)},
                )
            if not self._again:
                return

    async def poll_account(self) -> AccountStatus:
        if self.sender is None:
            return self.account
        self._last_account_poll = time.monotonic()
        try:
            answer = await self.sender.account_status()
        except Exception as exc:  # unknown is not paused: keep sending
            self.account = AccountStatus(checked_at=datetime.now(UTC), error=repr(exc)[:300])
            return self.account
        self.account = AccountStatus(
            sending_enabled=answer.get("SendingEnabled"),
            enforcement_status=answer.get("EnforcementStatus"),
            production_access=answer.get("ProductionAccessEnabled"),
            checked_at=datetime.now(UTC),
        )
        if self.account.sending_enabled is False:
            log.error(
                "SES account cannot send; the worker waits",
                extra={
                    "event": "ses_account_paused",
                    "enforcement": self.account.enforcement_status,
                },
            )
        return self.account

    async def run(self, stopping: asyncio.Event) -> None:
        """Evaluate every few seconds, poll SES every minute."""
        while not stopping.is_set():
            try:
                await self.evaluate()
                if time.monotonic() - self._last_account_poll >= ACCOUNT_POLL_SECONDS:
                    await self.poll_account()
            except Exception as exc:  # the database may be away; try again next round
                log.warning(
                    "reputation check failed",
                    extra={"event": "reputation_check_failed", "error": repr(exc)},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=EVALUATE_SECONDS)

    def snapshot(self) -> dict[str, Any]:
        return {
            "counted": self.verdict.counted,
            "sends_in_window": self.rates.sends,
            "window": self.settings.reputation_window,
            "min_sends": self.settings.reputation_min_sends,
            "bounce": {
                "rate": self.rates.bounce_rate,
                "hard_bounces": self.rates.hard_bounces,
                "level": self.verdict.bounce,
                "warning_at": BOUNCE_WARNING,
                "alert_at": BOUNCE_REVIEW,
                "critical_at": BOUNCE_PAUSE,
            },
            "complaint": {
                "rate": self.rates.complaint_rate,
                "complaints": self.rates.complaints,
                "level": self.verdict.complaint,
                "warning_at": COMPLAINT_WARNING,
                "alert_at": COMPLAINT_REVIEW,
                "critical_at": COMPLAINT_PAUSE,
            },
            "guard": self.settings.reputation_guard,
            "held_categories": sorted(OPTIONAL_CATEGORIES) if self.verdict.hold else [],
            "ses_account": asdict(self.account),
            "evaluated_at": self.evaluated_at,
        }

    async def _announce(self, before: Verdict, now: Verdict) -> None:
        for name, old, new, rate in (
            ("bounce", before.bounce, now.bounce, self.rates.bounce_rate),
            ("complaint", before.complaint, now.complaint, self.rates.complaint_rate),
        ):
            if old == new:
                continue
            severity = _SEVERITY[new]
            fields = {
                "event": f"reputation_{severity}",
                "rate_name": name,
                "rate": rate,
                "level": new.value,
                "sends": self.rates.sends,
            }
            if new is Level.OK:
                log.info("%s rate back to normal", name, extra=fields)
            elif new is Level.WARNING:
                log.warning("%s rate at %.4f: half of SES's review level", name, rate, extra=fields)
            else:
                log.error("%s rate at %.4f: SES review level reached", name, rate, extra=fields)
            alerting = (Level.ALERT, Level.CRITICAL)
            if self.settings.alert_webhook_url and (new in alerting or old in alerting):
                await self._post_alert(name, new, rate)
        if before.hold != now.hold:
            log.error(
                "optional mail %s",
                "held" if now.hold else "released",
                extra={"event": "reputation_hold" if now.hold else "reputation_release"},
            )

    async def _post_alert(self, name: str, level: Level, rate: float) -> None:
        hold = " Matching notifications are held." if self.verdict.hold else ""
        message = (
            f":rotating_light: tegami {name} rate {rate:.2%} ({level.value}).{hold}"
            if level in (Level.ALERT, Level.CRITICAL)
            else f":white_check_mark: tegami {name} rate back below SES's review level: {rate:.2%}."
        )
        await post_alert(self.http, self.settings.alert_webhook_url, message)

    async def emf_figures(self) -> dict[str, float]:
        """The worker's figures for CloudWatch (app/ops/emf.py): the outbox, read now, and
        the rates as last evaluated."""
        depth, age = await read_outbox(self.engine)
        return {
            "OutboxDepth": depth,
            "OutboxOldestAgeSeconds": age,
            "OutboxDueAgeSeconds": await read_due_age(self.engine),
            "BounceRate": self.rates.bounce_rate,
            "ComplaintRate": self.rates.complaint_rate,
            "OptionalMailHeld": int(self.verdict.hold),
        }


_SEVERITY = {
    Level.OK: "recovered",
    Level.WARNING: "warning",
    Level.ALERT: "alert",
    Level.CRITICAL: "alert",
}
