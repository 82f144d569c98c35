"""PostgreSQL stopped and started again under load, with the app (API and worker) running.

The test starts an embedded PostgreSQL of its own (``pgserver``, its own data directory) and
stops and starts it with ``pg_ctl``. While it is down, whatever needs the database answers
503 ``unavailable`` (never a 500), ``/readyz`` says 503 and SNS gets a 5xx, so it retries.
When it is back, the app recovers by itself; clients retry their 503s with the same
Idempotency-Key; every mail that was accepted is sent, once.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pgserver
import pytest
from pgserver._commands import pg_ctl  # type: ignore[attr-defined]
from sqlalchemy import text

from app.api_keys import create_key
from app.config import to_asyncpg_url
from app.db import create_engine, create_sessionmaker, migrate
from tests.conditions import eventually
from tests.conftest import AppFactory
from tests.emails.test_router import body
from tests.fake_ses import FakeSes
from tests.sns_messages import TOPIC, Sns, ses_event


@dataclass
class OwnPostgres:
    server: Any
    url: str

    def stop(self) -> None:
        # "fast": sessions are ended at once and open transactions rolled back, as in a
        # restart or failover; the server socket goes away until start().
        pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user
        )

    def start(self) -> None:
        self.server.ensure_postgres_running()  # same data directory, same socket: same URL


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    # Short path: PostgreSQL's socket path must stay under ~100 characters.
    pgdata = Path(tempfile.mkdtemp(prefix="tgm-pgr-"))
    server = pgserver.get_server(pgdata, cleanup_mode="delete")  # type: ignore[attr-defined]
    url = server.get_uri()
    migrate(url)
    yield OwnPostgres(server, url)
    server.ensure_postgres_running()  # so that cleanup finds it, stops it and deletes it
    server.cleanup()


@dataclass
class Load:
    """The app's traffic: one mail after another, each with its own Idempotency-Key."""

    client: httpx.AsyncClient
    auth: dict[str, str]
    answers: list[tuple[str, int, str | None]] = field(default_factory=list)
    accepted: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> mail id
    refused: list[str] = field(default_factory=list)  # keys answered 503: to retry
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def post(self, key: str) -> httpx.Response:
        return await self.client.post(
            "/emails/verify-email",
            json=body(f"{key}@example.com"),
            headers={**self.auth, "Idempotency-Key": key},
        )

    def answered(
        self, wanted: Callable[[int], bool], *, count: int = 1
    ) -> Callable[[], Awaitable[bool]]:
        """A probe: ``count`` answers from now on have a status that is ``wanted``."""
        start = len(self.answers)

        async def probe() -> bool:
            return sum(1 for _, status, _ in self.answers[start:] if wanted(status)) >= count

        return probe

    async def run(self) -> None:
        number = 0
        while not self.stopping.is_set():
            key = f"load{number}"
            number += 1
            answer = await self.post(key)
            code = answer.json().get("error", {}).get("code")
            self.answers.append((key, answer.status_code, code))
            if answer.status_code == 202:
                self.accepted[key] = answer.json()["id"]
            else:
                self.refused.append(key)
            await asyncio.sleep(0.005)


async def test_postgres_restart_under_load_answers_503_recovers_and_loses_no_mail(
    own_postgres: OwnPostgres,
    start_app: AppFactory,
    ses: FakeSes,
    sns_identity: tuple[bytes, bytes],
    sns_cert_dir: Path,
) -> None:
    own = create_engine(to_asyncpg_url(own_postgres.url))
    async with create_sessionmaker(own)() as session:
        auth = {"Authorization": f"Bearer {await create_key(session, name='load')}"}
        await session.commit()
    client = await start_app(
        database_url=own_postgres.url,
        run_worker=True,
        sns_cert_dir=sns_cert_dir,
        sns_topic_arns=[TOPIC],
    )
    sns = Sns(client, sns_identity[0])
    feedback = sns.notification(
        ses_event("eventpub-bounce-permanent-general.json", to="bounced@example.com")
    )
    load = Load(client, auth)
    traffic = asyncio.create_task(load.run())
    try:
        await eventually(load.answered(lambda status: status == 202, count=10))
        first_id = next(iter(load.accepted.values()))

        await asyncio.to_thread(own_postgres.stop)
        down: dict[str, httpx.Response] = {
            "send": await load.post(f"down-{secrets.token_hex(2)}"),
            "read mail": await client.get(f"/emails/{first_id}", headers=auth),
            "read recipient": await client.get("/recipients/x@example.com", headers=auth),
            "sns": await sns.post(feedback),
        }
        for what, answer in down.items():
            assert answer.status_code == 503, (what, answer.status_code, answer.text)
            assert answer.json()["error"]["code"] == "unavailable", what
            assert answer.headers["Retry-After"] == "5", what
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        await eventually(load.answered(lambda status: status == 503))

        await asyncio.to_thread(own_postgres.start)
        # Back by itself: no restart of the app, the pool reconnects.
        await eventually(load.answered(lambda status: status == 202))
        assert (await client.get("/readyz")).status_code == 200
    finally:
        load.stopping.set()
        await traffic

    # Never a 500: every answer was 202, or 503 `unavailable` while the database was away.
    assert {(status, code) for _, status, code in load.answers} <= {
        (202, None),
        (503, "unavailable"),
    }
    assert load.refused, "the load should have met the outage"

    # SNS retries its message: applied now.
    again = await sns.post(feedback)
    assert again.status_code == 200, again.text
    assert again.json()["outcome"] == "applied"

    # The app retries its 503s with the same key: accepted now (or found accepted already,
    # when the commit made it but the answer did not).
    for key in load.refused:
        answer = await load.post(key)
        assert answer.status_code == 202, answer.text
        load.accepted[key] = answer.json()["id"]

    async def all_sent() -> bool:
        async with own.connect() as conn:
            statuses = (await conn.execute(text("SELECT DISTINCT status FROM message"))).all()
        return {row.status for row in statuses} == {"sent"}

    try:
        await eventually(all_sent, within=30)
        async with own.connect() as conn:
            stored = (await conn.execute(text("SELECT count(*) FROM message"))).scalar_one()
    finally:
        await own.dispose()
    assert stored == len(set(load.accepted.values()))
    assert ses.sent_ids() == {email_id: 1 for email_id in load.accepted.values()}
    print(
        f"\nPostgreSQL restart: {len(load.answers)} requests under load, "
        f"{len(load.refused)} answered 503 and retried, {stored} mails sent once each"
    )
