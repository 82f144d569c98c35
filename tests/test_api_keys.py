"""Key scopes over HTTP: what an app key may do, what only an admin key may do (every route
and scope: tests/test_scopes.py)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api_keys import create_key
from app.db import create_sessionmaker
from app.models import ApiKeyScope
from tests.emails.test_router import body
from tests.ses import MotoSes

# Lifts reach SES's account suppression list (tests/fake_ses.py in front of moto).
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
    history = (await client.get("/recipients/taro@example.com", headers=admin)).json()["history"]
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


async def test_a_test_key_mail_is_rendered_and_recorded_but_never_reaches_ses(
    client: httpx.AsyncClient, engine: AsyncEngine, ses: MotoSes
) -> None:
    staging = await key_of(engine, "staging", ApiKeyScope.TEST)
    sent = await client.post(
        "/emails/password-reset", json=body(kind="password-reset"), headers=staging
    )
    assert sent.status_code == 202, sent.text

    await client.app.state.worker.drain()  # type: ignore[attr-defined]

    assert ses.sent() == []
    shown = (await client.get(f"/emails/{sent.json()['id']}", headers=staging)).json()
    assert (shown["status"], shown["test"], shown["ses_message_id"]) == ("sent", True, None)
    assert shown["events"][-1]["detail"] == "test key: rendered, not handed to SES"
    # A real key's mail still goes out, and is not marked.
    real = await key_of(engine, "nextjs-app", ApiKeyScope.APP)
    other = await client.post("/emails/verify-email", json=body("jiro@example.com"), headers=real)
    await client.app.state.worker.drain()  # type: ignore[attr-defined]
    assert [m.destinations[0] for m in ses.sent()] == ["jiro@example.com"]
    assert (await client.get(f"/emails/{other.json()['id']}", headers=real)).json()["test"] is False
