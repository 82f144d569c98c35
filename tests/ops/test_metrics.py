"""/metrics as Prometheus scrapes it, and request ids on responses and log lines."""

from __future__ import annotations

import logging
import re

import httpx
import pytest

from app.ops.logging import JsonFormatter
from app.ops.requests import RequestIdFilter
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
