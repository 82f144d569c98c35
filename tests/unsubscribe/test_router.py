"""GET and POST /unsubscribe/{token}, with the link taken from a mail moto's SES received."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from app.unsubscribe.tokens import UnsubscribeClaim, make_token
from tests.conftest import AppFactory
from tests.ses import MotoSes

JOB = {"job_url": "https://proworks.jp/jobs/42"}
RESET = {"reset_url": "https://proworks.jp/reset?token=r1"}
ONE_CLICK = {"List-Unsubscribe": "One-Click"}
OLD_SECRET = "test-unsubscribe-secret-0123456789"  # the one tests/conftest.py signs with


async def send(
    client: httpx.AsyncClient, auth: dict[str, str], kind: str, to: str = "taro@example.com"
) -> httpx.Response:
    params = JOB if kind == "matching-notification" else RESET
    return await client.post(f"/emails/{kind}", json={"to": to, "params": params}, headers=auth)


async def drain(client: httpx.AsyncClient) -> None:
    await client.app.state.worker.drain()  # type: ignore[attr-defined]


async def unsubscribe_link(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes, to: str = "taro@example.com"
) -> str:
    """The path of the List-Unsubscribe link in a matching notification sent to ``to``."""
    assert (await send(client, auth, "matching-notification", to)).status_code == 202
    await drain(client)
    mail = next(m for m in reversed(ses.sent()) if m.message["To"] == to)
    url = str(mail.message["List-Unsubscribe"]).strip("<>")
    assert url.startswith("https://mail.proworks.jp/unsubscribe/")
    return urlsplit(url).path


def assert_hardened(answer: httpx.Response) -> None:
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.headers["cache-control"] == "no-store"
    # Same-origin, not no-referrer: the page's own resubscribe form must carry its Origin.
    assert answer.headers["referrer-policy"] == "same-origin"
    assert answer.headers["x-frame-options"] == "DENY"
    csp = answer.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "form-action 'self'" in csp
    assert "script-src" not in csp and "unsafe-inline" not in csp
    # The page's one style block is the one the policy allows: the page is not unstyled.
    style = re.search(r"<style>(.*?)</style>", answer.text, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in csp


async def test_page_offers_one_button_and_changes_nothing(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes
) -> None:
    link = await unsubscribe_link(client, auth, ses)

    for _ in range(2):  # a link scanner, then the person
        page = await client.get(link)
        assert page.status_code == 200
        assert_hardened(page)
        assert '<html lang="ja">' in page.text
        assert page.text.count("<form") == 1 and '<form method="post">' in page.text
        assert "案件のお知らせの配信を停止する" in page.text
        # It says that account mail keeps coming.
        assert "アカウントに関するメール" in page.text and "引き続き届きます" in page.text
        assert "<script" not in page.text

    assert (await send(client, auth, "matching-notification")).status_code == 202
    state = (await client.get("/recipients/taro@example.com", headers=auth)).json()
    assert state["opt_outs"] == []


async def test_one_click_post_stops_matching_mail_but_not_account_mail(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes
) -> None:
    link = await unsubscribe_link(client, auth, ses)

    done = await client.post(link, data=ONE_CLICK)
    assert done.status_code == 200
    assert_hardened(done)
    assert "案件のお知らせの配信を停止しました" in done.text

    refused = await send(client, auth, "matching-notification")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "opted_out"

    accepted = await send(client, auth, "password-reset")
    assert accepted.status_code == 202
    await drain(client)
    assert ses.sent()[-1].message["Subject"] == "【PRO WORKS】パスワードのリセット"
    assert ses.sent()[-1].message["To"] == "taro@example.com"

    again = await client.get(link)
    assert again.status_code == 200
    assert "すでに停止しています" in again.text
    # One form, and it undoes (the done page's 「配信を再開する」), never opts out again.
    assert again.text.count("<form") == 1 and "/resubscribe" in again.text


@pytest.mark.parametrize(
    "request_kwargs",
    [
        pytest.param({}, id="page-button-empty-form"),
        pytest.param({"data": ONE_CLICK}, id="one-click-urlencoded"),
        pytest.param(
            {
                "content": (
                    b'--xyz\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
                    b"One-Click\r\n--xyz--\r\n"
                ),
                "headers": {"Content-Type": "multipart/form-data; boundary=xyz"},
            },
            id="one-click-multipart",
        ),
        pytest.param({"content": b"\xff\x00garbage"}, id="any-body"),
    ],
)
async def test_every_kind_of_post_opts_out_once_and_repeats_are_harmless(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    ses: MotoSes,
    request_kwargs: dict[str, Any],
) -> None:
    link = await unsubscribe_link(client, auth, ses)
    token = link.rsplit("/", 1)[1]

    for _ in range(3):
        answer = await client.post(link, **request_kwargs)
        assert answer.status_code == 200
        assert "配信を停止しました" in answer.text

    state = (await client.get("/recipients/taro@example.com", headers=auth)).json()
    [opt_out] = state["opt_outs"]
    assert opt_out["category"] == "matching"
    assert opt_out["cause"].startswith("unsubscribe:")
    assert token not in opt_out["cause"]  # a working link is never stored
    assert [event["action"] for event in state["history"]] == ["opted_out"]


def edited(token: str) -> str:
    middle = len(token) // 2
    return token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_forged_or_edited_token_is_a_404_page_naming_no_address(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes, method: str
) -> None:
    link = await unsubscribe_link(client, auth, ses)
    token = link.rsplit("/", 1)[1]
    recipient_id = 1  # the only recipient of this test's fresh database
    forged = make_token(
        UnsubscribeClaim(recipient_id=recipient_id, category="matching", issued_at=0),
        secret="an-attacker-s-own-secret-0123",
    )
    for bad in (edited(token), forged, token[:-2], "x" * 5000, "%00", token + "A"):
        answer = await client.request(method, f"/unsubscribe/{bad}", data=ONE_CLICK)
        assert answer.status_code == 404, bad
        assert_hardened(answer)
        assert "このリンクは無効です" in answer.text
        assert "taro" not in answer.text and "example.com" not in answer.text

    assert (await send(client, auth, "matching-notification")).status_code == 202


async def test_pages_link_the_contact_and_spell_as_the_mails_do(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes
) -> None:
    link = await unsubscribe_link(client, auth, ses)
    path = urlsplit(link).path
    for answer in (
        await client.get(path),
        await client.post(path, data=ONE_CLICK),
        await client.get("/unsubscribe/not-a-token"),
    ):
        assert 'お問い合わせ先: <a href="mailto:support@proworks.jp">' in answer.text
        assert "お客さま" not in answer.text and "：" not in answer.text


async def test_link_of_an_unknown_recipient_is_a_404(client: httpx.AsyncClient) -> None:
    # Signed with the real secret, for a recipient that never existed.
    token = make_token(
        UnsubscribeClaim(recipient_id=999_999, category="matching", issued_at=0),
        secret=OLD_SECRET,
    )
    assert (await client.get(f"/unsubscribe/{token}")).status_code == 404
    assert (await client.post(f"/unsubscribe/{token}", data=ONE_CLICK)).status_code == 404


async def test_link_of_an_erased_recipient_is_a_404(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes
) -> None:
    link = await unsubscribe_link(client, auth, ses)
    assert (await client.delete("/recipients/taro@example.com", headers=auth)).status_code == 200

    page = await client.get(link)
    assert page.status_code == 404
    assert "taro" not in page.text
    assert (await client.post(link, data=ONE_CLICK)).status_code == 404


async def test_links_signed_with_a_rotated_out_secret_still_work(
    start_app: AppFactory, auth: dict[str, str], ses: MotoSes
) -> None:
    before = await start_app()
    link = await unsubscribe_link(before, auth, ses)

    after = await start_app(unsubscribe_secret=["the-new-unsubscribe-secret-987654", OLD_SECRET])
    assert (await after.post(link, data=ONE_CLICK)).status_code == 200
    assert (await send(after, auth, "matching-notification")).status_code == 409
