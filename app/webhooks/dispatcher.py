"""The delivery loop: posts each recorded event to TEGAMI_WEBHOOK_URL, signed as the Standard
Webhooks specification says, until the app answers 2xx or the schedule ends.

It runs in its own task with its own HTTP client, connection use and concurrency limit, so a
slow or dead endpoint never slows sending or SNS intake. Any number of replicas run it: each
claims due events with ``SKIP LOCKED`` (``app.webhooks.deliveries``).

Nothing the app's endpoint does can hold it up: each post has one deadline for the whole
exchange (a receiver dripping a byte a second is cut off like a silent one), at most a few KiB
of the answer are read (a huge body is never buffered), and each post is its own task, so a
slow one only takes one of the ``TEGAMI_WEBHOOK_CONCURRENCY`` slots while the others go on. On
shutdown, posts still running after a short grace are cut and handed back at once (the app
deduplicates on ``webhook-id``).
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
# Of the app's answer only the status counts; a little of the body is kept for the operator.
MAX_ANSWER_BYTES = 4096
# On shutdown, posts in flight get this long to end before they are cut and handed back.
SHUTDOWN_GRACE_SECONDS = 2.0
# Handing a cut post back is one short statement; a database that is away does not hold
# shutdown either (the claim's lease then runs out on its own).
RELEASE_SECONDS = 2.0


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
    timeout: float,  # noqa: ASYNC109 (the deadline of the whole exchange)
) -> Answer:
    """One signed post, over within ``timeout`` seconds whatever the receiver does."""
    now = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": sign.sign(message_id, now, payload),
        "user-agent": "tegami-webhooks",
        # The raw bytes are read (a compressed body could grow past any bound once decoded).
        "accept-encoding": "identity",
    }
    try:
        # httpx's timeouts are per connect, write and read: a receiver sending a byte every
        # few seconds never trips them. One deadline covers the whole exchange instead.
        async with asyncio.timeout(timeout):
            request = http.build_request("POST", url, content=payload.encode(), headers=headers)
            response = await http.send(request, stream=True)
            try:
                head = await _read_at_most(response, MAX_ANSWER_BYTES)
            finally:
                # Closing a response not read to its end drops the connection (no draining).
                await response.aclose()
    except TimeoutError:
        return Answer(None, f"no answer within {timeout:g} s")
    except httpx.HTTPError as exc:
        return Answer(None, f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__)
    return Answer(response.status_code, head.decode("utf-8", "replace")[:300])


async def _read_at_most(response: httpx.Response, limit: int) -> bytes:
    """The first ``limit`` bytes of the body, as sent; the rest is never read."""
    head = bytearray()
    async for chunk in response.aiter_raw():
        head += chunk[: limit - len(head)]
        if len(head) >= limit:
            break
    return bytes(head)


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
        # Long enough for a post to end (its deadline) before another replica may retry.
        self.lease = self.timeout * 2 + 30.0
        self.poll = min(IDLE_POLL_SECONDS, settings.webhook_first_retry_seconds)
        self.in_flight: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()

    async def run(self, stopping: asyncio.Event) -> None:
        async with httpx.AsyncClient(follow_redirects=False) as http:
            try:
                while not stopping.is_set():
                    try:
                        more = await self.fill(http)
                    except Exception:
                        log.exception("webhook delivery round failed", extra={"event": "webhooks"})
                        more = False
                    # All slots busy: on as soon as one frees. Else, more may be due at once
                    # (a full claim) or only at the next poll.
                    if len(self.in_flight) >= self.concurrency:
                        await self._wait(stopping, self._slot_freed, None)
                    elif not more:
                        await self._wait(stopping, None, self.poll)
            finally:
                await self._stop_posts()

    async def fill(self, http: httpx.AsyncClient) -> bool:
        """Claim due events for the free slots and start a post for each; True if every free
        slot was filled (more may be due)."""
        free = self.concurrency - len(self.in_flight)
        if free <= 0:
            return True
        async with self.engine.begin() as connection:
            due = await deliveries.claim_due(connection, limit=free, lease=self.lease)
        for event in due:
            task = asyncio.create_task(self.deliver(http, event))
            self.in_flight.add(task)
            task.add_done_callback(self._done)
        return len(due) == free

    def _done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "webhook post failed",
                exc_info=task.exception(),
                extra={"event": "webhooks"},
            )

    async def _wait(
        self, stopping: asyncio.Event, freed: asyncio.Event | None, within: float | None
    ) -> None:
        """Until stopping, a slot frees (when ``freed``), or ``within`` seconds pass."""
        waits = {asyncio.ensure_future(stopping.wait())}
        if freed is not None:
            freed.clear()
            waits.add(asyncio.ensure_future(freed.wait()))
        try:
            await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    async def _stop_posts(self) -> None:
        """A short grace for the posts in flight, then cut the rest (each hands itself back)."""
        if not self.in_flight:
            return
        _, running = await asyncio.wait(set(self.in_flight), timeout=SHUTDOWN_GRACE_SECONDS)
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    async def deliver(self, http: httpx.AsyncClient, due: Due) -> None:
        try:
            answer = await post_event(
                http,
                url=self.url,
                sign=self.sign,
                message_id=webhook_id(due.id),
                payload=body(event_type=due.type, created_at=due.created_at, data=due.data),
                timeout=self.timeout,
            )
        except asyncio.CancelledError:
            await self._hand_back(due)
            raise
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

    async def _hand_back(self, due: Due) -> None:
        """Cut by shutdown: due again now, for any replica (not after the lease)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(RELEASE_SECONDS), self.engine.begin() as connection:
                await deliveries.record_attempt(
                    connection,
                    due=due,
                    status=DeliveryStatus.PENDING,
                    last_status=None,
                    last_error="cut by a shutdown mid-post",
                    next_attempt_at=datetime.now(UTC),
                )
