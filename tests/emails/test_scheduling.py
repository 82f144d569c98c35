"""Quiet hours and send_at rules, as pure functions (Asia/Tokyo has no DST)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.config import SettingsError, load_settings, parse_window
from app.emails.catalog import EMAIL_KINDS
from app.emails.scheduling import (
    QUIET_SPREAD,
    QuietHours,
    after_quiet_hours,
    first_due,
    send_at_problem,
    spread_offset,
    window_end,
)
from tests.test_config import REQUIRED

TOKYO = ZoneInfo("Asia/Tokyo")
NIGHT = QuietHours(start=time(22), end=time(8), zone=TOKYO)
EARLY = QuietHours(start=time(1), end=time(6), zone=TOKYO)


def tokyo(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 12, day, hour, minute, second, tzinfo=TOKYO)


@pytest.mark.parametrize(
    ("when", "end"),
    [
        (tokyo(5, 21, 59, 59), None),  # just before
        (tokyo(5, 22), tokyo(6, 8)),  # the start is inside
        (tokyo(5, 23, 30), tokyo(6, 8)),  # evening part: ends tomorrow
        (tokyo(6, 0), tokyo(6, 8)),  # midnight
        (tokyo(6, 3), tokyo(6, 8)),  # morning part: ends today
        (tokyo(6, 7, 59, 59), tokyo(6, 8)),
        (tokyo(6, 8), None),  # the end is outside
        (tokyo(6, 12), None),
    ],
)
def test_window_across_midnight(when: datetime, end: datetime | None) -> None:
    assert window_end(when, NIGHT) == end


def test_window_across_midnight_given_in_utc() -> None:
    # 14:30 UTC is 23:30 in Tokyo: inside, ending at 08:00 Tokyo the next day (23:00 UTC).
    assert window_end(datetime(2026, 12, 5, 14, 30, tzinfo=UTC), NIGHT) == datetime(
        2026, 12, 5, 23, 0, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("when", "end"),
    [(tokyo(5, 0, 59), None), (tokyo(5, 1), tokyo(5, 6)), (tokyo(5, 5, 59), tokyo(5, 6))],
)
def test_window_within_one_day(when: datetime, end: datetime | None) -> None:
    assert window_end(when, EARLY) == end


def test_mail_waits_until_a_spread_point_after_the_window() -> None:
    ids = [uuid.uuid4() for _ in range(400)]
    goes = [after_quiet_hours(tokyo(5, 23), message_id=i, quiet=NIGHT) for i in ids]
    assert all(g is not None and tokyo(6, 8) <= g < tokyo(6, 8) + QUIET_SPREAD for g in goes)
    # Spread, not all in the opening second: every minute of the 15 gets some.
    minutes = {g.astimezone(TOKYO).minute for g in goes if g is not None}
    assert minutes == set(range(15))
    # The same mail lands on the same point every time (a retry too).
    assert spread_offset(ids[0], QUIET_SPREAD) == spread_offset(ids[0], QUIET_SPREAD)


def test_no_quiet_hours_or_outside_them_means_no_wait() -> None:
    assert after_quiet_hours(tokyo(5, 23), message_id=uuid.uuid4(), quiet=None) is None
    assert after_quiet_hours(tokyo(5, 12), message_id=uuid.uuid4(), quiet=NIGHT) is None


def test_account_mail_never_waits_for_quiet_hours() -> None:
    now = tokyo(5, 23)
    due = first_due(
        kind=EMAIL_KINDS["password-reset"], send_at=None, now=now, message_id=uuid.uuid4(),
        quiet=NIGHT,
    )  # fmt: skip
    assert due is None
    matching = first_due(
        kind=EMAIL_KINDS["matching-notification"], send_at=None, now=now,
        message_id=uuid.uuid4(), quiet=NIGHT,
    )  # fmt: skip
    assert matching is not None and matching >= tokyo(6, 8)


def test_a_send_at_inside_quiet_hours_waits_for_their_end() -> None:
    due = first_due(
        kind=EMAIL_KINDS["matching-notification"], send_at=tokyo(6, 3), now=tokyo(5, 12),
        message_id=uuid.uuid4(), quiet=NIGHT,
    )  # fmt: skip
    assert due is not None and tokyo(6, 8) <= due < tokyo(6, 8, 15)
    kept = first_due(
        kind=EMAIL_KINDS["matching-notification"], send_at=tokyo(6, 9), now=tokyo(5, 12),
        message_id=uuid.uuid4(), quiet=NIGHT,
    )  # fmt: skip
    assert kept == tokyo(6, 9)
    past = first_due(
        kind=EMAIL_KINDS["verify-email"], send_at=tokyo(5, 11), now=tokyo(5, 12),
        message_id=uuid.uuid4(), quiet=NIGHT,
    )  # fmt: skip
    assert past is None  # a send_at already past: at once


def test_send_at_rules() -> None:
    now = tokyo(5, 12)
    matching, reset = EMAIL_KINDS["matching-notification"], EMAIL_KINDS["password-reset"]
    assert send_at_problem(now + timedelta(days=30), kind=matching, now=now) is None
    assert "30 days" in str(
        send_at_problem(now + timedelta(days=30, seconds=1), kind=matching, now=now)
    )
    assert send_at_problem(now + timedelta(minutes=59), kind=reset, now=now) is None
    assert "expires" in str(send_at_problem(now + timedelta(hours=1), kind=reset, now=now))
    assert "offset" in str(send_at_problem(datetime(2026, 12, 6, 8), kind=matching, now=now))


@pytest.mark.parametrize(
    ("text", "window"),
    [("22:00-08:00", (time(22), time(8))), (" 01:30-06:45 ", (time(1, 30), time(6, 45)))],
)
def test_parse_window(text: str, window: tuple[time, time]) -> None:
    assert parse_window(text) == window


@pytest.mark.parametrize("text", ["22-08", "24:00-08:00", "22:00-22:00", "22:00–08:00", ""])
def test_parse_window_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_window(text)


@pytest.mark.parametrize(
    ("name", "value"), [("TEGAMI_QUIET_HOURS", "22時-8時"), ("TEGAMI_TIMEZONE", "Tokyo")]
)
def test_a_bad_quiet_hours_setting_stops_start_up_in_one_line(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    for key, setting in REQUIRED.items():
        monkeypatch.setenv(key, setting)
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert "\n" not in str(refused.value)
    assert name in str(refused.value)


def test_quiet_hours_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, setting in REQUIRED.items():
        monkeypatch.setenv(key, setting)
    assert load_settings().quiet_hours is None
    monkeypatch.setenv("TEGAMI_QUIET_HOURS", "22:00-08:00")
    settings = load_settings()
    assert QuietHours.of(settings.quiet_hours, settings.timezone) == NIGHT
