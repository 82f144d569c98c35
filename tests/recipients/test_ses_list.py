"""SES's own suppression list in step with tegami's: lifting and erasing remove the address
there too, `tegami suppressions import-from-ses` brings SES's list in. Over HTTP against the
fake SES (tests/fake_ses.py; moto has no suppression list), with moto behind it for sending."""

from __future__ import annotations

import asyncio
import io
import logging
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.admin_commands import run_import_from_ses
from app.config import MailBackend, Settings
from app.models import SesListRemoval
from tests.conditions import eventually
from tests.conftest import AppFactory
from tests.fake_ses import FakeSes

ADDRESS = "taro@example.com"


async def suppressed_by_hand(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    answer = await client.put(f"/recipients/{ADDRESS}/suppression", json={}, headers=auth)
    assert answer.status_code == 200


async def test_a_lifted_suppression_leaves_ses_list_too(
    client: httpx.AsyncClient, auth: dict[str, str], ses_account: FakeSes
) -> None:
    await suppressed_by_hand(client, auth)
    ses_account.suppressed[ADDRESS] = ("BOUNCE", datetime(2024, 5, 1, 9, 30, tzinfo=UTC))

    lifted = await client.delete("/recipients/Taro@Example.com/suppression", headers=auth)

    assert lifted.status_code == 200, lifted.text
    assert lifted.json()["lifted"] is True
    assert lifted.json()["ses_suppression_list"]["outcome"] == "removed"
    assert ADDRESS not in ses_account.suppressed
    state = (await client.get(f"/recipients/{ADDRESS}", headers=auth)).json()
    assert state["suppressed"] is None


async def test_lifting_an_address_ses_does_not_hold_says_so(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    await suppressed_by_hand(client, auth)

    lifted = await client.delete(f"/recipients/{ADDRESS}/suppression", headers=auth)

    assert lifted.status_code == 200
    assert lifted.json()["ses_suppression_list"]["outcome"] == "not_listed"


async def test_ses_down_the_lift_is_refused_and_the_suppression_stays(
    client: httpx.AsyncClient, auth: dict[str, str], ses_account: FakeSes
) -> None:
    await suppressed_by_hand(client, auth)
    ses_account.stop()

    lifted = await client.delete(f"/recipients/{ADDRESS}/suppression", headers=auth)

    assert lifted.status_code == 502
    assert lifted.json()["error"]["code"] == "ses_unavailable"
    state = (await client.get(f"/recipients/{ADDRESS}", headers=auth)).json()
    assert state["suppressed"]["reason"] == "manual"
    assert [e["action"] for e in state["history"]] == ["suppressed"]


async def test_an_erasure_takes_the_address_off_ses_list(
    client: httpx.AsyncClient, auth: dict[str, str], ses_account: FakeSes
) -> None:
    await suppressed_by_hand(client, auth)
    ses_account.suppressed[ADDRESS] = ("COMPLAINT", datetime(2024, 5, 1, 9, 30, tzinfo=UTC))

    erased = await client.delete(f"/recipients/{ADDRESS}", headers=auth)

    assert erased.status_code == 200
    assert erased.json()["ses_suppression_list"]["outcome"] == "removed"
    assert ADDRESS not in ses_account.suppressed


async def test_ses_down_an_erasure_happens_and_the_removal_waits_until_ses_is_back(
    start_app: AppFactory,
    auth: dict[str, str],
    ses_account: FakeSes,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await start_app(run_worker=True, ses_list_retry_seconds=0.2)
    await client.post(
        "/emails/verify-email",
        json={"to": ADDRESS, "params": {"verification_url": "https://proworks.jp/v?t=1"}},
        headers=auth,
    )
    ses_account.suppressed[ADDRESS] = ("COMPLAINT", datetime(2024, 5, 1, 9, 30, tzinfo=UTC))
    ses_account.down = True

    with caplog.at_level(logging.WARNING):
        erased = await client.delete(f"/recipients/{ADDRESS}", headers=auth)

    assert erased.status_code == 200
    body = erased.json()
    assert body["erased"] is True
    assert body["ses_suppression_list"]["outcome"] == "pending"
    assert "could not be updated" in body["ses_suppression_list"]["message"]
    state = (await client.get(f"/recipients/{ADDRESS}", headers=auth)).json()
    assert state["address"] is None
    # The person stays protected meanwhile and after: tegami's own suppression, by hash.
    assert state["suppressed"]["reason"] == "erased"
    warning = next(
        r for r in caplog.records if getattr(r, "event", "") == "ses_suppression_list_not_updated"
    )
    assert warning.address == "t***@example.com"  # type: ignore[attr-defined]
    # The removal waits in the database, not in the caller's memory of this answer; the loop
    # keeps failing while SES is away.
    assert await waiting_removals(engine) == [ADDRESS]

    async def tried_again() -> bool:
        return await removal_attempts(engine) >= 2

    await eventually(tried_again)
    assert ADDRESS in ses_account.suppressed

    ses_account.down = False

    async def removed() -> bool:
        return ADDRESS not in ses_account.suppressed and await waiting_removals(engine) == []

    await eventually(removed)
    refused = await client.post(
        "/emails/verify-email",
        json={"to": ADDRESS, "params": {"verification_url": "https://proworks.jp/v?t=2"}},
        headers=auth,
    )
    assert refused.status_code == 409


async def waiting_removals(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(SesListRemoval.address))).scalars())


async def removal_attempts(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        attempts = (await conn.execute(select(func.max(SesListRemoval.attempts)))).scalar()
    return attempts or 0


async def test_an_erasure_with_ses_up_leaves_nothing_waiting(
    client: httpx.AsyncClient, auth: dict[str, str], ses_account: FakeSes, engine: AsyncEngine
) -> None:
    ses_account.suppressed[ADDRESS] = ("BOUNCE", datetime(2024, 5, 1, 9, 30, tzinfo=UTC))

    erased = await client.delete(f"/recipients/{ADDRESS}", headers=auth)

    assert erased.json()["ses_suppression_list"]["outcome"] == "removed"
    assert await waiting_removals(engine) == []


DOCOMO = "taro.@docomo.ne.jp"
DOCOMO_WIRE = '"taro."@docomo.ne.jp'


@pytest.mark.parametrize("given", [DOCOMO, DOCOMO_WIRE])
async def test_a_lift_takes_both_spellings_of_a_carrier_address_off_ses_list(
    client: httpx.AsyncClient, auth: dict[str, str], ses_account: FakeSes, given: str
) -> None:
    assert (
        await client.put(f"/recipients/{given}/suppression", json={}, headers=auth)
    ).status_code == 200
    listed = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
    ses_account.suppressed = {DOCOMO: ("BOUNCE", listed), DOCOMO_WIRE: ("BOUNCE", listed)}

    lifted = await client.delete(f"/recipients/{given}/suppression", headers=auth)

    assert lifted.status_code == 200, lifted.text
    assert lifted.json()["ses_suppression_list"]["outcome"] == "removed"
    assert ses_account.suppressed == {}


@pytest.mark.parametrize("given", [DOCOMO, DOCOMO_WIRE])
async def test_an_erasure_takes_both_spellings_of_a_carrier_address_off_ses_list(
    client: httpx.AsyncClient, auth: dict[str, str], ses_account: FakeSes, given: str
) -> None:
    listed = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
    # SES lists the spelling mail went to (a bounce), and maybe the other (an import, a hand).
    ses_account.suppressed = {DOCOMO_WIRE: ("BOUNCE", listed), DOCOMO: ("COMPLAINT", listed)}

    erased = await client.delete(f"/recipients/{given}", headers=auth)

    assert erased.json()["ses_suppression_list"]["outcome"] == "removed"
    assert ses_account.suppressed == {}


async def test_with_the_mailbox_backend_there_is_no_ses_to_update(
    start_app: AppFactory, auth: dict[str, str], tmp_path: object
) -> None:
    client = await start_app(mail_backend=MailBackend.MAILBOX, mailbox_dir=tmp_path)
    await suppressed_by_hand(client, auth)

    lifted = await client.delete(f"/recipients/{ADDRESS}/suppression", headers=auth)
    erased = await client.delete(f"/recipients/{ADDRESS}", headers=auth)

    assert lifted.json()["ses_suppression_list"]["outcome"] == "no_ses"
    assert erased.json()["ses_suppression_list"]["outcome"] == "no_ses"


async def test_import_brings_ses_list_in_once(
    client: httpx.AsyncClient, auth: dict[str, str], ses_account: FakeSes, settings: Settings
) -> None:
    ses_account.suppressed = {
        "hanako@example.com": ("BOUNCE", datetime(2023, 4, 1, 12, 0, tzinfo=UTC)),
        "jiro@example.com": ("COMPLAINT", datetime(2023, 6, 2, 8, 15, tzinfo=UTC)),
    }

    out = io.StringIO()
    assert await asyncio.to_thread(run_import_from_ses, settings, out=out) == 0
    again = io.StringIO()
    assert await asyncio.to_thread(run_import_from_ses, settings, out=again) == 0

    assert out.getvalue() == "imported 2 suppression(s) from SES's list; 0 already known\n"
    assert again.getvalue() == "imported 0 suppression(s) from SES's list; 2 already known\n"
    hanako = (await client.get("/recipients/hanako@example.com", headers=auth)).json()
    jiro = (await client.get("/recipients/jiro@example.com", headers=auth)).json()
    assert hanako["suppressed"]["reason"] == "hard_bounce"
    assert jiro["suppressed"]["reason"] == "complaint"
    assert jiro["suppressed"]["cause"] == "ses-suppression-list"
    [event] = hanako["history"]
    assert event["cause"] == "ses-suppression-list"
    assert "reason BOUNCE" in event["detail"] and "2023-04-01T12:00:00+00:00" in event["detail"]
    refused = await client.post(
        "/emails/verify-email",
        json={"to": "jiro@example.com", "params": {"verification_url": "https://proworks.jp/v"}},
        headers=auth,
    )
    assert refused.status_code == 409


async def test_import_with_ses_down_imports_nothing_and_says_so(
    ses_account: FakeSes, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    ses_account.stop()

    code = await asyncio.to_thread(run_import_from_ses, settings)

    assert code == 1
    assert "SES's suppression list could not be read" in capsys.readouterr().err
