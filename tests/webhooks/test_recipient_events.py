"""Lifting a suppression is a fresh start the app hears of: `recipient.unsuppressed` reaches
its endpoint (a real receiver that verifies the signature), and the soft bounces counted
before no longer count towards the next suppression. Bounces arrive as signed SNS messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.webhooks.dispatcher import WebhookDispatcher
from tests.conditions import eventually
from tests.conftest import AppFactory, make_settings
from tests.fake_ses import FakeSes
from tests.sns_messages import CERT_NAME, PARAMS, SOFT_BOUNCES, TOPIC, Sns, ses_event
from tests.webhooks.receivers import SECRET, Receiver

ADDRESS = "soft@example.com"


@pytest.fixture
async def app(
    start_app: AppFactory,
    database_url: str,
    identity: tuple[bytes, bytes],
    tmp_path: Path,
    app_endpoint: Receiver,
    ses_account: FakeSes,  # SES's account suppression list, which a lift updates first
) -> AsyncIterator[tuple[httpx.AsyncClient, Sns]]:
    (tmp_path / CERT_NAME).write_bytes(identity[1])
    settings = make_settings(
        database_url,
        sns_cert_dir=tmp_path,
        sns_topic_arns=[TOPIC],
        webhook_secret=[SECRET],
        webhook_first_retry_seconds=0.2,
    ).model_copy(update={"webhook_url": app_endpoint.url})
    client = await start_app(settings=settings)
    dispatcher = WebhookDispatcher(engine=client.app.state.engine, settings=settings)  # type: ignore[attr-defined]
    stopping = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stopping))
    yield client, Sns(client, identity[0])
    stopping.set()
    await task


async def soft_bounce(sns: Sns) -> None:
    await sns.deliver(ses_event(SOFT_BOUNCES[0][0], to=ADDRESS))


async def state(client: httpx.AsyncClient, auth: dict[str, str]) -> dict[str, Any]:
    answer = await client.get(f"/recipients/{ADDRESS}", headers=auth)
    assert answer.status_code == 200
    found: dict[str, Any] = answer.json()
    return found


@pytest.mark.parametrize("suppressed_by", ["an-operator", "the-third-soft-bounce"])
async def test_lifting_a_suppression_tells_the_app_and_starts_the_soft_bounce_count_over(
    app: tuple[httpx.AsyncClient, Sns],
    auth: dict[str, str],
    app_endpoint: Receiver,
    suppressed_by: str,
) -> None:
    client, sns = app
    accepted = await client.post(
        "/emails/verify-email", json={"to": ADDRESS, "params": PARAMS["verify-email"]}, headers=auth
    )
    assert accepted.status_code == 202
    await client.app.state.worker.drain()  # type: ignore[attr-defined]

    await soft_bounce(sns)
    await soft_bounce(sns)
    before = await state(client, auth)
    assert before["soft_bounce_count"] == 2 and before["suppressed"] is None
    if suppressed_by == "an-operator":
        put = await client.put(
            f"/recipients/{ADDRESS}/suppression", json={"detail": "asked by phone"}, headers=auth
        )
        assert put.status_code == 200
        reason = "manual"
    else:
        await soft_bounce(sns)
        reason = "soft_bounce_limit"
    assert (await state(client, auth))["suppressed"]["reason"] == reason

    lifted = await client.delete(f"/recipients/{ADDRESS}/suppression", headers=auth)
    assert lifted.status_code == 200, lifted.text

    async def unsuppressed() -> list[dict[str, Any]]:
        return [e for e in list(app_endpoint.events) if e["type"] == "recipient.unsuppressed"]

    [event] = await eventually(unsuppressed, within=15)
    assert event["data"]["address"] == ADDRESS
    assert event["data"]["reason"] == reason

    # One more soft bounce after the lift is the first of a new run, not the third.
    await soft_bounce(sns)
    after = await state(client, auth)
    assert after["suppressed"] is None
    assert after["soft_bounce_count"] == 1
    again = await client.post(
        "/emails/password-reset",
        json={"to": ADDRESS, "params": PARAMS["password-reset"]},
        headers=auth,
    )
    assert again.status_code == 202, again.text
