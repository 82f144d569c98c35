"""/dev/mailbox shows a mail as its recipient would see it, and keeps the .eml downloadable."""

from __future__ import annotations

import html
import re
from pathlib import Path

import anyio

from app.config import MailBackend
from tests.conftest import AppFactory
from tests.emails.test_router import LINKS, body, drain


async def test_a_mail_shows_its_html_at_two_widths_its_text_and_headers(
    start_app: AppFactory, auth: dict[str, str], tmp_path: Path
) -> None:
    client = await start_app(mail_backend=MailBackend.MAILBOX, mailbox_dir=tmp_path)
    sent = await client.post("/emails/verify-email", json=body(), headers=auth)
    assert sent.status_code == 202
    await drain(client)

    listing = (await client.get("/dev/mailbox")).text
    [link] = re.findall(r"href='(/dev/mailbox/[^']+)'", listing)
    page = await client.get(link)

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    frames = re.findall(r"<iframe [^>]*sandbox='' width='(\d+)' srcdoc=\"([^\"]*)\"", page.text)
    assert [width for width, _ in frames] == ["800", "375"]
    url = LINKS["verify-email"]["verification_url"]
    for _, srcdoc in frames:
        rendered = html.unescape(srcdoc)
        assert rendered.lstrip().lower().startswith("<!doctype html")
        assert f'href="{url}"' in rendered or f"href='{url}'" in rendered
    text_part = re.search(r"<pre>(.*?)</pre>", page.text, re.DOTALL)
    assert text_part and url in html.unescape(text_part.group(1))
    assert "List-Unsubscribe-Post" in page.text
    assert "【PRO WORKS】メールアドレスの確認" in page.text

    raw = await client.get(f"{link}/raw")
    assert raw.status_code == 200
    assert raw.headers["content-type"] == "message/rfc822"
    assert raw.headers["content-disposition"].startswith("attachment")
    [kept] = [path async for path in anyio.Path(tmp_path).glob("*.eml")]
    assert raw.content == await kept.read_bytes()


async def test_only_kept_mails_are_served(start_app: AppFactory, tmp_path: Path) -> None:
    (tmp_path.parent / "secret.eml").write_text("Subject: not in the mailbox\n\nx")
    client = await start_app(mail_backend=MailBackend.MAILBOX, mailbox_dir=tmp_path)
    for path in (
        "/dev/mailbox/nothing.eml",
        "/dev/mailbox/..%2Fsecret.eml",
        "/dev/mailbox/..%2Fsecret.eml/raw",
        "/dev/mailbox/secret.txt",
    ):
        assert (await client.get(path)).status_code == 404, path
