"""The delivery loop: posts each recorded event to TEGAMI_WEBHOOK_URL, signed as the Standard
Webhooks specification says, until the app answers 2xx or the schedule ends.

It runs in its own task with its own HTTP client, connection use and concurrency limit, so a
slow or dead endpoint never slows sending or SNS intake. Any number of replicas run it: each
claims due events with ``SKIP LOCKED`` (``app.webhooks.deliveries``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks.webhooks import Webhook

from app.config import Settings
from app.ops.metrics import WEBHOOK_DELIVERIES
from app.webhooks import deliveries
from app.webhooks.deliveries import DeliveryStatus, Due
from app.webhooks.events import EventType, body, webhook_id

log = logging.getLogger(__name__)

# The Standard Webhooks schedule after the first attempt: 5 s, 5 min, 30 min, 2 h, 5 h,
# 10 h, 10 h (27.6 hours in all, past the day the design promises). The first step is a
# setting (TEGAMI_WEBHOOK_FIRST_RETRY_SECONDS) so tests and development need not wait.
LATER_STEPS = (300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
IDLE_POLL_SECONDS = 1.0


def retry_schedule(first: float) -> tuple[float, ...]:
    return (first, *LATER_STEPS)


def next_attempt_delay(schedule: Sequence[float], *, attempt: int) -> float | None:
    """Seconds until the attempt after ``attempt`` (1-based), with jitter; None: give up."""
    if attempt > len(schedule):
        return None
    return schedule[attempt - 1] * random.uniform(0.9, 1.1)  # noqa: S311 (jitter)


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no HTTP answer (timeout, refused)
    detail: str

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def signer(settings: Settings) -> Webhook:
    """The first secret signs; the app verifies with every one during a rotation."""
    return Webhook(settings.webhook_secret[0].get_secret_value())


async def post_event(
    http: httpx.AsyncClient,
    *,
    url: str,
    sign: Webhook,
    message_id: str,
    payload: str,
    timeout: float,  # noqa: ASYNC109 (httpx's own per-request timeout)
) -> Answer:
    now = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": sign.sign(message_id, now, payload),
        "user-agent": "tegami-webhooks",
    }
    try:
        response = await http.post(url, content=payload.encode(), headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        return Answer(None, f"no answer within {timeout:g} s")
    except httpx.HTTPError as exc:
        return Answer(None, f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__)
    return Answer(response.status_code, response.text[:300])


async def send_test(settings: Settings, *, http: httpx.AsyncClient) -> Answer:
    """One signed ``webhook.test`` event, sent now and recorded nowhere."""
    assert settings.webhook_url is not None
    payload = body(
        event_type=EventType.WEBHOOK_TEST.value,
        created_at=datetime.now(UTC),
        data={"message": "a test event from tegami webhooks test"},
    )
    return await post_event(
        http,
        url=settings.webhook_url,
        sign=signer(settings),
        message_id=webhook_id(uuid.uuid4()),
        payload=payload,
        timeout=settings.webhook_timeout_seconds,
    )


class WebhookDispatcher:
    def __init__(self, *, engine: AsyncEngine, settings: Settings) -> None:
        assert settings.webhook_url is not None
        self.engine = engine
        self.url = settings.webhook_url
        self.sign = signer(settings)
        self.timeout = settings.webhook_timeout_seconds
        self.concurrency = settings.webhook_concurrency
        self.schedule = retry_schedule(settings.webhook_first_retry_seconds)
        # Long enough for every post of a round to end before another replica may retry.
        self.lease = self.timeout * 2 + 30.0
        self.poll = min(IDLE_POLL_SECONDS, settings.webhook_first_retry_seconds)

    async def run(self, stopping: asyncio.Event) -> None:
        async with httpx.AsyncClient(follow_redirects=False) as http:
            while not stopping.is_set():
                try:
                    busy = await self.round(http)
                except Exception:
                    log.exception("webhook delivery round failed", extra={"event": "webhooks"})
                    busy = False
                if not busy:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), self.poll)

    async def round(self, http: httpx.AsyncClient) -> bool:
        """Post the events due now (up to the concurrency limit); True if there were any."""
        async with self.engine.begin() as connection:
            due = await deliveries.claim_due(connection, limit=self.concurrency, lease=self.lease)
        if not due:
            return False
        await asyncio.gather(*(self.deliver(http, event) for event in due))
        return True

    async def deliver(self, http: httpx.AsyncClient, due: Due) -> None:
        answer = await post_event(
            http,
            url=self.url,
            sign=self.sign,
            message_id=webhook_id(due.id),
            payload=body(event_type=due.type, created_at=due.created_at, data=due.data),
            timeout=self.timeout,
        )
        next_at: datetime | None = None
        if answer.ok:
            status, outcome = DeliveryStatus.DELIVERED, "delivered"
        else:
            delay = next_attempt_delay(self.schedule, attempt=due.attempt)
            if delay is None:
                status, outcome = DeliveryStatus.FAILED, "failed"
            else:
                status, outcome = DeliveryStatus.PENDING, "retrying"
                next_at = datetime.now(UTC) + timedelta(seconds=delay)
        WEBHOOK_DELIVERIES.labels(type=due.type, outcome=outcome).inc()
        if outcome != "delivered":
            log.warning(
                "webhook not delivered",
                extra={
                    "event": "webhook_not_delivered",
                    "webhook_id": webhook_id(due.id),
                    "type": due.type,
                    "attempt": due.attempt,
                    "status": answer.status,
                    "error": answer.detail[:200],
                    "outcome": outcome,
                },
            )
        async with self.engine.begin() as connection:
            await deliveries.record_attempt(
                connection,
                due=due,
                status=status,
                last_status=answer.status,
                last_error=None if answer.ok else answer.detail,
                next_attempt_at=next_at,
            )
