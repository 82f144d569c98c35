"""The app receives every `email.*` event the code can raise, one per cause, through the real
paths: the worker (against moto's SES) and signed SNS messages built from the fixtures. The
app's endpoint is a real HTTP receiver that verifies each Standard Webhooks signature."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api_keys import create_key
from app.db import create_sessionmaker
from app.models import ApiKeyScope, Message
from app.webhooks.dispatcher import WebhookDispatcher
from tests.conditions import eventually
from tests.conftest import AppFactory, make_settings
from tests.sns_messages import CERT_NAME, COMPLAINTS, PARAMS, TOPIC, Sns, ses_event
from tests.webhooks.receivers import SECRET, Receiver


@pytest.fixture
async def app(
    start_app: AppFactory,
    database_url: str,
    identity: tuple[bytes, bytes],
    tmp_path: Path,
    app_endpoint: Receiver,
) -> AsyncIterator[tuple[httpx.AsyncClient, Sns]]:
    """The app with SNS set up and its events posted to ``app_endpoint``. The worker does not
    run by itself (each test drains it when the mail is ready), the delivery loop does."""
    (tmp_path / CERT_NAME).write_bytes(identity[1])
    settings = make_settings(
        database_url,
        run_worker=False,
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


async def accept(
    client: httpx.AsyncClient, auth: dict[str, str], to: str, kind: str = "verify-email"
) -> str:
    answer = await client.post(
        f"/emails/{kind}", json={"to": to, "params": PARAMS[kind]}, headers=auth
    )
    assert answer.status_code == 202, answer.text
    email_id: str = answer.json()["id"]
    return email_id


async def drain(client: httpx.AsyncClient) -> None:
    await client.app.state.worker.drain()  # type: ignore[attr-defined]


async def sent(client: httpx.AsyncClient, auth: dict[str, str], to: str) -> tuple[str, str]:
    """A mail SES took: (tegami's id, SES's message id)."""
    email_id = await accept(client, auth, to)
    await drain(client)
    shown = (await client.get(f"/emails/{email_id}", headers=auth)).json()
    assert shown["status"] == "sent", shown
    return email_id, shown["ses_message_id"]


async def received(receiver: Receiver, event_type: str, email_id: str) -> dict[str, Any]:
    """The one event of this type about this mail, as the app got it (signature verified)."""

    async def found() -> list[dict[str, Any]]:
        return [
            e
            for e in list(receiver.events)
            if e["type"] == event_type and e["data"]["email_id"] == email_id
        ]

    [event] = await eventually(found, within=15)
    return event


async def test_a_mail_stopped_at_send_tells_the_app_it_failed(
    app: tuple[httpx.AsyncClient, Sns], auth: dict[str, str], app_endpoint: Receiver
) -> None:
    client, _ = app
    address = "stopped@example.com"
    email_id = await accept(client, auth, address, kind="matching-notification")
    # Opted out after the mail was accepted: the check right before SendEmail stops it.
    put = await client.put(f"/recipients/{address}/opt-outs/matching", headers=auth)
    assert put.status_code == 200, put.text
    await drain(client)

    event = await received(app_endpoint, "email.failed", email_id)
    assert event["data"]["status"] == "failed"
    assert event["data"]["address"] == address


async def test_an_ses_rejection_tells_the_app_it_failed(
    app: tuple[httpx.AsyncClient, Sns], auth: dict[str, str], app_endpoint: Receiver
) -> None:
    client, sns = app
    email_id, ses_id = await sent(client, auth, "rejected@example.com")

    await sns.deliver(
        ses_event("eventpub-reject.json", to="rejected@example.com", ses_message_id=ses_id)
    )

    event = await received(app_endpoint, "email.failed", email_id)
    assert event["data"]["status"] == "failed"


async def test_a_mail_whose_link_expired_tells_the_app_it_expired(
    app: tuple[httpx.AsyncClient, Sns],
    auth: dict[str, str],
    app_endpoint: Receiver,
    engine: AsyncEngine,
) -> None:
    client, _ = app
    email_id = await accept(client, auth, "late@example.com", kind="password-reset")
    async with engine.begin() as conn:  # the hour of the reset link has passed
        await conn.execute(
            update(Message)
            .where(Message.id == email_id)
            .values(expires_at=func.now() - func.make_interval(0, 0, 0, 0, 0, 0, 1))
        )
    await drain(client)

    event = await received(app_endpoint, "email.expired", email_id)
    assert event["data"]["status"] == "expired"


@pytest.mark.parametrize("fixture", ["eventpub-delivery.json", "notif-delivery.json"])
async def test_a_delivery_tells_the_app_it_was_delivered(
    app: tuple[httpx.AsyncClient, Sns],
    auth: dict[str, str],
    app_endpoint: Receiver,
    fixture: str,
) -> None:
    client, sns = app
    email_id, ses_id = await sent(client, auth, "delivered@example.com")

    await sns.deliver(ses_event(fixture, to="delivered@example.com", ses_message_id=ses_id))

    event = await received(app_endpoint, "email.delivered", email_id)
    assert event["data"]["address"] == "delivered@example.com"
    assert event["data"]["test"] is False


async def test_a_delivery_delay_tells_the_app(
    app: tuple[httpx.AsyncClient, Sns], auth: dict[str, str], app_endpoint: Receiver
) -> None:
    client, sns = app
    email_id, ses_id = await sent(client, auth, "slow@example.com")

    await sns.deliver(
        ses_event("eventpub-deliverydelay.json", to="slow@example.com", ses_message_id=ses_id)
    )

    event = await received(app_endpoint, "email.delivery_delayed", email_id)
    assert event["data"]["address"] == "slow@example.com"


@pytest.mark.parametrize("fixture", [name for name, _ in COMPLAINTS])
async def test_a_complaint_tells_the_app(
    app: tuple[httpx.AsyncClient, Sns],
    auth: dict[str, str],
    app_endpoint: Receiver,
    fixture: str,
) -> None:
    client, sns = app
    address = dict(COMPLAINTS)[fixture]
    email_id, ses_id = await sent(client, auth, address)

    await sns.deliver(ses_event(fixture, to=address, ses_message_id=ses_id))

    event = await received(app_endpoint, "email.complained", email_id)
    assert event["data"]["status"] == "complained"


async def test_a_test_keys_mail_tells_the_app_it_is_a_test(
    app: tuple[httpx.AsyncClient, Sns],
    auth: dict[str, str],
    app_endpoint: Receiver,
    engine: AsyncEngine,
) -> None:
    client, _ = app
    async with create_sessionmaker(engine)() as session:
        key = await create_key(session, name="ci", scope=ApiKeyScope.TEST)
        await session.commit()
    ci = {"Authorization": f"Bearer {key}"}
    rendered = await accept(client, ci, "ci@example.com")
    cancelled = await accept(client, ci, "ci-cancel@example.com", kind="matching-notification")
    assert (await client.delete(f"/emails/{cancelled}", headers=ci)).status_code == 200
    real = await accept(client, auth, "taro@example.com")
    await drain(client)

    # `email.sent` of a test mail means rendered, never handed to SES: the app can tell.
    sent_event = await received(app_endpoint, "email.sent", rendered)
    assert (sent_event["data"]["status"], sent_event["data"]["test"]) == ("sent", True)
    cancelled_event = await received(app_endpoint, "email.cancelled", cancelled)
    assert cancelled_event["data"]["test"] is True
    real_event = await received(app_endpoint, "email.sent", real)
    assert real_event["data"]["test"] is False


async def test_every_email_event_carries_the_sends_tags(
    app: tuple[httpx.AsyncClient, Sns], auth: dict[str, str], app_endpoint: Receiver
) -> None:
    client, sns = app
    to = "tagged@example.com"
    answer = await client.post(
        "/emails/verify-email",
        json={"to": to, "params": PARAMS["verify-email"], "tags": {"job_id": "J-1"}},
        headers=auth,
    )
    email_id = answer.json()["id"]
    await drain(client)  # email.sent: the worker's statement
    ses_id = (await client.get(f"/emails/{email_id}", headers=auth)).json()["ses_message_id"]
    await sns.deliver(
        ses_event("eventpub-bounce-permanent-general.json", to=to, ses_message_id=ses_id)
    )
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    scheduled = await client.post(
        "/emails/matching-notification",
        json={"to": "other@example.com", "params": PARAMS["matching-notification"],
              "tags": {"job_id": "J-2"}, "send_at": later},
        headers=auth,
    )  # fmt: skip
    other_id = scheduled.json()["id"]
    assert (await client.delete(f"/emails/{other_id}", headers=auth)).status_code == 200

    for event_type, mail, tags in (
        ("email.sent", email_id, {"job_id": "J-1"}),
        ("email.bounced", email_id, {"job_id": "J-1"}),
        ("email.cancelled", other_id, {"job_id": "J-2"}),
    ):
        event = await received(app_endpoint, event_type, mail)
        assert event["data"]["tags"] == tags
