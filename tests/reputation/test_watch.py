"""The reputation watch: rates counted as SES counts them, alerts, and the guard that holds
optional mail while account mail keeps flowing."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.reputation.watch import Level, Rates, judge, level_of
from tests.conditions import eventually
from tests.conftest import AppFactory
from tests.sns.test_router import email, send, sent_mail
from tests.sns_messages import CERT_NAME, TOPIC, Sns, ses_event


@pytest.mark.parametrize(
    ("rate", "level"),
    [
        (0.0, Level.OK),
        (0.0249, Level.OK),
        (0.025, Level.WARNING),
        (0.05, Level.ALERT),
        (0.1, Level.CRITICAL),
    ],
)
def test_bounce_levels_follow_ses_thresholds(rate: float, level: Level) -> None:
    assert level_of(rate, review=0.05, pause=0.10) is level


def test_rates_count_only_once_enough_mail_went_out() -> None:
    few = judge(Rates(sends=10, hard_bounces=5, complaints=0), min_sends=200, guard=True)
    assert not few.counted and not few.hold
    many = judge(Rates(sends=1000, hard_bounces=50, complaints=0), min_sends=200, guard=True)
    assert many.counted and many.bounce is Level.ALERT and many.hold
    unguarded = judge(Rates(sends=1000, hard_bounces=50, complaints=0), min_sends=200, guard=False)
    assert unguarded.bounce is Level.ALERT and not unguarded.hold
    complaints = judge(Rates(sends=1000, hard_bounces=0, complaints=1), min_sends=200, guard=True)
    assert complaints.complaint is Level.ALERT and complaints.hold


@pytest.fixture
async def watched(
    start_app: AppFactory, tmp_path: Path, identity: tuple[bytes, bytes]
) -> tuple[Sns, list[dict[str, Any]]]:
    """An app whose rates count after 10 sends over a window of 10, alerts to a webhook."""
    cert_dir = tmp_path / "sns-certs"
    cert_dir.mkdir()
    (cert_dir / CERT_NAME).write_bytes(identity[1])
    client = await start_app(
        sns_cert_dir=cert_dir,
        sns_topic_arns=[TOPIC],
        reputation_min_sends=10,
        reputation_window=10,
        alert_webhook_url="https://hooks.slack.example/services/T0/B0/x",
    )
    posted: list[dict[str, Any]] = []

    def webhook(request: httpx.Request) -> httpx.Response:
        posted.append({"url": str(request.url), "body": json.loads(request.content)})
        return httpx.Response(200, text="ok")

    client.app.state.reputation.http = httpx.AsyncClient(transport=httpx.MockTransport(webhook))  # type: ignore[attr-defined]
    return Sns(client, identity[0]), posted


async def test_complaint_burst_holds_matching_mail_but_password_resets_go_out(
    watched: tuple[Sns, list[dict[str, Any]]],
    auth: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sns, posted = watched
    sent = [await sent_mail(sns, auth, f"user{i}@example.com") for i in range(10)]
    _, ses_id = sent[0]
    await sns.deliver(
        ses_event("eventpub-complaint-abuse.json", to="user0@example.com", ses_message_id=ses_id)
    )

    with caplog.at_level(logging.WARNING):
        status = (await sns.client.get("/status/reputation", headers=auth)).json()
    assert status["complaint"]["rate"] == pytest.approx(0.1)
    assert status["complaint"]["level"] == "critical"
    assert status["held_categories"] == ["matching"]
    assert any(getattr(r, "event", "") == "reputation_alert" for r in caplog.records)
    assert posted and "complaint rate 10.00%" in posted[0]["body"]["text"]

    matching = await send(sns, auth, "fresh@example.com", "matching-notification")
    reset = await send(sns, auth, "other@example.com", "password-reset")
    await sns.client.app.state.worker.drain()  # type: ignore[attr-defined]
    assert (await email(sns, auth, matching.json()["id"]))["status"] == "held"
    assert (await email(sns, auth, reset.json()["id"]))["status"] == "sent"

    # Ten clean sends push the complaint out of the window: the hold lifts by itself.
    for i in range(10):
        await sent_mail(sns, auth, f"clean{i}@example.com")
    status = (await sns.client.get("/status/reputation", headers=auth)).json()
    assert status["held_categories"] == []
    await sns.client.app.state.worker.drain()  # type: ignore[attr-defined]
    shown = await email(sns, auth, matching.json()["id"])
    assert shown["status"] == "sent"
    assert [e["kind"] for e in shown["events"]][-3:] == ["held", "released", "sent"]


async def test_hard_bounces_count_soft_bounces_do_not(
    watched: tuple[Sns, list[dict[str, Any]]], auth: dict[str, str]
) -> None:
    sns, _ = watched
    sent = [await sent_mail(sns, auth, f"user{i}@example.com") for i in range(10)]
    await sns.deliver(
        ses_event(
            "eventpub-bounce-permanent-general.json",
            to="user0@example.com",
            ses_message_id=sent[0][1],
        )
    )
    await sns.deliver(
        ses_event(
            "real-notif-bounce-transient-general-ooto-simulator-2018.json",
            to="user1@example.com",
            ses_message_id=sent[1][1],
        )
    )
    status = (await sns.client.get("/status/reputation", headers=auth)).json()
    assert status["bounce"]["hard_bounces"] == 1
    assert status["bounce"]["rate"] == pytest.approx(0.1)


async def test_status_needs_an_api_key(client: httpx.AsyncClient) -> None:
    assert (await client.get("/status/reputation")).status_code == 401


async def test_a_complaint_holds_optional_mail_at_once_here_and_in_other_replicas(
    watched: tuple[Sns, list[dict[str, Any]]], auth: dict[str, str], start_app: AppFactory
) -> None:
    sns, _ = watched
    here = sns.client.app.state.reputation  # type: ignore[attr-defined]
    # Another replica, LISTENing; its own round comes only every 15 s.
    other = await start_app(run_worker=True, reputation_min_sends=10, reputation_window=10)
    there = other.app.state.reputation  # type: ignore[attr-defined]

    async def evaluated_there() -> bool:
        return there.evaluated_at is not None

    await eventually(evaluated_there)
    first_round = there.evaluated_at
    sent = [await sent_mail(sns, auth, f"user{i}@example.com") for i in range(10)]
    assert not here.verdict.hold and not there.verdict.hold

    await sns.deliver(
        ses_event(
            "eventpub-complaint-abuse.json", to="user0@example.com", ses_message_id=sent[0][1]
        )
    )

    async def held_here() -> bool:
        return bool(here.verdict.hold)

    async def held_there() -> bool:
        return bool(there.verdict.hold)

    # No status page read, no timer: the complaint itself, and the NOTIFY it sends.
    await eventually(held_here, within=5)
    await eventually(held_there, within=5)
    assert (there.evaluated_at - first_round).total_seconds() < 15
