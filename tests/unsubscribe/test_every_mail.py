"""The unsubscribe link of every mail works: each type is sent through the app to moto's SES,
its raw MIME parsed, and every link in it (List-Unsubscribe, the text body, the HTML body)
followed as a person (GET) and as Gmail's or Yahoo's one-click (RFC 8058 POST) would."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx
import pytest

from tests.ses import MotoSes, ReceivedMail

PARAMS = {
    "verify-email": {"verification_url": "https://proworks.jp/verify?token=v1"},
    "password-reset": {"reset_url": "https://proworks.jp/reset?token=r1"},
    "email-change": {"verification_url": "https://proworks.jp/email/confirm?token=c1"},
    "matching-notification": {"job_url": "https://proworks.jp/jobs/1"},
}
ONE_CLICK = {"List-Unsubscribe": "One-Click"}
LINK = re.compile(r"https://mail\.proworks\.jp/unsubscribe/[A-Za-z0-9_-]+")


async def send(
    client: httpx.AsyncClient, auth: dict[str, str], kind: str, to: str
) -> httpx.Response:
    return await client.post(
        f"/emails/{kind}", json={"to": to, "params": PARAMS[kind]}, headers=auth
    )


async def sent_mail(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes, kind: str, to: str
) -> ReceivedMail:
    assert (await send(client, auth, kind, to)).status_code == 202
    await client.app.state.worker.drain()  # type: ignore[attr-defined]
    return next(m for m in reversed(ses.sent()) if m.message["To"] == to)


def links_of(mail: ReceivedMail) -> dict[str, str]:
    """Every unsubscribe link in the mail, by where it is (paths only: the test client is
    the service at https://mail.proworks.jp)."""
    message = mail.message
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    header = str(message["List-Unsubscribe"])
    assert header.startswith("<") and header.endswith(">")
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    [in_text] = LINK.findall(text.get_content())
    in_html = re.findall(r'href="([^"]+/unsubscribe/[^"]+)"', html.get_content())
    assert len(in_html) == 1
    found = {"header": header[1:-1], "text": in_text, "html": in_html[0]}
    for url in found.values():
        assert LINK.fullmatch(url), url
    return {where: urlsplit(url).path for where, url in found.items()}


@pytest.mark.parametrize("kind", list(PARAMS))
async def test_every_link_of_every_mail_opens_the_page_and_one_click_opts_out(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes, kind: str
) -> None:
    to = "taro@example.com"
    links = links_of(await sent_mail(client, auth, ses, kind, to))

    for where, link in links.items():
        page = await client.get(link)
        assert page.status_code == 200, (where, page.text)
        # It says what the button stops, and that account mail keeps coming.
        assert "「案件のお知らせ」" in page.text and "案件のお知らせの配信を停止する" in page.text
        assert "アカウントに関するメール" in page.text and "引き続き届きます" in page.text
    state = (await client.get(f"/recipients/{to}", headers=auth)).json()
    assert state["opt_outs"] == []  # looking changes nothing

    # Gmail's one-click posts to the header's URL; a person may use either body link too.
    for where in ("header", "text", "html"):
        done = await client.post(links[where], data=ONE_CLICK)
        assert done.status_code == 200, (where, done.text)
        assert "案件のお知らせの配信を停止しました" in done.text
        assert "引き続き届きます" in done.text

    state = (await client.get(f"/recipients/{to}", headers=auth)).json()
    assert [o["category"] for o in state["opt_outs"]] == ["matching"]
    assert state["opt_outs"][0]["cause"].startswith("unsubscribe:")
    assert [e["action"] for e in state["history"]] == ["opted_out"]

    # Matching notifications stop; account mail keeps flowing.
    refused = await send(client, auth, "matching-notification", to)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "opted_out"
    reset = await sent_mail(client, auth, ses, "password-reset", to)
    assert reset.message["Subject"] == "【PRO WORKS】パスワードのリセット"

    again = await client.get(links["header"])
    assert again.status_code == 200
    assert "案件のお知らせの配信はすでに停止しています" in again.text


async def test_a_matching_notification_already_queued_is_stopped_by_an_account_mails_link(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes
) -> None:
    to = "hanako@example.com"
    links = links_of(await sent_mail(client, auth, ses, "verify-email", to))
    queued = await send(client, auth, "matching-notification", to)
    assert queued.status_code == 202

    assert (await client.post(links["header"], data=ONE_CLICK)).status_code == 200
    await client.app.state.worker.drain()  # type: ignore[attr-defined]

    shown = (await client.get(f"/emails/{queued.json()['id']}", headers=auth)).json()
    assert shown["status"] == "failed"
    assert [m.message["Subject"] for m in ses.sent() if m.message["To"] == to] == [
        "【PRO WORKS】メールアドレスの確認"
    ]
