"""SES throttling, 5xx and a slow SES: no mail lost, none sent twice, every
retry counted in /metrics. (SES unreachable: tests/emails/test_worker.py and
tests/ops/test_metrics.py; errors about the account: tests/emails/test_send_path.py.)

The SES here is :class:`tests.fake_ses.FakeSes`, over real HTTP: it answers the worker's
SendEmail calls with scripted errors, or late.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conditions import eventually
from tests.conftest import AppFactory
from tests.emails.test_router import body, drain
from tests.fake_ses import Answer, FakeSes
from tests.ops.test_metrics import sample


async def _accept(client: httpx.AsyncClient, auth: dict[str, str], count: int) -> list[str]:
    ids = []
    for i in range(count):
        answer = await client.post(
            "/emails/verify-email", json=body(f"user{i}@example.com"), headers=auth
        )
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["id"])
    return ids


async def _statuses(engine: AsyncEngine) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT id::text, status FROM message"))
        return {row.id: row.status for row in rows}


async def _retries(client: httpx.AsyncClient) -> dict[str, float]:
    metrics = (await client.get("/metrics")).text
    return {
        outcome: sample(metrics, "tegami_send_retries_total", outcome=outcome)
        for outcome in ("throttled", "retry", "paused")
    }


async def test_throttling_and_5xx_are_retried_until_each_mail_is_sent_once(
    client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine, ses: FakeSes
) -> None:
    before = await _retries(client)
    ids = await _accept(client, auth, 4)
    ses.script(
        Answer.THROTTLED,
        Answer.INTERNAL_ERROR,
        Answer.UNAVAILABLE,
        Answer.THROTTLED,
        Answer.INTERNAL_ERROR,
    )

    await drain(client)

    # Nothing failed, nothing went out; each waits as long as its error asks.
    assert set((await _statuses(engine)).values()) == {"queued"}
    async with engine.connect() as conn:
        waits = (
            await conn.execute(text("SELECT last_error, next_attempt_at - now() FROM message"))
        ).all()
    for error, wait in waits:
        # First attempt: exponential backoff starts at 1 s, with jitter.
        assert timedelta(0) < wait <= timedelta(seconds=1), (error, wait)

    # Time passes: the retries fall due, until SES takes everything.
    for _ in range(5):
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE message SET next_attempt_at = now() WHERE status = 'queued'")
            )
        await drain(client)
        if set((await _statuses(engine)).values()) == {"sent"}:
            break

    assert await _statuses(engine) == {email_id: "sent" for email_id in ids}
    assert ses.sent_ids() == {email_id: 1 for email_id in ids}
    assert ses.answers()[Answer.OK] == 4
    after = await _retries(client)
    assert after["throttled"] - before["throttled"] == 2
    assert after["retry"] - before["retry"] == 3  # 500, 503, 500
    async with engine.connect() as conn:
        retries = (
            await conn.execute(text("SELECT count(*) FROM message_event WHERE kind = 'send_retry'"))
        ).scalar_one()
    assert retries == 5


async def test_running_worker_sends_throttled_mail_by_itself_once_ses_allows(
    start_app: AppFactory, auth: dict[str, str], engine: AsyncEngine, ses: FakeSes
) -> None:
    client = await start_app(run_worker=True)
    before = await _retries(client)
    ses.script(*[Answer.THROTTLED] * 5)
    ids = await _accept(client, auth, 5)

    async def all_sent() -> bool:
        return set((await _statuses(engine)).values()) == {"sent"}

    # Backoff starts at 0.5-1 s: the worker's own retry, no help from the test.
    await eventually(all_sent, within=15)
    assert ses.sent_ids() == {email_id: 1 for email_id in ids}
    assert (await _retries(client))["throttled"] - before["throttled"] == 5


async def test_slow_ses_gets_every_mail_once_within_the_concurrency_limit(
    start_app: AppFactory, auth: dict[str, str], engine: AsyncEngine, ses: FakeSes
) -> None:
    ses.delay = 0.3
    client = await start_app(run_worker=True, send_concurrency=4)
    metrics = (await client.get("/metrics")).text
    calls_before = sample(metrics, "tegami_ses_call_seconds_count")
    seconds_before = sample(metrics, "tegami_ses_call_seconds_sum")
    ids = await _accept(client, auth, 12)

    async def all_sent() -> bool:
        return set((await _statuses(engine)).values()) == {"sent"}

    await eventually(all_sent, within=15)
    assert ses.sent_ids() == {email_id: 1 for email_id in ids}
    assert ses.max_in_flight <= 4
    metrics = (await client.get("/metrics")).text
    assert sample(metrics, "tegami_ses_call_seconds_count") - calls_before == 12
    # Each call took SES's 0.3 s, and /metrics shows it.
    assert sample(metrics, "tegami_ses_call_seconds_sum") - seconds_before >= 12 * 0.3
