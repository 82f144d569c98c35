"""/metrics as Prometheus scrapes it, and request ids on responses and log lines."""

from __future__ import annotations

import logging
import re

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.ops.logging import JsonFormatter
from app.ops.requests import RequestIdFilter
from tests.conftest import AppFactory
from tests.emails.test_router import body, drain
from tests.ses import MotoSes


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(label_text) + r"\}" if labels else "")
    match = re.search(rf"^{pattern} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_metrics_count_accepted_sent_and_show_the_outbox(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes
) -> None:
    before = (await client.get("/metrics")).text
    await client.post("/emails/password-reset", json=body(kind="password-reset"), headers=auth)
    await client.post(
        "/emails/password-reset", json=body("jiro@example.com", "password-reset"), headers=auth
    )

    waiting = (await client.get("/metrics")).text
    assert sample(waiting, "tegami_outbox_depth") == 2
    assert sample(waiting, "tegami_outbox_oldest_age_seconds") >= 0
    assert sample(waiting, "tegami_emails_accepted_total", type="password-reset") == (
        sample(before, "tegami_emails_accepted_total", type="password-reset") + 2
    )

    await drain(client)
    after = (await client.get("/metrics")).text
    assert sample(after, "tegami_outbox_depth") == 0
    assert sample(after, "tegami_emails_sent_total", type="password-reset") == (
        sample(before, "tegami_emails_sent_total", type="password-reset") + 2
    )
    assert (
        sample(after, "tegami_ses_call_seconds_count")
        >= sample(before, "tegami_ses_call_seconds_count") + 2
    )
    assert sample(after, "tegami_send_latency_seconds_count") >= 2


async def test_ses_outage_shows_as_retries_in_metrics(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes
) -> None:
    before = (await client.get("/metrics")).text
    await client.post("/emails/verify-email", json=body(), headers=auth)
    ses.stop()
    try:
        await drain(client)
    finally:
        ses.start()
    after = (await client.get("/metrics")).text
    assert sample(after, "tegami_send_retries_total", outcome="retry") == (
        sample(before, "tegami_send_retries_total", outcome="retry") + 1
    )


async def test_responses_carry_a_request_id(client: httpx.AsyncClient) -> None:
    mine = await client.get("/healthz", headers={"X-Request-ID": "req-abc.123"})
    assert mine.headers["X-Request-ID"] == "req-abc.123"
    made = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith tab"})
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])


def test_log_lines_are_json_with_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    from app.ops.requests import request_id

    record = logging.makeLogRecord(
        {"msg": "sent", "levelname": "INFO", "name": "t", "to": "t***@example.com"}
    )
    token = request_id.set("req-1")
    try:
        RequestIdFilter().filter(record)
    finally:
        request_id.reset(token)
    import json

    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "req-1"
    assert line["message"] == "sent"
    assert line["to"] == "t***@example.com"


async def test_metrics_have_no_created_series(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes
) -> None:
    await client.post("/emails/password-reset", json=body(kind="password-reset"), headers=auth)
    await drain(client)

    scraped = (await client.get("/metrics")).text

    assert sample(scraped, "tegami_emails_sent_total", type="password-reset") >= 1
    assert "_created" not in scraped


async def test_metrics_token_keeps_the_scrape_to_whoever_holds_it(
    start_app: AppFactory,
) -> None:
    client = await start_app(metrics_token="prometheus-scrape-token-0123456789")

    for headers in (
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Basic cHJvbWV0aGV1czp4"},
        {"Authorization": "prometheus-scrape-token-0123456789"},
    ):
        refused = await client.get("/metrics", headers=headers)
        assert refused.status_code == 401, headers
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["error"]["code"] == "unauthorized"
        assert "tegami_emails_sent_total" not in refused.text

    # What Prometheus sends with `authorization: {credentials: ...}` (type Bearer).
    scraped = await client.get(
        "/metrics", headers={"Authorization": "Bearer prometheus-scrape-token-0123456789"}
    )
    assert scraped.status_code == 200
    assert "tegami_outbox_depth" in scraped.text


async def test_metrics_stay_open_without_a_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/metrics")).status_code == 200


async def test_due_age_counts_only_mail_that_is_due_and_unsent(
    client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes
) -> None:
    await client.post("/emails/verify-email", json=body(), headers=auth)
    # A mail due two minutes ago that no worker took: late.
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE message SET next_attempt_at = now() - interval '2 minutes'")
        )
    late = (await client.get("/metrics")).text
    assert 119 <= sample(late, "tegami_outbox_due_age_seconds") < 600

    # Mail due later (a retry, a scheduled send) is waiting, not late.
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE message SET next_attempt_at = now() + interval '1 hour'"))
    waiting = (await client.get("/metrics")).text
    assert sample(waiting, "tegami_outbox_due_age_seconds") == 0
    assert sample(waiting, "tegami_outbox_depth") == 1
