"""The bounce and complaint rates the console charts: per hour over the last day, per day over
the last week, counted as the reputation watch counts them (app/reputation/watch.py): hard
bounces and complaints among mail SES took in each bucket, test mail excluded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Message, MessageEvent
from app.recipients.rules import Feedback
from app.reputation.watch import Rates


@dataclass(frozen=True)
class Bucket(Rates):
    """The reputation watch's rates, over one hour or day from ``start``."""

    start: datetime


async def buckets(session: AsyncSession, *, unit: str, count: int) -> list[Bucket]:
    """``count`` buckets of one ``unit`` ("hour" or "day"), the last one the current."""
    step = timedelta(hours=1) if unit == "hour" else timedelta(days=1)
    current = func.date_trunc(unit, func.now())
    bucket = select(
        func.generate_series(current - step * (count - 1), current, step).label("start")
    ).subquery("bucket")
    sent = (
        select(Message.id, func.date_trunc(unit, Message.sent_at).label("start"))
        .where(Message.sent_at >= current - step * (count - 1), Message.test.is_(False))
        .subquery("sent")
    )

    def had(feedback: Feedback) -> Any:
        return exists().where(
            MessageEvent.message_id == sent.c.id, MessageEvent.feedback == feedback
        )

    rows = await session.execute(
        select(
            bucket.c.start,
            func.count(sent.c.id),
            func.count(sent.c.id).filter(had(Feedback.HARD_BOUNCE)),
            func.count(sent.c.id).filter(had(Feedback.COMPLAINT)),
        )
        .select_from(bucket.outerjoin(sent, sent.c.start == bucket.c.start))
        .group_by(bucket.c.start)
        .order_by(bucket.c.start)
    )
    return [
        Bucket(start=start, sends=sends, hard_bounces=bounces, complaints=complaints)
        for start, sends, bounces, complaints in rows
    ]
