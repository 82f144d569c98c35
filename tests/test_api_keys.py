"""Key scopes over HTTP: what an app key may do, what only an admin key may do."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api_keys import create_key
from app.db import create_sessionmaker
from app.models import ApiKeyScope
from tests.emails.test_router import body

# Lifts reach SES's account suppression list (tests/fake_aws.py in front of moto).
pytestmark = pytest.mark.usefixtures("ses_account")


async def key_of(engine: AsyncEngine, name: str, scope: ApiKeyScope) -> dict[str, str]:
    async with create_sessionmaker(engine)() as session:
        key = await create_key(session, name=name, scope=scope)
        await session.commit()
    return {"Authorization": f"Bearer {key}"}


def assert_forbidden(answer: httpx.Response) -> None:
    assert answer.status_code == 403, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == "forbidden"


@pytest.mark.parametrize("scope", [ApiKeyScope.APP, ApiKeyScope.TEST])
async def test_only_an_admin_key_adds_or_lifts_a_suppression(
    client: httpx.AsyncClient, engine: AsyncEngine, scope: ApiKeyScope
) -> None:
    app = await key_of(engine, "nextjs-app", scope)
    admin = await key_of(engine, "ops", ApiKeyScope.ADMIN)
    url = "/recipients/taro@example.com/suppression"

    assert_forbidden(await client.put(url, json={"detail": "asked"}, headers=app))
    assert (await client.put(url, json={"detail": "asked"}, headers=admin)).status_code == 200
    assert_forbidden(await client.delete(url, headers=app))
    # Still suppressed: the app key changed nothing.
    refused = await client.post("/emails/verify-email", json=body(), headers=app)
    assert refused.status_code == 409
    assert (await client.delete(url, headers=admin)).status_code == 200
    assert (await client.post("/emails/verify-email", json=body(), headers=app)).status_code == 202
    history = (await client.get("/recipients/taro@example.com", headers=app)).json()["history"]
    assert {event["cause"] for event in history} == {"api_key:ops"}


async def test_an_app_key_sends_reads_its_mails_and_erases_but_not_status(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    app = await key_of(engine, "nextjs-app", ApiKeyScope.APP)
    other = await key_of(engine, "other-app", ApiKeyScope.APP)
    admin = await key_of(engine, "ops", ApiKeyScope.ADMIN)

    sent = await client.post("/emails/verify-email", json=body(), headers=app)
    assert sent.status_code == 202
    mail = f"/emails/{sent.json()['id']}"
    assert (await client.get(mail, headers=app)).status_code == 200
    assert (await client.get(mail, headers=other)).status_code == 404  # not its mail
    assert (await client.get(mail, headers=admin)).status_code == 200
    assert (await client.get("/recipients/taro@example.com", headers=app)).status_code == 200
    assert (await client.delete("/recipients/taro@example.com", headers=app)).status_code == 200
    assert_forbidden(await client.get("/status/reputation", headers=app))


async def test_the_forbidden_answer_is_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "403" in paths["/recipients/{email}/suppression"]["put"]["responses"]
    assert "403" in paths["/recipients/{email}/suppression"]["delete"]["responses"]
    assert "403" in paths["/status/reputation"]["get"]["responses"]
