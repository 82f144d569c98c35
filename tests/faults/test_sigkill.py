"""`tegami worker` killed with SIGKILL mid-drain, then started again: every accepted mail is
sent, and only the sends in flight at the kill can go out twice.

The worker runs as a real process (``python -m app.cli worker``) against the test database and
a slow fake SES over HTTP, so the kill lands while SES calls are open. A mail counts as sent
once SES has its request, as with real SES: the worker cannot take back a call it made.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conditions import eventually
from tests.conftest import make_settings
from tests.emails.test_router import body
from tests.fake_ses import FakeSes

PROJECT = Path(__file__).resolve().parents[2]
MAILS = 40
CONCURRENCY = 8


class WorkerProcess:
    """`tegami worker` in a process of its own, its JSON log kept in a file."""

    def __init__(self, database_url: str, ses: FakeSes, log: Path) -> None:
        settings = make_settings(database_url)
        self.env = {
            **os.environ,
            **ses.environment(),
            "TEGAMI_DATABASE_URL": database_url,
            "TEGAMI_PUBLIC_BASE_URL": settings.public_base_url,
            "TEGAMI_UNSUBSCRIBE_SECRET": settings.unsubscribe_secret[0].get_secret_value(),
            "TEGAMI_ADDRESS_HASH_SECRET": settings.address_hash_secret.get_secret_value(),
            "TEGAMI_LINK_HOSTS": ",".join(settings.link_hosts),
            "TEGAMI_SENDER_POSTAL_ADDRESS": settings.sender_postal_address,
            "TEGAMI_SENDER_CONTACT": settings.sender_contact,
            "TEGAMI_MAX_SEND_RATE": "25",
            "TEGAMI_SEND_CONCURRENCY": str(CONCURRENCY),
        }
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"],
                cwd=PROJECT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def signal(self, number: signal.Signals) -> int:
        assert self.process is not None
        self.process.send_signal(number)
        return self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def worker_process(database_url: str, ses: FakeSes, tmp_path: Path) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(database_url, ses, tmp_path / "worker.log")
    yield worker
    worker.stop()


async def _statuses(engine: AsyncEngine) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT id::text, status FROM message"))
        return {row.id: row.status for row in rows}


async def test_sigkill_mid_drain_loses_nothing_and_duplicates_only_sends_in_flight(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    engine: AsyncEngine,
    ses: FakeSes,
    worker_process: WorkerProcess,
) -> None:
    accepted = []
    for start in range(0, MAILS, 20):
        answers = await asyncio.gather(
            *(
                client.post("/emails/verify-email", json=body(f"u{i}@example.com"), headers=auth)
                for i in range(start, start + 20)
            )
        )
        assert all(a.status_code == 202 for a in answers)
        accepted += [a.json()["id"] for a in answers]

    # A slow SES: each call stays open long enough for the kill to find some in flight.
    ses.delay = 0.4
    worker_process.start()

    async def mid_drain() -> bool:
        # The second batch half handed to SES: claimed mails both at SES and not yet.
        return len(ses.requests) >= CONCURRENCY + CONCURRENCY // 2 and ses.in_flight > 0

    await eventually(mid_drain, within=30)
    assert worker_process.signal(signal.SIGKILL) == -signal.SIGKILL

    # SES finishes the calls it had (it sent those mails); the database is as the kill left it.
    async def ses_idle() -> bool:
        return ses.in_flight == 0

    await eventually(ses_idle)
    statuses = await _statuses(engine)
    in_flight = {email_id for email_id, status in statuses.items() if status == "sending"}
    sent_before_kill = sum(1 for status in statuses.values() if status == "sent")
    assert in_flight, "the kill should have found claimed mails"
    assert sent_before_kill < MAILS

    # The claims' lease is 60 s: instead of waiting for it, move the claims of the dead
    # worker to now, as if the lease had run out.
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE message SET next_attempt_at = now() WHERE status = 'sending'")
        )
    ses.delay = 0.0
    worker_process.env["TEGAMI_MAX_SEND_RATE"] = "500"
    worker_process.start()

    async def all_sent() -> bool:
        return set((await _statuses(engine)).values()) == {"sent"}

    await eventually(all_sent, within=60)
    # SIGTERM: the worker finishes what it has and leaves cleanly.
    assert worker_process.signal(signal.SIGTERM) == 0

    sends = ses.sent_ids()
    assert set(sends) == set(accepted), "every accepted mail went out"
    duplicated = {email_id for email_id, count in sends.items() if count > 1}
    duplicates = sum(count - 1 for count in sends.values())
    assert duplicated <= in_flight, "only mails in flight at the kill may go out twice"
    assert duplicates <= len(in_flight)
    print(
        f"\nSIGKILL mid-drain: {MAILS} mails, {sent_before_kill} recorded as sent before the "
        f"kill, {len(in_flight)} in flight at the kill, {duplicates} sent twice"
    )


async def test_sigkill_mid_claim_sends_again_only_the_calls_ses_had_not_answered(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    engine: AsyncEngine,
    ses: FakeSes,
    worker_process: WorkerProcess,
) -> None:
    # A claim holds about a second of sends (25 at 25/s); SES takes 0.3 s to answer each, so
    # a kill a second in finds most of the claim answered and a few calls still open.
    mails = 60
    accepted = []
    for start in range(0, mails, 20):
        answers = await asyncio.gather(
            *(
                client.post("/emails/verify-email", json=body(f"k{i}@example.com"), headers=auth)
                for i in range(start, start + 20)
            )
        )
        assert all(a.status_code == 202 for a in answers)
        accepted += [a.json()["id"] for a in answers]
    ses.delay = 0.3
    worker_process.env["TEGAMI_SEND_CONCURRENCY"] = "64"
    worker_process.start()

    async def mid_claim() -> bool:
        answered = len(ses.requests) - ses.in_flight
        return answered >= 15 and ses.in_flight > 0

    await eventually(mid_claim, within=30)
    open_before = ses.in_flight
    assert worker_process.signal(signal.SIGKILL) == -signal.SIGKILL
    # Calls keep starting until the kill lands (64 at a time): those still open once the
    # process is gone count too (each is held 0.3 s by the fake, longer than the kill takes).
    open_calls = max(open_before, ses.in_flight)

    async def ses_idle() -> bool:
        return ses.in_flight == 0

    await eventually(ses_idle)
    async with engine.begin() as conn:  # as if the dead worker's leases had run out
        await conn.execute(
            text("UPDATE message SET next_attempt_at = now() WHERE status = 'sending'")
        )
    ses.delay = 0.0
    worker_process.env["TEGAMI_MAX_SEND_RATE"] = "500"
    worker_process.start()

    async def all_sent() -> bool:
        return set((await _statuses(engine)).values()) == {"sent"}

    await eventually(all_sent, within=60)
    assert worker_process.signal(signal.SIGTERM) == 0

    sends = ses.sent_ids()
    assert set(sends) == set(accepted), "every accepted mail went out"
    duplicates = sum(count - 1 for count in sends.values())
    # The calls open at the kill, and the answers of its last few tens of milliseconds (each
    # answer is written within 20 ms; at 25/s that is one answer, two with a slow write).
    assert duplicates <= open_calls + 2, (duplicates, open_calls)
    print(
        f"\nSIGKILL mid-claim: {mails} mails, {open_calls} calls open at the kill, "
        f"{duplicates} sent twice"
    )
