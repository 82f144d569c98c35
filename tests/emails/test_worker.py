"""The outbox worker: re-checks at send time, expiry, SES outages and errors, many workers."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import create_engine
from app.emails.lifecycle import MAX_BACKOFF_SECONDS
from app.emails.sender import Outcome, classify_ses_error, open_sender
from app.emails.worker import Worker
from app.models import Message, MessageEvent, SuppressionReason
from app.unsubscribe.links import UnsubscribeLinks
from tests.conditions import eventually
from tests.conftest import AppFactory, make_settings
from tests.emails.test_router import _suppress, body, drain
from tests.ses import MotoSes


async def _accept(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    to: str = "taro@example.com",
    kind: str = "verify-email",
) -> str:
    answer = await client.post(f"/emails/{kind}", json=body(to, kind), headers=auth)
    assert answer.status_code == 202, answer.text
    email_id: str = answer.json()["id"]
    return email_id


async def _status(client: httpx.AsyncClient, auth: dict[str, str], email_id: str) -> dict[str, Any]:
    shown: dict[str, Any] = (await client.get(f"/emails/{email_id}", headers=auth)).json()
    return shown


async def test_address_suppressed_after_accept_is_not_sent(
    client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes
) -> None:
    email_id = await _accept(client, auth)
    await _suppress(engine, "TARO@example.com", SuppressionReason.COMPLAINT)

    await drain(client)

    assert ses.sent() == []
    shown = await _status(client, auth, email_id)
    assert shown["status"] == "failed"
    assert shown["last_error"] == "suppressed: complaint"


async def test_expired_mail_is_never_sent(
    client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes
) -> None:
    email_id = await _accept(client, auth, kind="password-reset")
    async with engine.begin() as conn:
        await conn.execute(
            update(Message).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )

    await drain(client)

    assert ses.sent() == []
    assert (await _status(client, auth, email_id))["status"] == "expired"


async def test_ses_outage_loses_nothing_and_sends_everything_once_back(
    client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes
) -> None:
    ids = [await _accept(client, auth, f"user{i}@example.com") for i in range(5)]
    ses.stop()
    try:
        await drain(client)
        for email_id in ids:
            shown = await _status(client, auth, email_id)
            assert shown["status"] == "queued"
            assert "EndpointConnectionError" in str(shown["last_error"])
        async with engine.connect() as conn:
            waits = (
                await conn.execute(text("SELECT next_attempt_at - now() FROM message"))
            ).scalars()
            # Backoff is capped, so every mail goes out soon after SES is back.
            assert all(timedelta(0) < w <= timedelta(seconds=MAX_BACKOFF_SECONDS) for w in waits)
    finally:
        ses.start()

    # Time passes: the retries fall due.
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE message SET next_attempt_at = now()"))
    await drain(client)

    assert sorted(m.destinations[0] for m in ses.sent()) == sorted(
        f"user{i}@example.com" for i in range(5)
    )
    for email_id in ids:
        shown = await _status(client, auth, email_id)
        assert shown["status"] == "sent"
        assert [e["kind"] for e in shown["events"]] == ["accepted", "send_retry", "sent"]


async def test_running_worker_resends_by_itself_when_ses_returns(
    start_app: AppFactory, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes
) -> None:
    client = await start_app(run_worker=True)
    ses.stop()
    try:
        email_id = await _accept(client, auth)

        async def retried() -> bool:
            return (await _status(client, auth, email_id))["status"] == "queued" and bool(
                (await _status(client, auth, email_id))["last_error"]
            )

        await eventually(retried)
    finally:
        ses.start()
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE message SET next_attempt_at = now()"))

    async def sent() -> bool:
        return bool((await _status(client, auth, email_id))["status"] == "sent")

    await eventually(sent)
    assert len(ses.sent()) == 1


async def test_an_unverified_from_address_pauses_sending_and_fails_nothing(
    start_app: AppFactory, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes
) -> None:
    # moto refuses a From domain that is not a verified identity, as SES does ("Email address
    # not verified", "Did not have authority to send from email noreply@unverified.example"):
    # about the account, not the mail.
    client = await start_app(from_address="PRO WORKS <noreply@unverified.example>")
    email_id = await _accept(client, auth)

    await drain(client)

    shown = await _status(client, auth, email_id)
    assert shown["status"] == "queued"
    assert "MessageRejected" in str(shown["last_error"])
    assert ses.sent() == []
    async with engine.connect() as conn:
        reason = (await conn.execute(text("SELECT pause_reason FROM send_pacer"))).scalar_one()
    assert "noreply@unverified.example" in reason


async def test_new_mail_wakes_the_running_worker(
    start_app: AppFactory, auth: dict[str, str], ses: MotoSes
) -> None:
    # A long poll interval: only the wake-up signal can make this pass quickly.
    client = await start_app(run_worker=True)
    client.app.state.worker.poll_seconds = 3600  # type: ignore[attr-defined]
    await asyncio.sleep(0)
    email_id = await _accept(client, auth)

    async def sent() -> bool:
        return bool((await _status(client, auth, email_id))["status"] == "sent")

    await eventually(sent, within=10)


async def test_two_workers_drain_one_backlog_without_sending_twice(
    client: httpx.AsyncClient, auth: dict[str, str], database_url: str, ses: MotoSes
) -> None:
    addresses = [f"backlog{i}@example.com" for i in range(120)]
    for start in range(0, len(addresses), 20):
        await asyncio.gather(*(_accept(client, auth, a) for a in addresses[start : start + 20]))

    settings = make_settings(database_url, send_concurrency=8)
    engines = [create_engine(settings.sqlalchemy_url) for _ in range(2)]
    links = UnsubscribeLinks.of(settings)
    try:
        async with open_sender(settings) as sender_a, open_sender(settings) as sender_b:
            workers = [
                Worker(
                    engine=engines[0], sender=sender_a, settings=settings, links=links, batch_size=7
                ),
                Worker(
                    engine=engines[1], sender=sender_b, settings=settings, links=links, batch_size=7
                ),
            ]
            handled = await asyncio.gather(*(w.drain() for w in workers))
    finally:
        for engine in engines:
            await engine.dispose()

    sent_to = [m.destinations[0] for m in ses.sent()]
    assert sorted(sent_to) == sorted(addresses)
    assert all(count > 0 for count in handled), "both workers should have taken a share"


async def test_rate_falls_back_to_one_per_second_when_ses_cannot_tell(
    database_url: str, engine: AsyncEngine, ses: MotoSes, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(database_url, max_send_rate=None)
    async with open_sender(settings) as sender:
        worker = Worker(
            engine=engine, sender=sender, settings=settings, links=UnsubscribeLinks.of(settings)
        )
        # moto does not implement SES v2 GetAccount: the rate cannot be read.
        with caplog.at_level(logging.WARNING):
            rate = await worker.refresh_rate()
    assert rate == 1.0
    assert "could not read MaxSendRate" in caplog.text


async def test_configured_rate_wins_over_ses(
    database_url: str, engine: AsyncEngine, ses: MotoSes
) -> None:
    settings = make_settings(database_url, max_send_rate=14.0)
    async with open_sender(settings) as sender:
        worker = Worker(
            engine=engine, sender=sender, settings=settings, links=UnsubscribeLinks.of(settings)
        )
        assert await worker.refresh_rate() == 14.0


async def test_every_attempt_is_on_the_record(
    client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes
) -> None:
    email_id = await _accept(client, auth)
    await drain(client)
    async with engine.connect() as conn:
        kinds = (
            await conn.execute(
                select(MessageEvent.kind, MessageEvent.cause).order_by(MessageEvent.id)
            )
        ).all()
    assert [k for k, _ in kinds] == ["accepted", "sent"]
    assert str(kinds[0][1]).startswith("api_key:")
    assert (await _status(client, auth, email_id))["attempts"] == 1


@pytest.mark.parametrize(
    ("code", "status", "outcome"),
    [
        ("TooManyRequestsException", 429, Outcome.THROTTLED),
        ("Throttling", 400, Outcome.THROTTLED),
        # About the account, its credentials or configuration: sending pauses, no mail fails.
        ("SendingPausedException", 400, Outcome.PAUSED),
        ("AccountSuspendedException", 400, Outcome.PAUSED),
        ("MailFromDomainNotVerifiedException", 400, Outcome.PAUSED),
        ("LimitExceededException", 400, Outcome.PAUSED),
        ("AccessDeniedException", 403, Outcome.PAUSED),
        ("ExpiredTokenException", 400, Outcome.PAUSED),
        ("UnrecognizedClientException", 403, Outcome.PAUSED),
        ("InvalidSignatureException", 403, Outcome.PAUSED),
        ("SignatureDoesNotMatch", 403, Outcome.PAUSED),
        ("RequestExpired", 400, Outcome.PAUSED),
        ("InvalidClientTokenId", 403, Outcome.PAUSED),
        ("NotFoundException", 404, Outcome.PAUSED),
        ("SomethingNew", 403, Outcome.PAUSED),
        # About this mail: it fails with SES's reason.
        ("MessageRejected", 400, Outcome.PERMANENT),  # (a virus, say: not "not verified")
        ("InvalidParameterValue", 400, Outcome.PERMANENT),
        # SES's side, or nobody listed it: retried with backoff, never failed for it.
        ("InternalFailure", 500, Outcome.RETRY),
        ("ServiceUnavailable", 503, Outcome.RETRY),
        ("SomethingNew", 400, Outcome.RETRY),
        ("SomethingNew", None, Outcome.RETRY),
    ],
)
def test_ses_errors_are_sorted_by_scope(code: str, status: int | None, outcome: Outcome) -> None:
    sorted_as = classify_ses_error(
        code=code,
        http_status=status,
        message="Message rejected",
        from_address="PRO WORKS <noreply@proworks.jp>",
        to_addresses=["taro@example.com"],
    )
    assert sorted_as is outcome


_FAILED_THE_CHECK = (
    "Email address is not verified. The following identities failed the check in region "
    "AP-NORTHEAST-1: {}"
)


@pytest.mark.parametrize(
    ("named", "outcome"),
    [
        # The From identity lapsed (its DKIM records deleted, say): every mail would fail.
        ("noreply@proworks.jp", Outcome.PAUSED),
        ("proworks.jp", Outcome.PAUSED),
        ("NoReply@ProWorks.jp", Outcome.PAUSED),
        ("noreply@proworks.jp, taro@example.com", Outcome.PAUSED),
        # The sandbox: this mail's recipient is not verified; only this mail fails.
        ("taro@example.com", Outcome.PERMANENT),
        ('"taro."@docomo.ne.jp', Outcome.PERMANENT),
        # Names another address of the From domain, or nobody we know: not this mail's fault.
        ("staff@proworks.jp", Outcome.PAUSED),
        ("", Outcome.PAUSED),
    ],
)
def test_not_verified_is_about_the_account_unless_it_names_the_recipient_alone(
    named: str, outcome: Outcome
) -> None:
    sorted_as = classify_ses_error(
        code="MessageRejected",
        http_status=400,
        message=_FAILED_THE_CHECK.format(named),
        from_address="PRO WORKS <noreply@proworks.jp>",
        to_addresses=["taro@example.com", "taro.@docomo.ne.jp"],
    )
    assert sorted_as is outcome


def _clock(offset: timedelta) -> type[datetime]:
    """``datetime`` whose ``now()`` is ``offset`` away from the machine's: a replica whose
    clock drifted (NTP broken, a VM resumed)."""

    class Shifted(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) + offset

    return Shifted


async def test_a_worker_whose_clock_is_behind_never_sends_an_expired_link(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    engine: AsyncEngine,
    ses: MotoSes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    email_id = await _accept(client, auth, kind="password-reset")
    async with engine.begin() as conn:  # by the database's clock, the link expired 5 min ago
        await conn.execute(text("UPDATE message SET expires_at = now() - interval '5 minutes'"))
    monkeypatch.setattr("app.emails.worker.datetime", _clock(-timedelta(minutes=10)))

    await drain(client)

    assert ses.sent() == []
    shown = await _status(client, auth, email_id)
    assert shown["status"] == "expired"


async def test_an_api_replica_whose_clock_is_ahead_sets_no_due_or_expiry_time(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("app.emails.service.datetime", _clock(timedelta(minutes=10)))
    await _accept(client, auth, kind="password-reset")

    async with engine.connect() as conn:
        stored = (
            await conn.execute(
                text(
                    "SELECT now() - created_at AS age, next_attempt_at - now() AS due_in, "
                    "expires_at - created_at AS lifetime FROM message"
                )
            )
        ).one()
    # By the database's clock: due now, the link good for its hour from now (not from the
    # replica's ten minutes ahead, which would let it live ten minutes too long).
    assert timedelta(0) <= stored.age < timedelta(seconds=10)
    assert stored.due_in <= timedelta(0)
    assert stored.lifetime == timedelta(hours=1)
