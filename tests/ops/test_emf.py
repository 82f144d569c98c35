"""The EMF lines CloudWatch turns into the dashboard's and the alarms' metrics."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.main import create_app
from app.ops.emf import EMITTED, GAUGES, MAX_SAMPLES, EmfEmitter
from app.ops.metrics import SEND_LATENCY
from tests.conditions import eventually
from tests.conftest import AppFactory, make_settings
from tests.emails.test_router import body, drain
from tests.ses import MotoSes


def metrics_of(out: io.StringIO) -> list[dict[str, Any]]:
    """Each line as CloudWatch reads it: its namespace, dimensions and values."""
    documents = []
    for line in out.getvalue().splitlines():
        document = json.loads(line)
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        assert isinstance(document["_aws"]["Timestamp"], int)
        (dimensions,) = directive["Dimensions"]
        for name in dimensions:  # every dimension named has its value on the line
            assert isinstance(document[name], str)
        for metric in directive["Metrics"]:
            value = document[metric["Name"]]
            # The EMF specification: a number, or an array of at most 100 numbers.
            if isinstance(value, list):
                assert 0 < len(value) <= 100
                assert all(isinstance(v, int | float) for v in value)
            else:
                assert isinstance(value, int | float)
            assert tuple(dimensions) in EMITTED[metric["Name"]]
        documents.append(
            {
                "namespace": directive["Namespace"],
                "dimensions": {name: document[name] for name in dimensions},
                "values": {m["Name"]: document[m["Name"]] for m in directive["Metrics"]},
            }
        )
    return documents


def total(documents: list[dict[str, Any]], name: str, **dimensions: str) -> Any:
    found = [
        d["values"][name]
        for d in documents
        if name in d["values"] and d["dimensions"] == dimensions
    ]
    assert len(found) <= 1
    return found[0] if found else None


async def test_a_flush_reports_what_happened_since_the_last_one(
    start_app: AppFactory, auth: dict[str, str], ses: MotoSes
) -> None:
    client = await start_app(run_worker=False)
    out = io.StringIO()
    reputation = client.app.state.reputation  # type: ignore[attr-defined]
    emitter = EmfEmitter(namespace="tegami/prod", gauges=reputation.emf_figures, out=out)

    for to in ("taro@example.com", "jiro@example.com"):
        answer = await client.post("/emails/verify-email", json=body(to), headers=auth)
        assert answer.status_code == 202
    await drain(client)
    await emitter.flush()

    first = metrics_of(out)
    assert {d["namespace"] for d in first} == {"tegami/prod"}
    assert total(first, "EmailsAccepted") == 2
    assert total(first, "EmailsSent") == 2
    assert total(first, "EmailsFailed") == 0  # a zero, not a gap in the graph
    # One value per send (at its bucket's bound), an array of numbers as EMF takes it.
    latency = total(first, "SendLatency")
    assert len(latency) == 2 and all(isinstance(v, float) and v > 0 for v in latency)
    assert total(first, "OutboxDepth") == 0
    assert total(first, "OutboxDueAgeSeconds") == 0
    assert set(GAUGES) <= {name for d in first for name in d["values"]}

    # The next minute counts only its own mail.
    out.seek(0)
    out.truncate()
    await client.post("/emails/verify-email", json=body("saburo@example.com"), headers=auth)
    await emitter.flush()
    second = metrics_of(out)
    assert total(second, "EmailsAccepted") == 1
    assert total(second, "EmailsSent") == 0
    assert total(second, "SendLatency") is None
    assert total(second, "OutboxDepth") == 1


async def test_failures_are_counted_by_reason(
    start_app: AppFactory, auth: dict[str, str], ses: MotoSes
) -> None:
    client = await start_app(run_worker=False)
    out = io.StringIO()
    emitter = EmfEmitter(namespace="tegami", out=out)  # an API process: no gauges
    await client.post("/emails/verify-email", json=body(), headers=auth)
    ses.stop()  # SES away: the call is retried, the retry counted by SES's answer
    try:
        await drain(client)
    finally:
        ses.start()
    await emitter.flush()

    documents = metrics_of(out)
    retries = [d for d in documents if "SendRetries" in d["values"] and d["dimensions"]]
    assert retries and all(set(d["dimensions"]) == {"Outcome"} for d in retries)
    assert sum(d["values"]["SendRetries"] for d in retries) == total(documents, "SendRetries")
    assert not any("OutboxDepth" in d["values"] for d in documents)


async def test_the_stack_setting_turns_emf_on_in_the_running_service(
    database_url: str,
    engine: AsyncEngine,
    auth: dict[str, str],
    ses: MotoSes,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(
        database_url,
        cloudwatch_emf=True,
        cloudwatch_emf_namespace="tegami/prod",
        run_worker=True,
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="https://mail.proworks.jp"
        ) as client,
    ):
        answer = await client.post("/emails/verify-email", json=body(), headers=auth)
        assert answer.status_code == 202
    # Leaving the lifespan flushes once more, so the last minute's mail is not lost.
    lines = [line for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    documents = [json.loads(line) for line in lines]
    assert {d["_aws"]["CloudWatchMetrics"][0]["Namespace"] for d in documents} == {"tegami/prod"}
    assert sum(d.get("EmailsAccepted", 0) for d in documents) == 1
    assert any("OutboxDueAgeSeconds" in d for d in documents)  # a worker reports the outbox


async def test_a_pool_budget_over_the_databases_connections_is_a_start_up_warning(
    start_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.db")
    # 40 tasks × 30 connections cannot fit in any default PostgreSQL (100).
    await start_app(db_pool_size=20, db_max_overflow=10, db_max_processes=40)

    async def warned() -> list[logging.LogRecord]:
        return [
            r for r in caplog.records if getattr(r, "event", "") == "db_connection_budget_exceeded"
        ]

    (record,) = await eventually(warned)
    assert record.levelno == logging.WARNING
    assert record.budget == 1200  # type: ignore[attr-defined]
    assert 0 < record.allowed < 1200  # type: ignore[attr-defined]
    assert "TEGAMI_DB_POOL_SIZE" in record.getMessage()


async def test_a_budget_that_fits_says_so_without_a_warning(
    start_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.db")
    await start_app(db_pool_size=2, db_max_overflow=1, db_max_processes=3)

    async def checked() -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "event", "").startswith("db_connection")]

    (record,) = await eventually(checked)
    assert record.event == "db_connection_budget"  # type: ignore[attr-defined]
    assert record.levelno == logging.INFO


async def test_a_busy_minute_keeps_each_line_within_emfs_limits() -> None:
    out = io.StringIO()
    emitter = EmfEmitter(namespace="tegami", out=out)
    for seconds in [0.02] * 4000 + [3.0] * 1000:  # 5000 sends in a minute
        SEND_LATENCY.observe(seconds)
    await emitter.flush()

    documents = metrics_of(out)  # each line as the specification allows
    values = [
        v for d in documents if "SendLatency" in d["values"] for v in d["values"]["SendLatency"]
    ]
    assert len(values) == MAX_SAMPLES
    # The shares stay, so CloudWatch's percentiles do: 80% fast, 20% slow.
    assert values.count(0.025) == 800 and values.count(5.0) == 200
