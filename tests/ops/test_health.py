"""Health endpoints as App Runner and an operator see them."""

from __future__ import annotations

import httpx

from tests.conftest import AppFactory


async def test_healthz_answers_while_the_process_runs(client: httpx.AsyncClient) -> None:
    answer = await client.get("/healthz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}


async def test_readyz_says_the_database_answers(client: httpx.AsyncClient) -> None:
    answer = await client.get("/readyz")
    assert answer.status_code == 200
    assert answer.json()["database"] == "ok"


async def test_without_a_database_readyz_and_the_api_answer_503(start_app: AppFactory) -> None:
    # Nothing listens on port 1: the database is "down".
    client = await start_app(database_url="postgresql://postgres@127.0.0.1:1/none")
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    send = await client.post(
        "/emails/verify-email",
        json={"to": "a@example.com", "params": {"verification_url": "https://proworks.jp/v"}},
        headers={"Authorization": "Bearer tgm_whatever"},
    )
    assert send.status_code == 503
    assert send.json()["error"]["code"] == "unavailable"
