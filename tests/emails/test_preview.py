"""POST /emails/<type>/preview: the mail as it would be sent, with nothing stored or sent."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import MailBackend
from app.emails.catalog import EMAIL_KINDS
from app.emails.service import UNSUBSCRIBE_PLACEHOLDER
from app.models import Message
from tests.conftest import AppFactory
from tests.emails.test_router import LINKS, body, drain
from tests.ses import MotoSes


@pytest.mark.parametrize("kind", list(EMAIL_KINDS))
async def test_preview_is_the_mail_as_sent_but_for_its_unsubscribe_link(
    client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes, kind: str
) -> None:
    preview = await client.post(f"/emails/{kind}/preview", json=body(kind=kind), headers=auth)

    assert preview.status_code == 200, preview.text
    shown = preview.json()
    assert set(shown) == {"subject", "text", "html"}
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(Message)) == 0
    assert await drain(client) == 0

    # Now send it for real: the same subject and bodies, the link aside.
    await client.post(f"/emails/{kind}", json=body(kind=kind), headers=auth)
    await drain(client)
    [mail] = ses.sent()
    message = mail.message
    link = message["List-Unsubscribe"].strip("<>")
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    assert text_part is not None and html_part is not None
    sent_text, sent_html = text_part.get_content(), html_part.get_content()
    assert shown["subject"] == message["Subject"] == EMAIL_KINDS[kind].subject
    assert shown["text"].replace(UNSUBSCRIBE_PLACEHOLDER, link) == sent_text.replace("\r\n", "\n")
    assert shown["html"].replace(UNSUBSCRIBE_PLACEHOLDER, link) == sent_html.replace("\r\n", "\n")
    assert next(iter(LINKS[kind].values())) in shown["text"]
    assert UNSUBSCRIBE_PLACEHOLDER in shown["text"]


async def test_preview_validates_as_a_send_does(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    bad = {"to": "taro@example.com", "params": {"job_url": "https://evil.example/x"}}
    preview = await client.post("/emails/matching-notification/preview", json=bad, headers=auth)
    send = await client.post("/emails/matching-notification", json=bad, headers=auth)
    assert preview.status_code == send.status_code == 422
    assert preview.json() == send.json()
    missing = await client.post(
        "/emails/verify-email/preview", json={"to": "taro@example.com"}, headers=auth
    )
    assert missing.status_code == 422
    assert (await client.post("/emails/verify-email/preview", json=body())).status_code == 401


async def test_dev_mailbox_previews_a_mail(start_app: AppFactory, tmp_path: Path) -> None:
    client = await start_app(mail_backend=MailBackend.MAILBOX, mailbox_dir=tmp_path)
    page = await client.get("/dev/mailbox")
    assert "action='/dev/preview'" in page.text
    shown = await client.get(
        "/dev/preview",
        params={
            "type": "password-reset",
            "to": "taro@example.com",
            "link": "https://proworks.jp/r",
        },
    )
    assert shown.status_code == 200
    assert EMAIL_KINDS["password-reset"].subject in shown.text
    assert "https://proworks.jp/r" in shown.text
