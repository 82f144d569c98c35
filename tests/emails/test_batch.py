"""POST /emails/<type>/batch: many mails in one request, each item answered on its own."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import create_sessionmaker
from app.models import Message, SuppressionReason
from app.recipients import service as recipients
from app.recipients.addresses import address_hash
from tests.conftest import make_settings
from tests.emails.test_router import _suppress, body, drain
from tests.ses import MotoSes

KIND = "matching-notification"


async def _count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.scalar(select(func.count()).select_from(Message))) or 0)


async def _opt_out(client: httpx.AsyncClient, auth: dict[str, str], address: str) -> None:
    """The recipient is known (an account mail went out) and left matching notifications."""
    first = await client.post("/emails/verify-email", json=body(address), headers=auth)
    assert first.status_code == 202
    answer = await client.put(f"/recipients/{address}/opt-outs/matching", headers=auth)
    assert answer.status_code in (200, 204), answer.text


def _mixed_batch() -> list[dict[str, Any]]:
    return [
        body("a@example.com", KIND, user_id="u1"),
        {"to": "bad-host@example.com", "params": {"job_url": "https://evil.example/"}},
        {"params": {"job_url": "https://proworks.jp/jobs/1"}},  # no "to"
        body("suppressed@example.com", KIND),
        body("opted-out@example.com", KIND),
        body("b@example.com", KIND),
    ]


async def test_a_batch_refuses_bad_and_blocked_items_alone_and_sends_the_rest(
    client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes
) -> None:
    await _suppress(engine, "Suppressed@example.com", SuppressionReason.HARD_BOUNCE)
    await _opt_out(client, auth, "opted-out@example.com")

    answer = await client.post(
        f"/emails/{KIND}/batch", json={"emails": _mixed_batch()}, headers=auth
    )

    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert len(results) == 6
    assert results[0]["status"] == "queued" and results[0]["id"]
    assert results[1]["error"]["code"] == "invalid_params"
    assert results[1]["error"]["detail"][0]["loc"] == ["body", "emails", 1, "params", "job_url"]
    assert results[2]["error"]["code"] == "invalid_request"
    assert ["body", "emails", 2, "to"] in [d["loc"] for d in results[2]["error"]["detail"]]
    assert results[3]["error"]["code"] == "suppressed"
    assert results[3]["error"]["reason"] == "hard_bounce"
    assert results[4]["error"]["code"] == "opted_out"
    assert results[4]["error"]["category"] == "matching"
    assert results[5]["status"] == "queued"
    # The refusals read as the single send's would.
    single = await client.post(
        f"/emails/{KIND}", json=body("suppressed@example.com", KIND), headers=auth
    )
    assert single.json()["error"]["code"] == results[3]["error"]["code"]

    shown = (await client.get(f"/emails/{results[0]['id']}", headers=auth)).json()
    assert shown["status"] == "queued" and shown["to"] == "a@example.com"
    await drain(client)
    assert sorted(m.destinations[0] for m in ses.sent()) == [
        "a@example.com",
        "b@example.com",
        "opted-out@example.com",  # its account mail
    ]
    assert ses.sent()[0].message["Subject"] != ""


async def test_a_retried_batch_returns_the_same_results_and_sends_nothing_twice(
    client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes
) -> None:
    await _suppress(engine, "suppressed@example.com", SuppressionReason.COMPLAINT)
    batch = {"emails": _mixed_batch()}
    key = {**auth, "Idempotency-Key": "job-42-matching"}

    first = await client.post(f"/emails/{KIND}/batch", json=batch, headers=key)
    # The suppression is lifted in between: the retry still answers what the first said.
    async with create_sessionmaker(engine)() as session:
        await recipients.lift_suppression(
            session,
            address_hash=address_hash(
                "suppressed@example.com",
                secret=make_settings().address_hash_secret.get_secret_value(),
            ),
            cause="test",
        )
        await session.commit()
    again = await client.post(f"/emails/{KIND}/batch", json=batch, headers=key)

    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert await _count(engine) == 3
    await drain(client)
    assert len(ses.sent()) == 3

    other = await client.post(
        f"/emails/{KIND}/batch", json={"emails": _mixed_batch()[:2]}, headers=key
    )
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"


async def test_concurrent_retries_of_a_batch_store_it_once(
    client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine
) -> None:
    batch = {"emails": [body(f"u{i}@example.com", KIND) for i in range(20)]}
    key = {**auth, "Idempotency-Key": "same-batch"}

    answers = await asyncio.gather(
        *(client.post(f"/emails/{KIND}/batch", json=batch, headers=key) for _ in range(4))
    )

    assert {a.status_code for a in answers} == {200}
    assert len({a.text for a in answers}) == 1
    assert await _count(engine) == 20


async def test_a_batch_holds_at_most_500_and_at_least_one(
    client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine
) -> None:
    many = {"emails": [body(f"u{i}@example.com", KIND) for i in range(501)]}
    assert (await client.post(f"/emails/{KIND}/batch", json=many, headers=auth)).status_code == 422
    empty = await client.post(f"/emails/{KIND}/batch", json={"emails": []}, headers=auth)
    assert empty.status_code == 422
    assert empty.json()["error"]["code"] == "invalid_request"

    full = {"emails": [body(f"user{i:03}@example.com", KIND) for i in range(500)]}
    answer = await client.post(f"/emails/{KIND}/batch", json=full, headers=auth)
    assert answer.status_code == 200, answer.text[:300]
    assert [r["status"] for r in answer.json()["results"]] == ["queued"] * 500
    assert await _count(engine) == 500


async def test_batch_items_may_repeat_an_address_and_carry_a_send_time(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes
) -> None:
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    emails = [
        body("taro@example.com", "verify-email"),
        body("TARO@example.com", "verify-email"),
        body("taro@example.com", "verify-email", send_at=later),  # past the link's hour
    ]
    answer = await client.post("/emails/verify-email/batch", json={"emails": emails}, headers=auth)

    results = answer.json()["results"]
    assert [r.get("status") for r in results[:2]] == ["queued", "queued"]
    assert results[2]["error"]["code"] == "invalid_request"
    assert results[2]["error"]["detail"][0]["loc"] == ["body", "emails", 2, "send_at"]
    later_matching = await client.post(
        f"/emails/{KIND}/batch", json={"emails": [body(send_at=later, kind=KIND)]}, headers=auth
    )
    [scheduled] = later_matching.json()["results"]
    assert scheduled["status"] == "scheduled"
    await drain(client)
    assert len(ses.sent()) == 2


async def test_a_test_key_batch_is_recorded_but_never_reaches_ses(
    client: httpx.AsyncClient, engine: AsyncEngine, ses: MotoSes
) -> None:
    from app.api_keys import create_key
    from app.models import ApiKeyScope

    async with create_sessionmaker(engine)() as session:
        key = await create_key(session, name="ci", scope=ApiKeyScope.TEST)
        await session.commit()
    headers = {"Authorization": f"Bearer {key}"}
    answer = await client.post(
        f"/emails/{KIND}/batch", json={"emails": [body(kind=KIND)]}, headers=headers
    )
    [result] = answer.json()["results"]
    await drain(client)
    assert ses.sent() == []
    shown = (await client.get(f"/emails/{result['id']}", headers=headers)).json()
    assert shown["status"] == "sent" and shown["test"] is True


async def test_an_item_naming_a_field_with_nul_is_refused_alone_not_a_500(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    emails = [body(kind=KIND) | {"bad\u0000key": 1}, body("b@example.com", KIND)]
    answer = await client.post(f"/emails/{KIND}/batch", json={"emails": emails}, headers=auth)
    assert answer.status_code == 200, answer.text
    first, second = answer.json()["results"]
    assert first["error"]["code"] == "invalid_request"
    assert second["status"] == "queued"
