"""asyncpg's own connection, lent from the engine's pool for the hot paths."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, select

from app.config import Settings
from app.db import create_engine, driver_connection
from app.models import SnsMessage


async def test_a_transaction_left_open_never_reaches_the_next_user(database_url: str) -> None:
    # One connection in the pool: the second checkout would get the first one back.
    url = Settings.model_construct(database_url=database_url).sqlalchemy_url
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        async with driver_connection(engine) as connection:
            await connection.execute("BEGIN")
            await connection.execute(
                "INSERT INTO sns_message (message_id, type, topic_arn, outcome) "
                "VALUES ('left-open', 'Notification', 'arn', 'applied')"
            )
        async with driver_connection(engine) as connection:
            assert not connection.is_in_transaction()
            await connection.execute(
                "INSERT INTO sns_message (message_id, type, topic_arn, outcome) "
                "VALUES ('committed', 'Notification', 'arn', 'applied')"
            )
        async with engine.connect() as conn:
            kept = (await conn.execute(select(SnsMessage.message_id))).scalars().all()
        # The autocommitted insert is kept; the one of the unfinished transaction is not.
        assert kept == ["committed"]
    finally:
        async with engine.begin() as conn:
            await conn.execute(delete(SnsMessage))
        await engine.dispose()


@pytest.mark.parametrize("statements", [1, 3])
async def test_the_connection_is_reused_when_nothing_was_left_open(
    database_url: str, statements: int
) -> None:
    url = Settings.model_construct(database_url=database_url).sqlalchemy_url
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        async with driver_connection(engine) as connection:
            first = connection
            for _ in range(statements):
                await connection.execute("SELECT 1")
        async with driver_connection(engine) as connection:
            assert connection is first
    finally:
        await engine.dispose()
