"""One send rate for every worker together, kept in a single Postgres row.

Each worker reserves the next ``n`` send slots with one UPDATE: the row holds the time of the
next free slot, so replicas never overlap and the sum never exceeds the rate. Slots left unused
(a crash, an expired mail) are simply lost: the rate can only come out lower, never higher.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import NamedStatement, driver_connection

_RESERVE = NamedStatement.of(
    """
    INSERT INTO send_pacer (id, next_slot_at)
    VALUES (1, now() + make_interval(secs => CAST(:span AS float8)))
    ON CONFLICT (id) DO UPDATE
        SET next_slot_at = GREATEST(send_pacer.next_slot_at, now())
            + make_interval(secs => CAST(:span AS float8))
    RETURNING EXTRACT(EPOCH FROM (next_slot_at - now()))::float8 - CAST(:span AS float8)
    """
)


async def reserve_slots(engine: AsyncEngine, *, count: int, rate: float) -> float:
    """Reserve ``count`` slots at ``rate`` per second; seconds from now until the first one.

    Slot ``i`` (from 0) starts ``first + i / rate`` seconds from now.
    """
    span = count / rate
    # One statement in autocommit on asyncpg's connection: it is on the way to SES.
    async with driver_connection(engine) as conn:
        first = await conn.fetchval(_RESERVE.sql, *_RESERVE.args({"span": span}))
    return max(0.0, float(first))
