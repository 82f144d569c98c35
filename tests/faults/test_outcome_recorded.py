"""PostgreSQL goes away while SES is answering: the worker records what SES said once the
database is back, by itself, and no mail is sent twice.

A Multi-AZ failover takes 60-120 s, 1-2 leases of the default 60 s and 3-12 of a 10 s one. What
the scenario turns on is that ratio, not the seconds: here the lease is 4 s and the outage 3 and
12 leases long (12 s and 48 s instead of 30 s and 120 s at a 10 s lease, the same story in a
third of the suite's time). SES answers while the database is down, so the outcome of each send
waits in the worker; the lease runs out long before the database returns. Nothing else may
claim those mails meanwhile, and when the database is back the outcomes are written within
seconds, without a new mail waking anyone.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from app.api_keys import create_key
from app.config import to_asyncpg_url
from app.db import create_engine, create_sessionmaker
from tests.conditions import eventually
from tests.conftest import AppFactory
from tests.emails.test_router import body
from tests.fake_ses import FakeSes
from tests.faults.test_postgres_restart import OwnPostgres, own_postgres  # noqa: F401 (fixture)

MAILS = 5
LEASE_SECONDS = 4


@pytest.mark.parametrize("outage_leases", [3, 12])
async def test_sends_answered_while_postgresql_is_down_are_recorded_once_it_is_back(
    own_postgres: OwnPostgres,  # noqa: F811 (the fixture)
    start_app: AppFactory,
    ses: FakeSes,
    outage_leases: int,
) -> None:
    own = create_engine(to_asyncpg_url(own_postgres.url))
    try:
        async with create_sessionmaker(own)() as session:
            auth = {"Authorization": f"Bearer {await create_key(session, name='outage')}"}
            await session.commit()
        # A slow SES: its answers come back after the database has gone.
        ses.delay = 3.0
        client = await start_app(
            database_url=own_postgres.url,
            run_worker=True,
            send_lease_seconds=LEASE_SECONDS,
            max_send_rate=10,
        )
        answers = await asyncio.gather(
            *(
                client.post("/emails/verify-email", json=body(f"u{i}@example.com"), headers=auth)
                for i in range(MAILS)
            )
        )
        assert all(a.status_code == 202 for a in answers), [a.text for a in answers]
        ids = [a.json()["id"] for a in answers]

        async def all_at_ses() -> bool:
            return ses.in_flight == MAILS

        await eventually(all_at_ses)
        await asyncio.to_thread(own_postgres.stop)

        async def ses_answered() -> bool:
            return ses.in_flight == 0

        await eventually(ses_answered)
        # The outage itself (its length is the scenario, not a guess at a timing).
        await asyncio.sleep(outage_leases * LEASE_SECONDS)
        await asyncio.to_thread(own_postgres.start)

        async def recorded() -> dict[str, str] | None:
            try:
                async with own.connect() as conn:
                    rows = (await conn.execute(text("SELECT id::text, status FROM message"))).all()
            except Exception:  # the pool's connections from before the restart
                return None
            statuses = {row.id: row.status for row in rows}
            return statuses if set(statuses.values()) == {"sent"} else None

        # Within seconds, by itself: no new mail arrives to wake a worker.
        statuses = await eventually(recorded, within=15)
        assert statuses is not None
        assert set(statuses) == set(ids)
        assert ses.sent_ids() == {email_id: 1 for email_id in ids}, "each mail sent once"
        shown = (await client.get(f"/emails/{ids[0]}", headers=auth)).json()
        assert shown["status"] == "sent"
        assert [e["kind"] for e in shown["events"]] == ["accepted", "sent"]
    finally:
        await own.dispose()
