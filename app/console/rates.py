"""The bounce and complaint rates the console charts: per hour over the last day, per day over
the last week, counted as the reputation watch counts them (app/ops/reputation.py): hard
bounces and complaints among mail SES took in each bucket, test mail excluded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True)
class Bucket:
    start: datetime
    sends: int
    hard_bounces: int
    complaints: int

    @property
    def bounce_rate(self) -> float:
        return self.hard_bounces / self.sends if self.sends else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.complaints / self.sends if self.sends else 0.0


_BUCKETS = text(
    """
    WITH bucket AS (
        SELECT generate_series(
            date_trunc(:unit, now()) - make_interval(secs => :step * (:count - 1)),
            date_trunc(:unit, now()),
            make_interval(secs => :step)) AS start
    ),
    sent AS (
        SELECT m.id, date_trunc(:unit, m.sent_at) AS start
        FROM message AS m
        WHERE m.sent_at >= (SELECT min(start) FROM bucket) AND NOT m.test
    )
    SELECT b.start, count(s.id) AS sends,
        count(s.id) FILTER (WHERE EXISTS (SELECT 1 FROM message_event AS e
            WHERE e.message_id = s.id AND e.feedback = 'hard_bounce')) AS hard_bounces,
        count(s.id) FILTER (WHERE EXISTS (SELECT 1 FROM message_event AS e
            WHERE e.message_id = s.id AND e.feedback = 'complaint')) AS complaints
    FROM bucket AS b LEFT JOIN sent AS s ON s.start = b.start
    GROUP BY b.start ORDER BY b.start
    """
)


async def buckets(session: AsyncSession, *, unit: str, count: int) -> list[Bucket]:
    """``count`` buckets of one ``unit`` ("hour" or "day"), the last one the current."""
    step = {"hour": 3600, "day": 86400}[unit]
    rows = await session.execute(_BUCKETS, {"unit": unit, "step": step, "count": count})
    return [Bucket(r.start, r.sends, r.hard_bounces, r.complaints) for r in rows]
