"""When a mail may go: the app's `send_at`, and quiet hours for optional mail.

Pure: no I/O, no clock (``now`` is always given). Quiet hours (``TEGAMI_QUIET_HOURS``,
``22:00-08:00`` in ``TEGAMI_TIMEZONE``) hold optional mail that falls due inside the window
until it ends; each mail then goes at a point spread over the first minutes after the end (a
hash of its id), so a night's backlog does not reach SES in the opening second.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from app.emails.catalog import EmailKind

# How far ahead a send may be scheduled.
MAX_SCHEDULE_AHEAD = timedelta(days=30)
# Mail held by quiet hours goes within this long after the window ends.
QUIET_SPREAD = timedelta(minutes=15)


@dataclass(frozen=True)
class QuietHours:
    start: time
    end: time
    zone: ZoneInfo
    spread: timedelta = QUIET_SPREAD

    @classmethod
    def of(cls, window: tuple[time, time] | None, zone: str) -> QuietHours | None:
        """From the settings (``quiet_hours``, ``timezone``); None when there are none."""
        if window is None:
            return None
        return cls(start=window[0], end=window[1], zone=ZoneInfo(zone))


def window_end(when: datetime, quiet: QuietHours) -> datetime | None:
    """The end of the quiet window ``when`` falls in, or None when it falls in none. The
    window includes its start and excludes its end; it may cross midnight."""
    local = when.astimezone(quiet.zone)
    clock = local.time().replace(tzinfo=None)
    end_day: date
    if quiet.start < quiet.end:  # within one day: 01:00-06:00
        if not quiet.start <= clock < quiet.end:
            return None
        end_day = local.date()
    elif clock >= quiet.start:  # across midnight, in the evening part: ends tomorrow
        end_day = local.date() + timedelta(days=1)
    elif clock < quiet.end:  # across midnight, in the morning part: ends today
        end_day = local.date()
    else:
        return None
    return datetime.combine(end_day, quiet.end, tzinfo=quiet.zone)


def spread_offset(message_id: uuid.UUID, spread: timedelta) -> timedelta:
    """Where in the first ``spread`` after the window this mail goes: the same for the same
    id every time (a retry lands where the first try would), evenly spread over many ids."""
    seconds = int(spread.total_seconds())
    if seconds <= 0:
        return timedelta(0)
    digest = hashlib.sha256(message_id.bytes).digest()
    return timedelta(seconds=int.from_bytes(digest[:8], "big") % seconds)


def after_quiet_hours(
    when: datetime, *, message_id: uuid.UUID, quiet: QuietHours | None
) -> datetime | None:
    """When an optional mail due at ``when`` goes instead, or None when ``when`` is outside
    quiet hours (or there are none)."""
    if quiet is None:
        return None
    end = window_end(when, quiet)
    if end is None:
        return None
    return end + spread_offset(message_id, quiet.spread)


def send_at_problem(send_at: datetime, *, kind: EmailKind, now: datetime) -> str | None:
    """Why ``send_at`` cannot be honoured for this kind of mail, or None."""
    if send_at.utcoffset() is None:
        return "must carry a UTC offset (2026-12-05T08:00:00+09:00)"
    if send_at - now > MAX_SCHEDULE_AHEAD:
        return "must be at most 30 days ahead"
    if kind.lifetime is not None and send_at >= now + kind.lifetime:
        hours = kind.lifetime.total_seconds() / 3600
        return (
            f"its link expires {hours:g} hour(s) after the request, before send_at: send it "
            "when the link is made"
        )
    return None


def first_due(
    *,
    kind: EmailKind,
    send_at: datetime | None,
    now: datetime,
    message_id: uuid.UUID,
    quiet: QuietHours | None,
) -> datetime | None:
    """When the mail is first due if not at once (then it is `scheduled` until then), or None
    (it is `queued`). A `send_at` in the past is now."""
    due = send_at if send_at is not None and send_at > now else None
    if kind.category.optional:
        waited = after_quiet_hours(due or now, message_id=message_id, quiet=quiet)
        if waited is not None:
            return waited
    return due
