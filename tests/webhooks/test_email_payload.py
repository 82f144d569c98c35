"""Every `email.*` event carries the fields of its model, whichever path raised it: the worker
(finish), SES feedback, the guard's hold, an operator's discard, the API's cancel, an erasure.
They are built from one place, the model (app.webhooks.events.EmailEventData): adding a field is
one field there, with its description and the SQL it is ``ReadFrom``; the tests below show a
model with one field more reaching the statement every path uses, and every path's payload
carrying exactly the model's fields."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import httpx
import pytest
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import Fragment, compose, driver_connection
from app.emails import outbox
from app.models import OPTIONAL_CATEGORIES, WebhookDelivery
from app.recipients import service as recipients
from app.webhooks import deliveries
from app.webhooks.events import EmailEventData, ReadFrom, read_from
from tests.sns_messages import PARAMS, Sns, ses_event


async def accept(client: httpx.AsyncClient, auth: dict[str, str], to: str, kind: str) -> str:
    answer = await client.post(
        f"/emails/{kind}", json={"to": to, "params": PARAMS[kind]}, headers=auth
    )
    assert answer.status_code == 202, answer.text
    email_id: str = answer.json()["id"]
    return email_id


class WithOneMore(EmailEventData):
    """The one edit: a field, its description and where it is read."""

    sent_at: Annotated[datetime | None, ReadFrom("m.sent_at")] = Field(
        default=None, description="When SES took the mail."
    )


def test_the_payload_is_read_from_the_models_fields() -> None:
    assert list(deliveries.EMAIL_EVENT_FIELDS) == list(EmailEventData.model_fields)

    # SES feedback's statement, as app.sns.feedback composes it, with each model.
    def feedback_with(*events: Fragment) -> str:
        owners = (recipients.DECISIONS, outbox.FEEDBACK_WITH_EVENTS)
        return compose(*owners, *events, select="SELECT 1").sql

    assert "'sent_at', m.sent_at" in feedback_with(deliveries.email_events(WithOneMore))
    assert "'sent_at'" not in feedback_with(deliveries.email_events())


def test_a_field_without_its_source_is_refused_where_the_payload_is_built() -> None:
    class Unsourced(EmailEventData):
        sent_at: datetime | None = Field(default=None, description="When SES took the mail.")

    with pytest.raises(TypeError, match=r"Unsourced.sent_at needs one ReadFrom"):
        read_from(Unsourced)


async def test_every_path_posts_the_models_fields(
    sns: Sns, auth: dict[str, str], engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deliveries, "_enabled", True)
    client = sns.client
    # The worker: email.sent; SES feedback: email.bounced.
    sent = await accept(client, auth, "taro@example.com", "verify-email")
    await client.app.state.worker.drain()  # type: ignore[attr-defined]
    shown = (await client.get(f"/emails/{sent}", headers=auth)).json()
    bounce = ses_event(
        "eventpub-bounce-permanent-general.json",
        to="taro@example.com",
        ses_message_id=shown["ses_message_id"],
    )
    await sns.deliver(bounce)
    # The guard holds optional mail (email.held); an operator discards it (email.failed).
    async with driver_connection(engine) as conn:
        await outbox.pause_sending(conn, reason="test: nothing goes out", probe=3600)
    held = await accept(client, auth, "jiro@example.com", "matching-notification")
    async with engine.begin() as conn:
        await outbox.hold_optional(conn, categories=OPTIONAL_CATEGORIES)
        await outbox.discard_held(conn, ids=None, cause="test")
    # The app cancels (email.cancelled); an erasure fails queued mail (email.failed).
    cancelled = await accept(client, auth, "saburo@example.com", "verify-email")
    assert (await client.delete(f"/emails/{cancelled}", headers=auth)).status_code == 200
    erased = await accept(client, auth, "shiro@example.com", "verify-email")
    assert (await client.delete("/recipients/shiro@example.com", headers=auth)).status_code == 200

    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(WebhookDelivery.type, WebhookDelivery.data).where(
                    WebhookDelivery.type.startswith("email.")
                )
            )
        ).all()
    raised = {(row.data["email_id"], row.type) for row in rows}
    assert raised >= {
        (sent, "email.sent"),
        (sent, "email.bounced"),
        (held, "email.held"),
        (held, "email.failed"),
        (cancelled, "email.cancelled"),
        (erased, "email.failed"),
    }
    for row in rows:
        assert set(row.data) == set(EmailEventData.model_fields), row.type
