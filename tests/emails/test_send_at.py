"""`send_at` and quiet hours: mail that waits is `scheduled`, and goes when its time comes."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.models import SuppressionReason
from tests.conditions import eventually
from tests.conftest import AppFactory
from tests.emails.test_router import _suppress, body, drain
from tests.ses import MotoSes

KIND = "matching-notification"


async def _shown(client: httpx.AsyncClient, auth: dict[str, str], email_id: str) -> dict[str, Any]:
    shown: dict[str, Any] = (await client.get(f"/emails/{email_id}", headers=auth)).json()
    return shown


async def test_send_at_is_honoured_by_a_running_worker(
    start_app: AppFactory, auth: dict[str, str], ses: MotoSes
) -> None:
    client = await start_app(run_worker=True)
    send_at = datetime.now(UTC) + timedelta(seconds=2)

    answer = await client.post(
        f"/emails/{KIND}", json=body(kind=KIND, send_at=send_at.isoformat()), headers=auth
    )

    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "scheduled"
    email_id = answer.json()["id"]
    shown = await _shown(client, auth, email_id)
    assert shown["status"] == "scheduled"
    assert datetime.fromisoformat(shown["send_at"]) == send_at
    assert ses.sent() == []

    async def sent() -> dict[str, Any]:
        now = await _shown(client, auth, email_id)
        return now if now["status"] == "sent" else {}

    done = await eventually(sent, within=15)
    assert len(ses.sent()) == 1
    # Not before its time (by the database's clock, which stamps sent_at).
    assert datetime.fromisoformat(done["sent_at"]) >= send_at


async def test_a_suppression_added_while_a_mail_waits_stops_it(
    start_app: AppFactory, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes
) -> None:
    client = await start_app(run_worker=True)
    send_at = datetime.now(UTC) + timedelta(seconds=2)
    answer = await client.post(
        f"/emails/{KIND}", json=body(kind=KIND, send_at=send_at.isoformat()), headers=auth
    )
    email_id = answer.json()["id"]

    await _suppress(engine, "taro@example.com", SuppressionReason.HARD_BOUNCE)

    async def stopped() -> dict[str, Any]:
        now = await _shown(client, auth, email_id)
        return now if now["status"] == "failed" else {}

    done = await eventually(stopped, within=15)
    assert done["last_error"] == "suppressed: hard_bounce"
    assert ses.sent() == []


async def test_a_scheduled_mail_is_not_claimed_before_its_time(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes
) -> None:
    later = datetime.now(UTC) + timedelta(minutes=10)
    answer = await client.post(
        f"/emails/{KIND}", json=body(kind=KIND, send_at=later.isoformat()), headers=auth
    )
    assert await drain(client) == 0
    assert ses.sent() == []
    assert (await _shown(client, auth, answer.json()["id"]))["status"] == "scheduled"


@pytest.mark.parametrize(
    ("kind", "send_at", "says"),
    [
        (KIND, "2026-12-06T08:00:00", "timezone"),  # no offset
        (KIND, "days:31", "30 days"),
        ("password-reset", "minutes:61", "expires"),  # past the link's hour
        ("verify-email", "not a time", "datetime"),
    ],
)
async def test_a_send_at_that_cannot_be_honoured_is_422(
    client: httpx.AsyncClient, auth: dict[str, str], kind: str, send_at: str, says: str
) -> None:
    if ":" in send_at and send_at.split(":")[0] in ("days", "minutes"):
        unit, amount = send_at.split(":")
        send_at = (datetime.now(UTC) + timedelta(**{unit: int(amount)})).isoformat()

    answer = await client.post(
        f"/emails/{kind}", json=body(kind=kind, send_at=send_at), headers=auth
    )

    assert answer.status_code == 422, answer.text
    [detail] = answer.json()["error"]["detail"]
    assert detail["loc"] == ["body", "send_at"]
    assert says in detail["msg"]


async def test_account_mail_within_its_links_hour_may_be_scheduled(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    soon = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
    answer = await client.post(
        "/emails/password-reset", json=body(kind="password-reset", send_at=soon), headers=auth
    )
    assert answer.status_code == 202
    assert answer.json()["status"] == "scheduled"


async def test_a_retry_of_a_scheduled_send_answers_scheduled_again(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    later = (datetime.now(UTC) + timedelta(hours=3)).isoformat()
    headers = {**auth, "Idempotency-Key": "scheduled-1"}
    first = await client.post(
        f"/emails/{KIND}", json=body(kind=KIND, send_at=later), headers=headers
    )
    again = await client.post(
        f"/emails/{KIND}", json=body(kind=KIND, send_at=later), headers=headers
    )
    assert again.json() == first.json() == {"id": first.json()["id"], "status": "scheduled"}
    moved = await client.post(f"/emails/{KIND}", json=body(kind=KIND), headers=headers)
    assert moved.json()["error"]["code"] == "idempotency_key_reused"


# -- quiet hours ----------------------------------------------------------------------------


def _zone_where_it_is(hour: int) -> str:
    """A fixed-offset IANA zone in which the local time is now ``hour`` o'clock (and some
    minutes): so the app's own clock falls where a test needs it in a 22:00-08:00 window."""
    now = datetime.now(UTC)
    offset = (hour - now.hour) % 24
    if offset > 14:
        offset -= 24
    if now.minute >= 50:  # keep clear of the hour's end while the test runs
        pytest.skip("too close to the hour")
    # Etc/GMT-9 is UTC+9: POSIX signs are reversed.
    return "Etc/UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"


@pytest.mark.parametrize(
    ("hour", "ends_tomorrow"), [(23, True), (3, False)], ids=["evening", "after-midnight"]
)
async def test_optional_mail_in_quiet_hours_waits_for_their_end_spread_out(
    start_app: AppFactory, auth: dict[str, str], ses: MotoSes, hour: int, ends_tomorrow: bool
) -> None:
    zone_name = _zone_where_it_is(hour)
    zone = ZoneInfo(zone_name)
    client = await start_app(quiet_hours="22:00-08:00", timezone=zone_name)

    matching = [
        (await client.post(f"/emails/{KIND}", json=body(f"u{i}@example.com", KIND), headers=auth))
        for i in range(30)
    ]
    reset = await client.post(
        "/emails/password-reset", json=body(kind="password-reset"), headers=auth
    )

    assert reset.json()["status"] == "queued"  # account mail never waits
    assert {m.json()["status"] for m in matching} == {"scheduled"}
    today = datetime.now(zone).date()
    end_day = today + timedelta(days=1) if ends_tomorrow else today
    window_end = datetime.combine(end_day, time(8), tzinfo=zone)
    goes = [
        datetime.fromisoformat((await _shown(client, auth, m.json()["id"]))["send_at"])
        for m in matching
    ]
    assert all(window_end <= g < window_end + timedelta(minutes=15) for g in goes)
    assert len({g.minute for g in goes}) > 5  # spread, not all at the opening second

    await drain(client)
    [only] = ses.sent()
    assert only.message["To"] == "taro@example.com"


async def test_quiet_hours_leave_mail_outside_them_alone(
    start_app: AppFactory, auth: dict[str, str], ses: MotoSes
) -> None:
    zone_name = _zone_where_it_is(12)
    client = await start_app(quiet_hours="22:00-08:00", timezone=zone_name)
    answer = await client.post(f"/emails/{KIND}", json=body(kind=KIND), headers=auth)
    assert answer.json()["status"] == "queued"
    await drain(client)
    assert len(ses.sent()) == 1


async def test_a_send_at_inside_quiet_hours_waits_for_their_end(
    start_app: AppFactory, auth: dict[str, str], engine: AsyncEngine
) -> None:
    client = await start_app(quiet_hours="22:00-08:00", timezone="Asia/Tokyo")
    tokyo = ZoneInfo("Asia/Tokyo")
    tomorrow = datetime.now(tokyo).date() + timedelta(days=1)
    at_three = datetime.combine(tomorrow, time(3), tzinfo=tokyo)
    answer = await client.post(
        f"/emails/{KIND}", json=body(kind=KIND, send_at=at_three.isoformat()), headers=auth
    )
    shown = await _shown(client, auth, answer.json()["id"])
    goes = datetime.fromisoformat(shown["send_at"]).astimezone(tokyo)
    assert goes.date() == tomorrow and goes.hour == 8 and goes.minute < 15
    async with engine.connect() as conn:
        due = await conn.scalar(text("SELECT next_attempt_at FROM message"))
    assert due == goes
