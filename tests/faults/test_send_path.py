"""The send path the way PRO WORKS runs it: SES's sandbox rate with several replicas, an IAM slip,
feedback that lands while a mail waits for its slot, account mail behind a matching backlog.

SES here is :class:`tests.fake_ses.FakeSes` over real HTTP; its own arrival times are what the
rate is judged by.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conditions import eventually
from tests.conftest import AppFactory
from tests.emails.test_router import body
from tests.fake_ses import Answer, FakeSes
from tests.faults.test_sigkill import WorkerProcess
from tests.sns_messages import TOPIC, Sns, ses_event


async def _accept(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    count: int,
    *,
    kind: str = "verify-email",
    prefix: str = "user",
) -> list[str]:
    ids = []
    for start in range(0, count, 20):
        answers = await asyncio.gather(
            *(
                client.post(
                    f"/emails/{kind}", json=body(f"{prefix}{i}@example.com", kind), headers=auth
                )
                for i in range(start, min(count, start + 20))
            )
        )
        assert all(a.status_code == 202 for a in answers), [a.text for a in answers]
        ids += [a.json()["id"] for a in answers]
    return ids


async def _statuses(engine: AsyncEngine) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT id::text, status FROM message"))
        return {row.id: row.status for row in rows}


def _most_in_any_window(arrivals: list[float], seconds: float) -> int:
    """The most SendEmail calls SES saw within any window of ``seconds``."""
    arrivals = sorted(arrivals)
    most = 0
    for i, start in enumerate(arrivals):
        most = max(most, sum(1 for t in arrivals[i:] if t < start + seconds))
    return most


@pytest.mark.parametrize("replicas", [2, 4])
async def test_replicas_at_the_sandbox_rate_send_every_mail_once_within_the_rate(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    engine: AsyncEngine,
    ses: FakeSes,
    database_url: str,
    tmp_path: Path,
    replicas: int,
) -> None:
    # 1/s, a lease of 3 s and a backlog of 10 s: before claims were sized by the rate, each
    # worker held 32 mails across the whole backlog and the others took them over.
    ids = await _accept(client, auth, 10)
    workers = []
    for n in range(replicas):
        worker = WorkerProcess(database_url, ses, tmp_path / f"worker{n}.log")
        worker.env["TEGAMI_MAX_SEND_RATE"] = "1"
        worker.env["TEGAMI_SEND_LEASE_SECONDS"] = "3"
        worker.env["TEGAMI_SEND_CONCURRENCY"] = "32"
        workers.append(worker)
    try:
        for worker in workers:
            worker.start()

        async def all_sent() -> bool:
            return set((await _statuses(engine)).values()) == {"sent"}

        await eventually(all_sent, within=60)
        for worker in workers:
            assert worker.signal(signal.SIGTERM) == 0
    finally:
        for worker in workers:
            worker.stop()

    assert ses.sent_ids() == {email_id: 1 for email_id in ids}, "each mail exactly once"
    # SES's own clock: the rate, whichever replica sent. One send that left late (a new
    # process's first call) may bunch with the next; two replicas each at 1/s would put ten
    # calls in five seconds.
    arrivals = [r.received_at for r in ses.sent()]
    assert _most_in_any_window(arrivals, 5.0) <= 5 + 1
    assert _most_in_any_window(arrivals, 1.0) <= 2
    logs = "".join(w.log.read_text() for w in workers)
    assert "email_claim_lost" not in logs


async def test_an_iam_slip_pauses_sending_fails_nothing_and_resumes_by_itself(
    start_app: AppFactory,
    auth: dict[str, str],
    engine: AsyncEngine,
    ses: FakeSes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ses.default = Answer.ACCESS_DENIED
    client = await start_app(run_worker=True)
    worker = client.app.state.worker  # type: ignore[attr-defined]
    worker.probe_seconds = 0.5
    caplog.set_level(logging.INFO)
    ids = await _accept(client, auth, 12)

    async def paused() -> bool:
        async with engine.connect() as conn:
            reason = (
                await conn.execute(text("SELECT pause_reason FROM send_pacer"))
            ).scalar_one_or_none()
        return reason is not None and "AccessDeniedException" in reason

    await eventually(paused)

    async def probed_twice() -> bool:
        # Two probes after the pause began: the worker keeps trying, one mail at a time.
        return ses.answers()[Answer.ACCESS_DENIED] >= len(ids) + 2

    await eventually(probed_twice, within=15)
    statuses = await _statuses(engine)
    assert "failed" not in statuses.values()
    # While paused, only probes reach SES: far fewer calls than retries of every mail.
    assert ses.answers()[Answer.ACCESS_DENIED] < len(ids) + 10
    shown = (await client.get(f"/emails/{ids[0]}", headers=auth)).json()
    assert "AccessDeniedException" in str(shown["last_error"])

    ses.default = Answer.OK  # the operator mends the policy

    async def all_sent() -> bool:
        return set((await _statuses(engine)).values()) == {"sent"}

    await eventually(all_sent, within=20)
    assert ses.sent_ids() == {email_id: 1 for email_id in ids}
    events = [r.__dict__.get("event") for r in caplog.records]
    assert events.count("ses_sending_paused") == 1
    assert events.count("ses_sending_resumed") == 1
    assert not await paused()


async def test_a_hard_bounce_while_a_mail_waits_for_its_slot_stops_it(
    start_app: AppFactory,
    auth: dict[str, str],
    engine: AsyncEngine,
    ses: FakeSes,
    sns_cert_dir: Path,
    sns_identity: tuple[bytes, bytes],
) -> None:
    client = await start_app(sns_cert_dir=sns_cert_dir, sns_topic_arns=[TOPIC], max_send_rate=4)
    sns = Sns(client, sns_identity[0])
    [email_id] = await _accept(client, auth, 1, prefix="taro")
    worker = client.app.state.worker  # type: ignore[attr-defined]
    claim = await worker.claim(10)
    assert [str(m.id) for m in claim.mails] == [email_id]

    # Claimed, not yet sent: SES reports a hard bounce for the address from an earlier mail.
    answer = await sns.deliver(
        ses_event("real-notif-bounce-permanent-general-simulator-2022.json", to="taro0@example.com")
    )
    assert answer.status_code == 200, answer.text
    await worker.process(claim)

    assert ses.requests == []
    shown = (await client.get(f"/emails/{email_id}", headers=auth)).json()
    assert shown["status"] == "failed"
    assert shown["last_error"] == "suppressed: hard_bounce"
    assert shown["events"][-1]["kind"] == "blocked"


async def test_an_opt_out_after_accept_stops_the_matching_mail(
    client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine, ses: FakeSes
) -> None:
    [email_id] = await _accept(client, auth, 1, kind="matching-notification", prefix="hanako")
    recipient = (await client.get("/recipients/hanako0@example.com", headers=auth)).json()
    assert recipient["opt_outs"] == []
    async with engine.begin() as conn:
        # What the unsubscribe page's button does, for this recipient and category.
        await conn.execute(
            text(
                "INSERT INTO opt_out (recipient_id, category, cause) "
                "SELECT recipient_id, 'matching', 'test' FROM message"
            )
        )
    await client.app.state.worker.drain()  # type: ignore[attr-defined]

    assert ses.requests == []
    shown = (await client.get(f"/emails/{email_id}", headers=auth)).json()
    assert shown["status"] == "failed"
    assert shown["last_error"] == "opted_out: matching"


async def test_a_link_that_expires_while_its_mail_waits_is_never_sent(
    client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine, ses: FakeSes
) -> None:
    [email_id] = await _accept(client, auth, 1, kind="password-reset")
    worker = client.app.state.worker  # type: ignore[attr-defined]
    claim = await worker.claim(10)
    async with engine.begin() as conn:  # the hour passes while it waits
        await conn.execute(text("UPDATE message SET expires_at = now() - interval '1 second'"))
    await worker.process(claim)

    assert ses.requests == []
    assert (await client.get(f"/emails/{email_id}", headers=auth)).json()["status"] == "expired"


async def test_password_resets_overtake_a_matching_backlog(
    start_app: AppFactory, auth: dict[str, str], engine: AsyncEngine, ses: FakeSes
) -> None:
    client = await start_app(max_send_rate=14)
    matching = await _accept(client, auth, 70, kind="matching-notification", prefix="job")
    worker = client.app.state.worker  # type: ignore[attr-defined]
    stopping = asyncio.Event()
    running = asyncio.create_task(worker._loop(stopping))
    try:

        async def started() -> bool:
            return len(ses.sent()) >= 5

        await eventually(started)
        resets = await _accept(client, auth, 3, kind="password-reset", prefix="reset")

        async def all_sent() -> bool:
            return set((await _statuses(engine)).values()) == {"sent"}

        await eventually(all_sent, within=30)
    finally:
        stopping.set()
        await running

    order = [str(r.tegami_id) for r in ses.sent()]
    assert sorted(order) == sorted(matching + resets)
    first_reset = min(order.index(r) for r in resets)
    last_reset = max(order.index(r) for r in resets)
    # At 14/s, the resets reach SES within about a second and a half: well before the 60 or so
    # matching mails still queued ahead of them when they were accepted.
    assert last_reset - first_reset < 5
    assert len(order) - 1 - last_reset >= 35


async def test_long_waiting_optional_mail_is_not_starved_by_account_mail(
    client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine, ses: FakeSes
) -> None:
    [old_matching] = await _accept(client, auth, 1, kind="matching-notification", prefix="old")
    async with engine.begin() as conn:  # it has waited eleven minutes behind account mail
        await conn.execute(
            text("UPDATE message SET next_attempt_at = now() - interval '11 minutes'")
        )
    fresh_account = await _accept(client, auth, 3, kind="verify-email", prefix="new")
    worker = client.app.state.worker  # type: ignore[attr-defined]
    claim = await worker.claim(2)

    assert next(str(m.id) for m in claim.mails) == old_matching
    assert str(claim.mails[1].id) in fresh_account


async def test_an_account_ses_has_paused_sends_nothing_until_ses_lets_it(
    start_app: AppFactory, auth: dict[str, str], engine: AsyncEngine, ses: FakeSes
) -> None:
    ses.sending_enabled = False  # GetAccount: SendingEnabled false, EnforcementStatus SHUTDOWN
    client = await start_app(run_worker=True)
    worker = client.app.state.worker  # type: ignore[attr-defined]
    worker.account_wait_seconds = 0.1
    [email_id] = await _accept(client, auth, 1)

    async def asked_ses_again() -> bool:
        # The worker went round its loop several times, asking SES each time.
        return ses.account_reads >= 5

    await eventually(asked_ses_again)
    assert ses.requests == []
    shown = (await client.get(f"/emails/{email_id}", headers=auth)).json()
    assert (shown["status"], shown["attempts"]) == ("queued", 0)
    status = (await client.get("/status/reputation", headers=auth)).json()
    assert status["ses_account"]["sending_enabled"] is False

    ses.sending_enabled = True  # SES's review ends

    async def sent() -> bool:
        return (await _statuses(engine)) == {email_id: "sent"}

    await eventually(sent)
    assert ses.sent_ids() == {email_id: 1}


_FROM_NOT_VERIFIED = (
    "Email address is not verified. The following identities failed the check in region "
    "US-EAST-1: noreply@proworks.jp"
)


async def _pause_reason(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        reason: str | None = (
            await conn.execute(text("SELECT pause_reason FROM send_pacer"))
        ).scalar_one_or_none()
    return reason


async def test_ses_no_longer_verifying_the_from_address_pauses_sending_and_fails_nothing(
    start_app: AppFactory,
    auth: dict[str, str],
    engine: AsyncEngine,
    ses: FakeSes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The domain's DKIM records were deleted: SES no longer verifies the From identity, and
    # says so for every mail. Nothing is wrong with any of the mails.
    ses.default = Answer.REJECTED
    ses.rejection = _FROM_NOT_VERIFIED
    client = await start_app(run_worker=True)
    worker = client.app.state.worker  # type: ignore[attr-defined]
    worker.probe_seconds = 0.5
    caplog.set_level(logging.INFO)
    ids = await _accept(client, auth, 6)

    async def paused() -> bool:
        reason = await _pause_reason(engine)
        return reason is not None and "noreply@proworks.jp" in reason

    await eventually(paused)

    async def probed_twice() -> bool:
        return ses.answers()[Answer.REJECTED] >= len(ids) + 2

    await eventually(probed_twice, within=15)
    assert "failed" not in (await _statuses(engine)).values()

    ses.default = Answer.OK  # the operator puts the DKIM records back

    async def all_sent() -> bool:
        return set((await _statuses(engine)).values()) == {"sent"}

    await eventually(all_sent, within=20)
    assert ses.sent_ids() == {email_id: 1 for email_id in ids}
    assert await _pause_reason(engine) is None
    events = [r.__dict__.get("event") for r in caplog.records]
    assert events.count("ses_sending_paused") == 1
    assert events.count("ses_sending_resumed") == 1


async def test_an_unverified_recipient_in_the_sandbox_fails_only_that_mail(
    start_app: AppFactory, auth: dict[str, str], engine: AsyncEngine, ses: FakeSes
) -> None:
    ses.unverified = {"user2@example.com"}  # SES's sandbox: only verified recipients
    client = await start_app(run_worker=True)
    ids = await _accept(client, auth, 5)

    async def all_final() -> dict[str, str] | None:
        statuses = await _statuses(engine)
        return statuses if set(statuses.values()) <= {"sent", "failed"} else None

    statuses = await eventually(all_final)
    assert statuses == {email_id: "failed" if n == 2 else "sent" for n, email_id in enumerate(ids)}
    shown = (await client.get(f"/emails/{ids[2]}", headers=auth)).json()
    assert "user2@example.com" in shown["last_error"]
    assert await _pause_reason(engine) is None


async def test_a_throttling_storm_slows_every_replica_to_half_the_rate_and_each_mail_goes_once(
    start_app: AppFactory,
    auth: dict[str, str],
    engine: AsyncEngine,
    ses: FakeSes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rate, storm = 10, 6.0
    caplog.set_level(logging.INFO)
    # Two replicas, each with its worker, sharing the pacer.
    client = await start_app(run_worker=True, max_send_rate=rate)
    await start_app(run_worker=True, max_send_rate=rate)
    reads_before = ses.account_reads
    ses.throttle_until = time.monotonic() + storm
    storm_started = time.monotonic()
    ids = await _accept(client, auth, 60)

    async def all_sent() -> bool:
        return set((await _statuses(engine)).values()) == {"sent"}

    await eventually(all_sent, within=60)

    during = [r for r in ses.requests if r.received_at < storm_started + storm]
    assert all(r.answer is Answer.THROTTLED for r in during)
    # Half the configured rate over the storm (one slot of slack for the first answer).
    assert len(during) <= rate / 2 * storm + 1, len(during)
    assert ses.sent_ids() == {email_id: 1 for email_id in ids}, "each mail once, after it"
    # GetAccount read again early (the rate may have been lowered), not 5 minutes later.
    assert ses.account_reads > reads_before
    # SES took mail again: the full rate is back for every replica.
    async with engine.connect() as conn:
        throttled = (await conn.execute(text("SELECT throttled_at FROM send_pacer"))).scalar_one()
    assert throttled is None
    events = [r.__dict__.get("event") for r in caplog.records]
    assert "ses_throttled" in events
    assert "ses_throttle_ended" in events
    print(
        f"\nthrottling storm: {len(during)} SendEmail calls in {storm:.0f} s at a configured "
        f"{rate}/s, {len(ses.requests)} in all for {len(ids)} mails"
    )
