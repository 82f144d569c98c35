"""Events for the app, through real HTTP: a receiver on 127.0.0.1 verifies every delivery with
the `standardwebhooks` library, as the app does."""

from __future__ import annotations

import base64
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.webhooks.events import EventType, model_for
from tests.conditions import eventually
from tests.conftest import AppFactory, make_settings
from tests.ses import MotoSes
from tests.sns_messages import CERT_NAME, PARAMS, TOPIC, Sns, ses_event

SECRET = "whsec_" + base64.b64encode(b"tegami-webhook-test-secret-32byt").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another-secret-for-the-rotation!").decode()


class Receiver:
    """The app's webhook endpoint: keeps what it got; can fail, hang, or be down."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = False
        self.hang = threading.Event()  # set: every request hangs until released
        self.release = threading.Event()
        self.arrived = 0  # posts that reached the handler (a hanging one included)
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.port = port
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.arrived += 1
                if receiver.hang.is_set():
                    receiver.release.wait(30)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    first = headers["webhook-id"] not in receiver._seen
                    receiver._seen.add(headers["webhook-id"])
                    receiver.received.append((headers, body))
                status = 500 if receiver.fail_first and first else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.release.set()
            self.server.shutdown()
            self.server.server_close()

    def events(self) -> list[dict[str, Any]]:
        """Every delivery, verified as the app would; a bad signature fails the test, and so
        does a body that is not the shape the OpenAPI `webhooks` promise for its type."""
        verified = []
        with self._lock:
            received = list(self.received)
        for headers, body in received:
            event = Webhook(SECRET).verify(body, headers)
            model_for(EventType(event["type"])).model_validate(event)
            event["webhook_id"] = headers["webhook-id"]
            verified.append(event)
        return verified

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["type"] == event_type]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def start(start_app: AppFactory, database_url: str) -> Any:
    """Start the app with webhooks posting to ``url`` (plain http on 127.0.0.1: the https
    rule of the ses backend is set aside here, as a receiver with TLS would only test TLS)."""

    async def run(url: str, **overrides: Any) -> httpx.AsyncClient:
        overrides.setdefault("database_url", database_url)
        overrides.setdefault("run_worker", True)
        overrides.setdefault("webhook_first_retry_seconds", 0.2)
        settings = make_settings(webhook_secret=[SECRET, OTHER_SECRET], **overrides).model_copy(
            update={"webhook_url": url}
        )
        return await start_app(settings=settings)

    return run


async def send_mail(
    client: httpx.AsyncClient, auth: dict[str, str], to: str, kind: str = "verify-email"
) -> dict[str, Any]:
    accepted = await client.post(
        f"/emails/{kind}",
        json={"to": to, "params": PARAMS[kind], "user_id": "user-42"},
        headers=auth,
    )
    assert accepted.status_code == 202, accepted.text

    async def sent() -> dict[str, Any]:
        shown: dict[str, Any] = (
            await client.get(f"/emails/{accepted.json()['id']}", headers=auth)
        ).json()
        return shown if shown["status"] == "sent" else {}

    return await eventually(sent)


async def test_hard_bounce_tells_the_app_the_email_bounced_and_the_address_is_suppressed(
    start: Any,
    receiver: Receiver,
    auth: dict[str, str],
    identity: tuple[bytes, bytes],
    tmp_path: Path,
) -> None:
    (tmp_path / CERT_NAME).write_bytes(identity[1])
    client = await start(receiver.url, sns_cert_dir=tmp_path, sns_topic_arns=[TOPIC])
    sns = Sns(client, identity[0])
    mail = await send_mail(client, auth, "taro@example.com")
    await eventually(lambda: _async(receiver.of_type("email.sent")))

    bounce = ses_event(
        "eventpub-bounce-permanent-general.json",
        to="taro@example.com",
        ses_message_id=mail["ses_message_id"],
    )
    await sns.deliver(bounce)

    bounced = await eventually(lambda: _async(receiver.of_type("email.bounced")))
    suppressed = await eventually(lambda: _async(receiver.of_type("recipient.suppressed")))
    data = bounced[0]["data"]
    assert data["email_id"] == mail["id"]
    assert data["type"] == "verify-email"
    assert data["user_id"] == "user-42"
    assert data["address"] == "taro@example.com"
    assert data["status"] == "bounced"
    assert data["ses_type"] == "Permanent"
    assert suppressed[0]["data"] == {
        "address": "taro@example.com",
        "user_id": "user-42",
        "reason": "hard_bounce",
        "category": None,
    }
    assert bounced[0]["webhook_id"].startswith("msg_")

    async def all_delivered() -> bool:
        listed = await client.get(
            "/webhooks/deliveries", params={"status": "delivered"}, headers=auth
        )
        assert listed.status_code == 200
        types = {d["type"] for d in listed.json()["deliveries"]}
        return {"email.sent", "email.bounced", "recipient.suppressed"} <= types

    await eventually(all_delivered)
    metrics = (await client.get("/metrics")).text
    assert 'tegami_webhook_deliveries_total{outcome="delivered",type="email.bounced"}' in metrics


async def _async(value: Any) -> Any:
    return value


async def test_a_receiver_that_fails_first_gets_the_same_webhook_id_again(
    start: Any, receiver: Receiver, auth: dict[str, str]
) -> None:
    receiver.fail_first = True
    client = await start(receiver.url)
    await send_mail(client, auth, "hanako@example.com")

    async def twice() -> bool:
        ids = [h["webhook-id"] for h, _ in receiver.received]
        return len(ids) >= 2

    await eventually(twice)
    first, second = receiver.events()[:2]
    assert first["webhook_id"] == second["webhook_id"]
    assert first == second  # the same body, signed again


async def test_a_receiver_down_for_a_while_loses_nothing(start: Any, auth: dict[str, str]) -> None:
    port = free_port()
    down = Receiver(port)
    # Down for the first attempt of each event; back before the schedule's first retry.
    client = await start(down.url, webhook_first_retry_seconds=3.0)
    for n in range(3):
        await send_mail(client, auth, f"user{n}@example.com")

    async def refused() -> bool:
        answer = await client.get("/webhooks/deliveries", headers=auth)
        deliveries = answer.json()["deliveries"]
        return len(deliveries) == 3 and all(
            d["attempts"] == 1 and d["status"] == "pending" and d["last_status"] is None
            for d in deliveries
        )

    await eventually(refused)
    down.start()
    try:
        await eventually(lambda: _async(len(down.of_type("email.sent")) == 3), within=20)
        addresses = sorted(e["data"]["address"] for e in down.of_type("email.sent"))
        assert addresses == [f"user{n}@example.com" for n in range(3)]

        async def recorded() -> bool:
            answer = await client.get("/webhooks/deliveries", headers=auth)
            states = {(d["status"], d["attempts"]) for d in answer.json()["deliveries"]}
            return states == {("delivered", 2)}

        await eventually(recorded)
    finally:
        down.stop()


async def test_one_byte_changed_fails_verification(
    start: Any, receiver: Receiver, auth: dict[str, str]
) -> None:
    client = await start(receiver.url)
    await send_mail(client, auth, "jiro@example.com")
    await eventually(lambda: _async(receiver.of_type("email.sent")))
    headers, body = receiver.received[0]
    tampered = body.replace(b"jiro@", b"jirO@")
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, headers)
    # Signed by the first secret only: the second verifies nothing until it signs.
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER_SECRET).verify(body, headers)


async def test_sending_goes_on_while_the_receiver_hangs(
    start: Any, receiver: Receiver, auth: dict[str, str], ses: MotoSes
) -> None:
    receiver.hang.set()
    client = await start(receiver.url, webhook_timeout_seconds=30)
    await send_mail(client, auth, "first@example.com")
    await eventually(lambda: _async(receiver.arrived >= 1))
    # The dispatcher is now stuck on a post that will not be answered for 30 s.
    mail = await send_mail(client, auth, "second@example.com")
    assert mail["ses_message_id"] in {m.ses_message_id for m in ses.sent()}
    receiver.release.set()


async def test_opt_out_api_and_undo_button_raise_events(
    start: Any, receiver: Receiver, auth: dict[str, str]
) -> None:
    client = await start(receiver.url)
    address = "matching@example.com"
    put = await client.put(f"/recipients/{address}/opt-outs/matching", headers=auth)
    assert put.status_code == 200, put.text
    assert [o["category"] for o in put.json()["opt_outs"]] == ["matching"]
    again = await client.put(f"/recipients/{address}/opt-outs/matching", headers=auth)
    assert again.status_code == 200
    refused = await client.post(
        "/emails/matching-notification",
        json={"to": address, "params": PARAMS["matching-notification"]},
        headers=auth,
    )
    assert refused.status_code == 409

    deleted = await client.delete(f"/recipients/{address}/opt-outs/matching", headers=auth)
    assert deleted.status_code == 200
    assert deleted.json()["opt_outs"] == []
    history = [(h["action"], h["cause"]) for h in deleted.json()["history"]]
    assert [a for a, _ in history] == ["opted_out", "opted_in"]
    assert all(cause.startswith("api_key:") for _, cause in history)

    account = await client.put(f"/recipients/{address}/opt-outs/account", headers=auth)
    assert account.status_code == 422
    assert account.json()["error"]["code"] == "category_not_optional"

    await eventually(lambda: _async(receiver.of_type("recipient.opted_in")))
    opted_out = receiver.of_type("recipient.opted_out")
    assert len(opted_out) == 1  # the second PUT changed nothing
    assert opted_out[0]["data"]["category"] == "matching"
    assert opted_out[0]["data"]["address"] == address


async def test_no_url_records_no_events(
    start_app: Any, auth: dict[str, str], engine: AsyncEngine
) -> None:
    from sqlalchemy import text

    client = await start_app(run_worker=True)
    await send_mail(client, auth, "quiet@example.com")
    await client.put("/recipients/quiet@example.com/opt-outs/matching", headers=auth)
    async with engine.connect() as conn:
        count = (await conn.execute(text("SELECT count(*) FROM webhook_delivery"))).scalar_one()
    assert count == 0


def test_secret_must_be_standard_webhooks_form() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        make_settings(webhook_url="https://app.proworks.jp/hook", webhook_secret=["nope"])
    with pytest.raises(ValueError, match="TEGAMI_WEBHOOK_SECRET is required"):
        make_settings(webhook_url="https://app.proworks.jp/hook")
    with pytest.raises(ValueError, match="https"):
        make_settings(webhook_url="http://app.proworks.jp/hook", webhook_secret=[SECRET])
    make_settings(
        webhook_url="http://127.0.0.1:9000/hook",
        webhook_secret=[SECRET],
        mail_backend="mailbox",
    )


async def test_undo_button_on_the_done_page_opts_back_in(
    start: Any, receiver: Receiver, auth: dict[str, str], ses: MotoSes
) -> None:
    client = await start(receiver.url)
    address = "undo@example.com"
    await send_mail(client, auth, address, kind="matching-notification")
    mail = next(m for m in ses.sent() if m.message["To"] == address)
    link = urlsplit(str(mail.message["List-Unsubscribe"]).strip("<>")).path

    done = await client.post(link)
    assert done.status_code == 200
    assert "配信を再開する" in done.text
    action = re.search(r'<form method="post" action="([^"]+)">', done.text)
    assert action is not None
    undo = urljoin(link, action.group(1))
    assert undo == f"{link}/resubscribe"

    # The form as a browser sends it: its hidden nonce, from this site.
    nonce = re.search(r'<input type="hidden" name="nonce" value="([^"]+)">', done.text)
    assert nonce is not None
    browser = {"Origin": "https://mail.proworks.jp", "Sec-Fetch-Site": "same-origin"}
    resumed = await client.post(undo, data={"nonce": nonce.group(1)}, headers=browser)
    assert resumed.status_code == 200
    assert "配信を再開しました" in resumed.text
    again = await client.post(undo, data={"nonce": nonce.group(1)}, headers=browser)  # idempotent
    assert again.status_code == 200
    accepted = await client.post(
        "/emails/matching-notification",
        json={"to": address, "params": PARAMS["matching-notification"]},
        headers=auth,
    )
    assert accepted.status_code == 202
    state = (await client.get(f"/recipients/{address}", headers=auth)).json()
    assert [h["action"] for h in state["history"]] == ["opted_out", "opted_in"]
    assert state["history"][1]["cause"].startswith("unsubscribe:")
    assert (await client.post("/unsubscribe/not-a-token/resubscribe")).status_code == 404

    opted_in = await eventually(lambda: _async(receiver.of_type("recipient.opted_in")))
    assert len(opted_in) == 1
    assert opted_in[0]["data"]["address"] == address
    assert opted_in[0]["data"]["category"] == "matching"
    assert receiver.of_type("recipient.opted_out")


async def test_held_and_erased_mail_tell_the_app_and_an_erasure_leaves_no_address_behind(
    start: Any, receiver: Receiver, auth: dict[str, str], engine: AsyncEngine
) -> None:
    from sqlalchemy import select

    from app.db import driver_connection
    from app.emails import outbox
    from app.models import OPTIONAL_CATEGORIES, WebhookDelivery

    client = await start(receiver.url)
    await send_mail(client, auth, "hanako@example.com")  # email.sent, naming the address
    # A matching notification the reputation guard holds; sending is paused meanwhile, so the
    # worker does not take it first.
    async with driver_connection(engine) as conn:
        await outbox.pause_sending(conn, reason="test: hold first", probe=3600)
    held = await client.post(
        "/emails/matching-notification",
        json={"to": "jiro@example.com", "params": PARAMS["matching-notification"]},
        headers=auth,
    )
    async with engine.begin() as conn:
        await outbox.hold_optional(conn, categories=OPTIONAL_CATEGORIES)
    held_events = await eventually(lambda: _async(receiver.of_type("email.held")))
    assert held_events[0]["data"]["email_id"] == held.json()["id"]

    erased = await client.delete("/recipients/jiro@example.com", headers=auth)
    assert erased.status_code == 200, erased.text
    gone = await eventually(lambda: _async(receiver.of_type("recipient.erased")))
    assert gone[0]["data"] == {"user_id": None, "erased": True}
    await client.delete("/recipients/hanako@example.com", headers=auth)

    async def no_address_kept() -> bool:
        async with engine.connect() as conn:
            kept = (await conn.execute(select(WebhookDelivery.data))).scalars().all()
        return all(data.get("address") is None for data in kept) and len(kept) >= 4

    await eventually(no_address_kept)
