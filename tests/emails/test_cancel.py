"""DELETE /emails/{id}: a mail not yet handed to SES is stopped; one being sent is not."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api_keys import create_key
from app.db import create_sessionmaker
from app.models import ApiKeyScope
from tests.conditions import eventually
from tests.conftest import AppFactory, make_settings
from tests.emails.test_router import body, drain
from tests.ses import MotoSes
from tests.webhooks.test_webhooks import SECRET, Receiver

KIND = "matching-notification"


async def _key(engine: AsyncEngine, scope: ApiKeyScope) -> dict[str, str]:
    async with create_sessionmaker(engine)() as session:
        key = await create_key(session, name=f"{scope}-{uuid.uuid4().hex[:6]}", scope=scope)
        await session.commit()
    return {"Authorization": f"Bearer {key}"}


async def _send(client: httpx.AsyncClient, headers: dict[str, str], **extra: Any) -> str:
    answer = await client.post(f"/emails/{KIND}", json=body(kind=KIND, **extra), headers=headers)
    assert answer.status_code == 202, answer.text
    email_id: str = answer.json()["id"]
    return email_id


async def test_cancelled_mail_is_never_sent_and_says_so(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes
) -> None:
    queued = await _send(client, auth)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    scheduled = await _send(client, auth, send_at=later)

    for email_id in (queued, scheduled):
        answer = await client.delete(f"/emails/{email_id}", headers=auth)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"status": "cancelled"}

    await drain(client)
    assert ses.sent() == []
    shown = (await client.get(f"/emails/{queued}", headers=auth)).json()
    assert shown["status"] == "cancelled"
    assert [e["kind"] for e in shown["events"]] == ["accepted", "cancelled"]
    assert shown["events"][1]["cause"] == shown["events"][0]["cause"]  # the key that did it
    # Cancelling again: nothing more to stop.
    again = await client.delete(f"/emails/{queued}", headers=auth)
    assert again.status_code == 409
    assert again.json()["error"] == {
        "code": "not_cancellable",
        "message": "the email can no longer be cancelled: it is cancelled",
        "status": "cancelled",
    }


async def test_a_sent_mail_cannot_be_cancelled(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes
) -> None:
    email_id = await _send(client, auth)
    await drain(client)

    answer = await client.delete(f"/emails/{email_id}", headers=auth)

    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "not_cancellable"
    assert answer.json()["error"]["status"] == "sent"
    assert len(ses.sent()) == 1


async def test_a_key_cancels_only_its_own_mail(
    client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes
) -> None:
    test_key = await _key(engine, ApiKeyScope.TEST)
    app_key = await _key(engine, ApiKeyScope.APP)
    apps_mail = await _send(client, app_key)
    tests_mail = await _send(client, test_key)

    refused = await client.delete(f"/emails/{apps_mail}", headers=test_key)
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "email_not_found"
    assert (await client.delete(f"/emails/{tests_mail}", headers=test_key)).status_code == 200
    assert (await client.delete(f"/emails/{apps_mail}", headers=auth)).status_code == 200  # admin
    assert (await client.delete(f"/emails/{uuid.uuid4()}", headers=auth)).status_code == 404
    assert (await client.delete(f"/emails/{apps_mail}")).status_code == 401


async def test_cancel_racing_the_worker_is_either_cancelled_or_sent_never_both(
    start_app: AppFactory, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes
) -> None:
    # A slow rate: the worker claims a few mails at a time while the cancels arrive.
    client = await start_app(run_worker=True, max_send_rate=10.0)
    batch = {"emails": [body(f"user{i}@example.com", KIND) for i in range(40)]}
    accepted = await client.post(f"/emails/{KIND}/batch", json=batch, headers=auth)
    ids = [result["id"] for result in accepted.json()["results"]]

    answers = await asyncio.gather(
        *(client.delete(f"/emails/{email_id}", headers=auth) for email_id in ids)
    )

    codes = {email_id: answer.status_code for email_id, answer in zip(ids, answers, strict=True)}
    assert set(codes.values()) <= {200, 409}

    async def settled() -> list[dict[str, Any]]:
        shown = [(await client.get(f"/emails/{i}", headers=auth)).json() for i in ids]
        return shown if all(s["status"] in ("sent", "cancelled") for s in shown) else []

    shown = await eventually(settled, within=30)
    by_id = {s["id"]: s for s in shown}
    reached_ses = {s["id"] for s in shown if s["ses_message_id"] is not None}
    for email_id, code in codes.items():
        if code == 200:
            assert by_id[email_id]["status"] == "cancelled"
            assert email_id not in reached_ses
        else:
            assert by_id[email_id]["status"] == "sent"
            assert email_id in reached_ses
    assert len(ses.sent()) == len(reached_ses) == list(codes.values()).count(409)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


async def test_a_cancel_tells_the_app(
    start_app: AppFactory, database_url: str, auth: dict[str, str], receiver: Receiver
) -> None:
    settings = make_settings(
        database_url, webhook_secret=[SECRET], run_worker=True, webhook_first_retry_seconds=0.2
    ).model_copy(update={"webhook_url": receiver.url})
    client = await start_app(settings=settings)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    email_id = await _send(client, auth, send_at=later, user_id="user-7")

    assert (await client.delete(f"/emails/{email_id}", headers=auth)).status_code == 200

    async def cancelled() -> list[dict[str, Any]]:
        return receiver.of_type("email.cancelled")

    [event] = await eventually(cancelled)
    assert event["data"]["email_id"] == email_id
    assert event["data"]["status"] == "cancelled"
    assert event["data"]["user_id"] == "user-7"
