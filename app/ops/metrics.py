"""Prometheus metrics, served at /metrics.

Counters live in the process (one set per replica; Prometheus sums them). Outbox depth and age
are read from the database at scrape time, so every replica reports the shared truth. With
``TEGAMI_METRICS_TOKEN`` set, only a scrape that brings it as a bearer token is answered.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from sqlalchemy import Float, cast, extract, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.deps import EngineDep, SettingsDep
from app.errors import Unauthorized, error_responses
from app.models import PENDING_STATUSES, Message, MessageStatus

# `*_created` series (one per counter and histogram child, holding its creation time) double
# the scrape for nothing Prometheus uses.
disable_created_metrics()  # type: ignore[no-untyped-call]

EMAILS_ACCEPTED = Counter("tegami_emails_accepted", "Mails accepted by the API.", ["type"])
EMAILS_REFUSED = Counter(
    "tegami_emails_refused", "Mails refused by the API (suppressed, opted out).", ["type", "reason"]
)
EMAILS_SENT = Counter("tegami_emails_sent", "Mails SES accepted.", ["type"])
EMAILS_FAILED = Counter("tegami_emails_failed", "Mails given up on, by why.", ["type", "reason"])
SEND_RETRIES = Counter(
    "tegami_send_retries", "SES calls that will be retried, by SES's answer.", ["outcome"]
)
SEND_LATENCY = Histogram(
    "tegami_send_latency_seconds",
    "From accepted to handed to SES.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
SES_CALL_LATENCY = Histogram(
    "tegami_ses_call_seconds",
    "One SendEmail call.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15),
)
SNS_MESSAGES = Counter("tegami_sns_messages", "SNS messages received, by outcome.", ["outcome"])
WEBHOOK_DELIVERIES = Counter(
    "tegami_webhook_deliveries",
    "Webhook posts to the app, by event type and outcome (delivered, retrying, failed).",
    ["type", "outcome"],
)
OUTBOX_DEPTH = Gauge("tegami_outbox_depth", "Mails waiting to be sent (queued, sending, held).")
OUTBOX_OLDEST_AGE = Gauge(
    "tegami_outbox_oldest_age_seconds", "Age of the oldest mail waiting to be sent."
)
OUTBOX_DUE_AGE = Gauge(
    "tegami_outbox_due_age_seconds",
    "How long the longest-waiting due mail has been due and unsent (0: none is late). Held "
    "mail, mail scheduled for later and retries not yet due do not count.",
)
BOUNCE_RATE = Gauge("tegami_bounce_rate", "Hard bounces over the reputation window of sends.")
COMPLAINT_RATE = Gauge("tegami_complaint_rate", "Complaints over the reputation window of sends.")

_OUTBOX = select(
    func.count(),
    cast(func.coalesce(extract("epoch", func.now() - func.min(Message.created_at)), 0), Float),
).where(Message.status.in_((*PENDING_STATUSES, MessageStatus.HELD)))
# Due and not yet sent: what a person should hear about (the claim's own index answers it).
_DUE = select(
    cast(func.coalesce(extract("epoch", func.now() - func.min(Message.next_attempt_at)), 0), Float)
).where(
    Message.status.in_((*PENDING_STATUSES, MessageStatus.SCHEDULED)),
    Message.next_attempt_at <= func.now(),
)

router = APIRouter(tags=["operations"])


async def read_outbox(engine: AsyncEngine) -> tuple[int, float]:
    async with engine.connect() as conn:
        depth, age = (await conn.execute(_OUTBOX)).one()
    return int(depth), float(age)


async def read_due_age(engine: AsyncEngine) -> float:
    async with engine.connect() as conn:
        return float((await conn.execute(_DUE)).scalar_one())


def _check_token(request: Request, settings: Settings) -> None:
    token = settings.metrics_token
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise Unauthorized("GET /metrics needs Authorization: Bearer <TEGAMI_METRICS_TOKEN>")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    operation_id="getMetrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format."},
        **error_responses(401),
    },
)
async def metrics(request: Request, settings: SettingsDep, engine: EngineDep) -> Response:
    _check_token(request, settings)
    try:
        depth, age = await read_outbox(engine)
        due_age = await read_due_age(engine)
    except Exception:
        # Metrics must still answer while the database is away; the gauges say -1.
        depth, age, due_age = -1, -1.0, -1.0
    OUTBOX_DEPTH.set(depth)
    OUTBOX_OLDEST_AGE.set(age)
    OUTBOX_DUE_AGE.set(due_age)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
