"""A support desk over HTTP: the app with SNS set up (its worker drained by hand), and the
moves that make a person's history: sends, SES's answers as signed SNS messages, the API's
suppressions, opt-outs, erasure and cancel."""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api_keys import create_key
from app.db import create_sessionmaker
from app.emails import outbox
from app.models import ApiKeyScope, Category, Message
from tests.conftest import AppFactory
from tests.fake_ses import FakeSes
from tests.sns_messages import CERT_NAME, PARAMS, TOPIC, Sns, ses_event

PARAMS_ALL = {**PARAMS, "email-change": {"verification_url": "https://proworks.jp/change?t=1"}}


class Desk:
    def __init__(self, client: httpx.AsyncClient, sns: Sns, engine: AsyncEngine, admin: str):
        self.client = client
        self.sns = sns
        self.engine = engine
        self.auth = {"Authorization": f"Bearer {admin}"}

    async def key(self, scope: ApiKeyScope) -> dict[str, str]:
        async with create_sessionmaker(self.engine)() as session:
            key = await create_key(session, name=f"{scope.value}-{id(object())}", scope=scope)
            await session.commit()
        return {"Authorization": f"Bearer {key}"}

    async def send(
        self,
        to: str,
        kind: str = "password-reset",
        *,
        auth: dict[str, str] | None = None,
        expect: int = 202,
        **extra: Any,
    ) -> str:
        answer = await self.client.post(
            f"/emails/{kind}",
            json={"to": to, "params": PARAMS_ALL[kind], **extra},
            headers=auth or self.auth,
        )
        assert answer.status_code == expect, answer.text
        return str(answer.json().get("id", ""))

    async def drain(self) -> None:
        await self.client.app.state.worker.drain()  # type: ignore[attr-defined]

    async def sent(self, to: str, kind: str = "password-reset", **extra: Any) -> tuple[str, str]:
        email_id = await self.send(to, kind, **extra)
        await self.drain()
        shown = (await self.client.get(f"/emails/{email_id}", headers=self.auth)).json()
        assert shown["status"] == "sent", shown
        return email_id, shown["ses_message_id"]

    async def ses(self, fixture: str, to: str, ses_id: str, **changes: Any) -> None:
        await self.sns.deliver(ses_event(fixture, to=to, ses_message_id=ses_id, **changes))

    async def delivered(self, to: str, kind: str = "password-reset") -> str:
        email_id, ses_id = await self.sent(to, kind)
        await self.ses("eventpub-delivery.json", to, ses_id)
        return email_id

    def path(self, to: str) -> str:
        return urllib.parse.quote(to, safe="@")

    async def suppress(self, to: str) -> None:
        answer = await self.client.put(
            f"/recipients/{self.path(to)}/suppression",
            json={"reason": "manual", "detail": "customer asked by phone"},
            headers=self.auth,
        )
        assert answer.status_code == 200, answer.text

    async def opt_out(self, to: str) -> None:
        answer = await self.client.put(
            f"/recipients/{self.path(to)}/opt-outs/matching", headers=self.auth
        )
        assert answer.status_code == 200, answer.text

    async def erase(self, to: str) -> None:
        answer = await self.client.delete(f"/recipients/{self.path(to)}", headers=self.auth)
        assert answer.status_code in (200, 204), answer.text

    async def cancel(self, email_id: str) -> None:
        answer = await self.client.delete(f"/emails/{email_id}", headers=self.auth)
        assert answer.status_code == 200, answer.text

    async def hold_optional(self) -> None:
        # What the reputation guard does while the rates are over SES's review level.
        async with self.engine.begin() as connection:
            await outbox.hold_optional(connection, categories=[Category.MATCHING])

    async def age(self, email_id: str, *, minutes: int) -> None:
        """The mail as if accepted ``minutes`` ago (its link's hour runs out)."""
        async with self.engine.begin() as connection:
            await connection.execute(
                update(Message)
                .where(Message.id == email_id)
                .values(
                    created_at=Message.created_at - timedelta(minutes=minutes),
                    expires_at=Message.expires_at - timedelta(minutes=minutes),
                    next_attempt_at=func.now(),
                )
            )

    async def why(
        self, to: str, type: str | None = None, *, auth: dict[str, str] | None = None
    ) -> dict[str, Any]:
        query = f"?type={type}" if type else ""
        answer = await self.client.get(
            f"/recipients/{self.path(to)}/why{query}", headers=auth or self.auth
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body


@pytest.fixture
async def desk(
    start_app: AppFactory,
    identity: tuple[bytes, bytes],
    tmp_path: Path,
    engine: AsyncEngine,
    api_key: str,
    ses_account: FakeSes,
) -> Desk:
    (tmp_path / CERT_NAME).write_bytes(identity[1])
    client = await start_app(run_worker=False, sns_cert_dir=tmp_path, sns_topic_arns=[TOPIC])
    return Desk(client, Sns(client, identity[0]), engine, api_key)


def in_days(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()
