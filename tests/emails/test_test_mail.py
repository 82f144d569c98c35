"""A `test` key's mail is a sandbox for the send path too: it books no send slot, so real mail
never waits behind it, and it is never the probe of a paused account.

SES here is :class:`tests.fake_ses.FakeSes` over real HTTP: what it received, and when by its
own clock, is what real mail's pace is judged by.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api_keys import create_key
from app.db import create_sessionmaker
from app.models import ApiKeyScope
from tests.conditions import eventually
from tests.conftest import AppFactory
from tests.emails.test_router import body
from tests.fake_ses import Answer, FakeSes

RATE = 10.0


@pytest.fixture
def ses(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSes]:
    fake = FakeSes().start()
    for name, value in fake.environment().items():
        monkeypatch.setenv(name, value)
    yield fake
    fake.stop()


async def _key(engine: AsyncEngine, scope: ApiKeyScope) -> dict[str, str]:
    async with create_sessionmaker(engine)() as session:
        key = await create_key(session, name=f"{scope}-{uuid.uuid4().hex[:6]}", scope=scope)
        await session.commit()
    return {"Authorization": f"Bearer {key}"}


async def _send(
    client: httpx.AsyncClient, headers: dict[str, str], to: str, kind: str = "password-reset"
) -> str:
    answer = await client.post(f"/emails/{kind}", json=body(to, kind), headers=headers)
    assert answer.status_code == 202, answer.text
    email_id: str = answer.json()["id"]
    return email_id


async def _statuses(engine: AsyncEngine) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT id::text, status FROM message"))
        return {row.id: row.status for row in rows}


async def _pause_reason(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        reason: str | None = (
            await conn.execute(text("SELECT pause_reason FROM send_pacer"))
        ).scalar_one_or_none()
        return reason


async def test_test_mail_queued_ahead_never_delays_a_real_password_reset(
    start_app: AppFactory, engine: AsyncEngine, ses: FakeSes
) -> None:
    client = await start_app(max_send_rate=RATE)
    app, ci = await _key(engine, ApiKeyScope.APP), await _key(engine, ApiKeyScope.TEST)
    first = await _send(client, app, "first@example.com")
    # A CI run's 50 test mails, queued between two real password resets.
    batch = await client.post(
        "/emails/password-reset/batch",
        json={"emails": [body(f"ci{i}@example.com", "password-reset") for i in range(50)]},
        headers=ci,
    )
    assert batch.status_code == 200, batch.text
    tests = [result["id"] for result in batch.json()["results"]]
    reset = await _send(client, app, "taro@example.com")

    await client.app.state.worker.drain()  # type: ignore[attr-defined]

    statuses = await _statuses(engine)
    assert {statuses[t] for t in tests} == {"sent"}  # the CI run got its mails
    assert [r.tegami_id for r in ses.sent()] == [first, reset]  # SES saw only the real ones
    # On SES's clock the reset came in the slot after the first: the 50 test mails took none
    # (when they did, it came 50 slots, 5 seconds, later).
    gap = ses.sent()[1].received_at - ses.sent()[0].received_at
    assert gap * RATE < 3, f"the reset waited {gap:.2f}s, {gap * RATE:.0f} slots"


async def test_test_mail_is_never_the_probe_of_a_paused_account(
    start_app: AppFactory, engine: AsyncEngine, ses: FakeSes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client = await start_app(max_send_rate=RATE)
    worker = client.app.state.worker  # type: ignore[attr-defined]
    worker.probe_seconds = 0.2
    app, ci = await _key(engine, ApiKeyScope.APP), await _key(engine, ApiKeyScope.TEST)

    # SES pauses the account: the first real mail finds out, and sending pauses.
    ses.default = Answer.PAUSED
    stuck = await _send(client, app, "first@example.com")
    await worker.drain()
    assert "SendingPausedException" in str(await _pause_reason(engine))
    # The app gives up on that mail; a CI run's mail is all that is queued.
    assert (await client.delete(f"/emails/{stuck}", headers=app)).status_code == 200
    test_mail = await _send(client, ci, "ci@example.com")

    async def probe_due() -> bool:
        async with engine.connect() as conn:
            return bool(
                (await conn.execute(text("SELECT paused_until <= now() FROM send_pacer"))).scalar()
            )

    await eventually(probe_due)
    await worker.drain()

    # The CI run got its mail (it never needed SES), and sending stays paused: SES was not
    # asked, so nothing says it takes mail again.
    assert (await _statuses(engine))[test_mail] == "sent"
    assert "SendingPausedException" in str(await _pause_reason(engine))
    events = [r.__dict__.get("event") for r in caplog.records]
    assert "ses_sending_resumed" not in events
    assert len(ses.requests) == 1

    # A real mail is the probe: SES takes it, and only then does sending resume.
    ses.default = Answer.OK
    real = await _send(client, app, "taro@example.com")
    await eventually(probe_due)
    await worker.drain()
    assert [r.tegami_id for r in ses.sent()] == [real]
    assert await _pause_reason(engine) is None
    events = [r.__dict__.get("event") for r in caplog.records]
    assert events.count("ses_sending_paused") == 1
    assert events.count("ses_sending_resumed") == 1
