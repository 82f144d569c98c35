"""An erasure forgets that person, and only that person: walked over HTTP, with mail sent
through moto's SES (SES's account list in front, tests/fake_ses.py), SES feedback as signed
SNS messages and the app's events arriving at a verifying receiver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conditions import eventually
from tests.conftest import AppFactory, make_settings
from tests.fake_ses import FakeSes
from tests.sns_messages import CERT_NAME, TOPIC, Sns, ses_event
from tests.webhooks.test_webhooks import OTHER_SECRET, SECRET, Receiver, send_mail

TARO = "taro@example.com"
KOTARO = "kotaro@example.com"  # holds "taro@example.com" inside it
ARO = "aro@example.com"  # held inside both, never mailed
# SES's diagnostic names the address: "smtp; 550 5.1.1 <jane@example.com>... User".
BOUNCE_WITH_DIAGNOSTIC = "notif-bounce-permanent-general-with-dsn.json"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
async def app(
    start_app: AppFactory,
    database_url: str,
    receiver: Receiver,
    ses_account: FakeSes,
    identity: tuple[bytes, bytes],
    tmp_path: Path,
) -> tuple[httpx.AsyncClient, Sns]:
    """The app with its worker, SNS feedback and events to ``receiver``."""
    (tmp_path / CERT_NAME).write_bytes(identity[1])
    settings = make_settings(
        database_url,
        run_worker=True,
        webhook_first_retry_seconds=0.2,
        webhook_secret=[SECRET, OTHER_SECRET],
        sns_cert_dir=tmp_path,
        sns_topic_arns=[TOPIC],
    ).model_copy(update={"webhook_url": receiver.url})
    client = await start_app(settings=settings)
    return client, Sns(client, identity[0])


async def bounced(sns: Sns, mail: dict[str, Any], to: str) -> None:
    """A hard bounce whose diagnostic quotes the address."""
    event = ses_event(
        BOUNCE_WITH_DIAGNOSTIC, to={"jane@example.com": to}, ses_message_id=mail["ses_message_id"]
    )
    await sns.deliver(event)


async def deliveries(client: httpx.AsyncClient, auth: dict[str, str]) -> list[dict[str, Any]]:
    """The stored events (id, type, data), whatever became of their posts."""
    listed = await client.get("/webhooks/deliveries", params={"limit": 500}, headers=auth)
    assert listed.status_code == 200, listed.text
    keep = ("webhook_id", "type", "data")
    return [{k: d[k] for k in keep} for d in listed.json()["deliveries"]]


async def shown(client: httpx.AsyncClient, auth: dict[str, str], mail_id: str) -> dict[str, Any]:
    answer = await client.get(f"/emails/{mail_id}", headers=auth)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def about(events: list[dict[str, Any]], mail_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e["data"].get("email_id") == mail_id]


async def test_erasing_taro_forgets_taro_and_leaves_kotaro_and_erasing_aro_touches_nothing(
    app: tuple[httpx.AsyncClient, Sns], receiver: Receiver, auth: dict[str, str]
) -> None:
    client, sns = app
    taro = await send_mail(client, auth, TARO)
    kotaro = await send_mail(client, auth, KOTARO)
    await bounced(sns, taro, TARO)
    await bounced(sns, kotaro, KOTARO)

    async def both_bounced() -> list[dict[str, Any]]:
        events = await deliveries(client, auth)
        kinds = [e["type"] for e in events]
        return events if kinds.count("email.bounced") == 2 else []

    await eventually(both_bounced)
    kotaro_before = await shown(client, auth, kotaro["id"])
    assert "<kotaro@example.com>" in kotaro_before["last_error"]

    # Someone never mailed, whose address sits inside both: nothing of anyone changes.
    before = await deliveries(client, auth)
    mails_before = [await shown(client, auth, m["id"]) for m in (taro, kotaro)]
    erased_aro = await client.delete(f"/recipients/{ARO}", headers=auth)
    assert erased_aro.status_code == 200
    assert erased_aro.json()["erased"] is False
    assert await deliveries(client, auth) == before
    assert [await shown(client, auth, m["id"]) for m in (taro, kotaro)] == mails_before

    erased = await client.delete(f"/recipients/{TARO}", headers=auth)
    assert erased.status_code == 200
    assert erased.json()["erased"] is True

    # kotaro: everything as it was, in the mail's history and in the stored events.
    assert await shown(client, auth, kotaro["id"]) == kotaro_before
    after = await deliveries(client, auth)
    kotaro_events = about(after, kotaro["id"])
    assert kotaro_events == about(before, kotaro["id"])
    assert {e["data"]["address"] for e in kotaro_events} == {KOTARO}
    [kotaro_bounce] = [e for e in kotaro_events if e["type"] == "email.bounced"]
    assert kotaro_bounce["data"]["diagnostic"] == "smtp; 550 5.1.1 <kotaro@example.com>... User"
    kotaro_suppressed = [
        e for e in after if e["type"] == "recipient.suppressed" and e["data"]["address"] == KOTARO
    ]
    assert len(kotaro_suppressed) == 1

    # taro: the mail and every stored event, the bounce's diagnostic included, name no address.
    taro_after = await shown(client, auth, taro["id"])
    assert taro_after["to"] is None
    assert TARO not in json.dumps(taro_after)
    assert "<[erased]>" in taro_after["last_error"]
    taro_events = about(after, taro["id"])
    assert taro_events and all(e["data"]["address"] is None for e in taro_events)
    [taro_bounce] = [e for e in taro_events if e["type"] == "email.bounced"]
    assert taro_bounce["data"]["diagnostic"] == "smtp; 550 5.1.1 <[erased]>... User"
    stored = json.dumps(after)
    assert stored.count(TARO) == stored.count(KOTARO)  # each inside a kotaro, none alone
    assert '"taro@example.com"' not in stored and "<taro@example.com>" not in stored
    # The webhook receiver was told of kotaro by name, and of taro before the erasure only.
    assert any(e["data"].get("address") == KOTARO for e in receiver.events())


async def test_feedback_after_an_erasure_names_no_address(
    app: tuple[httpx.AsyncClient, Sns], receiver: Receiver, auth: dict[str, str]
) -> None:
    client, sns = app
    mail = await send_mail(client, auth, TARO)
    assert (await client.delete(f"/recipients/{TARO}", headers=auth)).status_code == 200
    await eventually(lambda: _now(receiver.of_type("recipient.erased")))
    posted_before = len(receiver.received)

    # A complaint, weeks later.
    complaint = ses_event(
        "eventpub-complaint-abuse.json", to=TARO, ses_message_id=mail["ses_message_id"]
    )
    await sns.deliver(complaint)
    [complained] = await eventually(lambda: _now(receiver.of_type("email.complained")))
    assert complained["data"]["email_id"] == mail["id"]
    assert complained["data"]["address"] is None

    # An operator lifted the erasure's suppression; then SES reports a bounce quoting the
    # address: the app hears of the suppression and the bounce, with no address.
    lifted = await client.delete(f"/recipients/{TARO}/suppression", headers=auth)
    assert lifted.status_code == 200, lifted.text
    await bounced(sns, mail, TARO)
    [suppressed] = await eventually(lambda: _now(receiver.of_type("recipient.suppressed")))
    [bounce] = await eventually(lambda: _now(receiver.of_type("email.bounced")))
    assert suppressed["data"]["address"] is None
    assert suppressed["data"]["reason"] == "hard_bounce"
    assert bounce["data"]["address"] is None
    assert bounce["data"]["diagnostic"] == "smtp; 550 5.1.1 <[erased]>... User"
    await eventually(lambda: _now(receiver.of_type("recipient.unsuppressed")))
    for _, body in receiver.received[posted_before:]:
        assert b"taro" not in body.lower()

    # Nor does tegami keep it: the mail's history, its stored events, the recipient's state.
    assert "taro" not in json.dumps(await shown(client, auth, mail["id"])).lower()
    assert "taro" not in json.dumps(await deliveries(client, auth)).lower()
    state = (await client.get(f"/recipients/{TARO}", headers=auth)).json()
    assert state["address"] is None
    assert "taro" not in json.dumps(state).lower()


async def _now(value: Any) -> Any:
    return value
