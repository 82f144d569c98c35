"""Opting back in is consent: only the done page's own form, from this site, within the hour.

Every test starts from a matching notification in moto's SES, follows its List-Unsubscribe
link as a person does (the page, its button, the done page), and then tries the way back.
"""

from __future__ import annotations

import re
import time
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from app.unsubscribe.tokens import make_resubscribe_nonce, read_token
from tests.conftest import AppFactory
from tests.ses import MotoSes
from tests.sns_messages import Sns, ses_event

OLD_SECRET = "test-unsubscribe-secret-0123456789"  # the one tests/conftest.py signs with
NEW_SECRET = "the-new-unsubscribe-secret-987654"
JOB = {"job_url": "https://proworks.jp/jobs/42"}
RESET = {"reset_url": "https://proworks.jp/reset?token=r1"}
# What a browser adds to the page's own form post.
SAME_ORIGIN = {"Origin": "https://mail.proworks.jp", "Sec-Fetch-Site": "same-origin"}


async def send(
    client: httpx.AsyncClient, auth: dict[str, str], kind: str, to: str
) -> httpx.Response:
    params = JOB if kind == "matching-notification" else RESET
    return await client.post(f"/emails/{kind}", json={"to": to, "params": params}, headers=auth)


async def mailed_link(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes, to: str
) -> str:
    """The path of the List-Unsubscribe link of a matching notification sent to ``to``."""
    assert (await send(client, auth, "matching-notification", to)).status_code == 202
    await client.app.state.worker.drain()  # type: ignore[attr-defined]
    mail = next(m for m in reversed(ses.sent()) if m.message["To"] == to)
    return urlsplit(str(mail.message["List-Unsubscribe"]).strip("<>")).path


def only_form(page: httpx.Response, base: str) -> tuple[str, dict[str, str]]:
    """The page's one form: where it posts, and its hidden fields."""
    assert page.text.count("<form") == 1
    found = re.search(r'<form method="post"(?: action="([^"]*)")?>', page.text)
    assert found is not None
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text))
    return urljoin(base, found.group(1) or ""), fields


async def opt_out_through_the_page(client: httpx.AsyncClient, link: str) -> httpx.Response:
    """GET the page, press its button: the done page."""
    page = await client.get(link)
    assert page.status_code == 200
    action, fields = only_form(page, link)
    assert action == link and fields == {}
    done = await client.post(action, data=fields, headers=SAME_ORIGIN)
    assert done.status_code == 200
    assert "配信を停止しました" in done.text
    return done


async def opt_outs(client: httpx.AsyncClient, auth: dict[str, str], to: str) -> list[str]:
    state = (await client.get(f"/recipients/{to}", headers=auth)).json()
    return [o["category"] for o in state["opt_outs"]]


async def test_the_done_pages_button_opts_back_in(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes
) -> None:
    to = "taro@example.com"
    link = await mailed_link(client, auth, ses, to)
    done = await opt_out_through_the_page(client, link)
    assert done.headers["referrer-policy"] == "same-origin"
    assert await opt_outs(client, auth, to) == ["matching"]

    action, fields = only_form(done, link)
    assert action == f"{link}/resubscribe" and set(fields) == {"nonce"}
    resumed = await client.post(action, data=fields, headers=SAME_ORIGIN)
    assert resumed.status_code == 200
    assert "案件のお知らせの配信を再開しました" in resumed.text
    assert resumed.headers["referrer-policy"] == "same-origin"

    assert await opt_outs(client, auth, to) == []
    assert (await send(client, auth, "matching-notification", to)).status_code == 202
    # Opting out again stays one step: the resubscribed page's button.
    again, fields = only_form(resumed, action)
    assert again == link and fields == {}
    assert (await client.post(again, headers=SAME_ORIGIN)).status_code == 200
    assert await opt_outs(client, auth, to) == ["matching"]


async def test_the_already_stopped_page_gives_a_working_button_too(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes
) -> None:
    # A person who opted out yesterday opens the link again: the page's button still works
    # (and a client that sends no Origin or Sec-Fetch-Site is judged by the nonce alone).
    to = "taro@example.com"
    link = await mailed_link(client, auth, ses, to)
    assert (await client.post(link, data={"List-Unsubscribe": "One-Click"})).status_code == 200
    page = await client.get(link)
    assert "すでに停止しています" in page.text
    action, fields = only_form(page, link)
    assert (await client.post(action, data=fields)).status_code == 200
    assert await opt_outs(client, auth, to) == []


async def refused(answer: httpx.Response) -> None:
    assert answer.status_code == 403, answer.text
    assert "配信を再開できませんでした" in answer.text
    assert "配信の設定は変わっていません" in answer.text
    assert "taro" not in answer.text


@pytest.mark.parametrize(
    "forgery",
    [
        pytest.param({}, id="the-old-link-alone"),
        pytest.param({"data": {"nonce": ""}}, id="empty-nonce"),
        pytest.param({"data": {"nonce": "9999999999.AAAAAAAAAAAAAAAAAAAAAA"}}, id="made-up"),
        pytest.param(
            {"data": {"nonce": "EXPIRED"}, "headers": SAME_ORIGIN}, id="expired-an-hour-ago"
        ),
        pytest.param({"data": {"nonce": "OTHER"}, "headers": SAME_ORIGIN}, id="another-links"),
        pytest.param(
            {"data": {"nonce": "VALID"}, "headers": {"Origin": "https://evil.example"}},
            id="cross-site-origin",
        ),
        pytest.param(
            {"data": {"nonce": "VALID"}, "headers": {"Origin": "null"}}, id="hidden-origin"
        ),
        pytest.param(
            {"data": {"nonce": "VALID"}, "headers": {"Sec-Fetch-Site": "cross-site"}},
            id="sec-fetch-site-cross-site",
        ),
        pytest.param(
            {
                "data": {"nonce": "VALID"},
                "headers": {"Origin": "https://proworks.jp", "Sec-Fetch-Site": "same-site"},
            },
            id="same-site-not-same-origin",
        ),
    ],
)
async def test_anything_but_the_pages_own_form_is_refused_and_the_opt_out_stays(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    ses: MotoSes,
    forgery: dict[str, dict[str, str]],
) -> None:
    to = "taro@example.com"
    link = await mailed_link(client, auth, ses, to)
    done = await opt_out_through_the_page(client, link)
    token = link.rsplit("/", 1)[1]
    other_link = await mailed_link(client, auth, ses, "jiro@example.com")
    other_done = await opt_out_through_the_page(client, other_link)
    nonces = {
        "VALID": only_form(done, link)[1]["nonce"],
        "OTHER": only_form(other_done, other_link)[1]["nonce"],
        "EXPIRED": make_resubscribe_nonce(
            token, expires_at=int(time.time()) - 1, secret=OLD_SECRET
        ),
    }
    data = {k: nonces.get(v, v) for k, v in forgery.get("data", {}).items()}

    answer = await client.post(
        f"{link}/resubscribe", data=data or None, headers=forgery.get("headers")
    )
    await refused(answer)

    assert await opt_outs(client, auth, to) == ["matching"]
    blocked = await send(client, auth, "matching-notification", to)
    assert blocked.status_code == 409
    state = (await client.get(f"/recipients/{to}", headers=auth)).json()
    assert [e["action"] for e in state["history"]] == ["opted_out"]


# -- promises no test pinned before ---------------------------------------------------------


async def test_opting_back_in_never_lifts_a_hard_bounce_suppression(
    sns: Sns, auth: dict[str, str], ses: MotoSes
) -> None:
    client = sns.client
    to = "taro@example.com"
    link = await mailed_link(client, auth, ses, to)
    done = await opt_out_through_the_page(client, link)
    await sns.deliver(ses_event("eventpub-bounce-permanent-general.json", to=to))

    # The page's button: the opt-out goes, the suppression stays.
    action, fields = only_form(done, link)
    assert (await client.post(action, data=fields, headers=SAME_ORIGIN)).status_code == 200
    state = (await client.get(f"/recipients/{to}", headers=auth)).json()
    assert state["opt_outs"] == []
    assert state["suppressed"]["reason"] == "hard_bounce"

    # The app's settings screen, after opting out again.
    assert (await client.put(f"/recipients/{to}/opt-outs/matching", headers=auth)).status_code
    lifted = await client.delete(f"/recipients/{to}/opt-outs/matching", headers=auth)
    assert lifted.status_code == 200
    assert lifted.json()["opt_outs"] == []
    assert lifted.json()["suppressed"]["reason"] == "hard_bounce"

    for kind in ("matching-notification", "password-reset"):
        answer = await send(client, auth, kind, to)
        assert answer.status_code == 409, kind
        assert answer.json()["error"]["code"] == "suppressed"


async def test_new_links_are_signed_with_the_first_secret_and_outlive_the_old_one(
    start_app: AppFactory, auth: dict[str, str], ses: MotoSes
) -> None:
    # Rotation, step one: the new secret first, the old one still read.
    during = await start_app(unsubscribe_secret=[NEW_SECRET, OLD_SECRET])
    link = await mailed_link(during, auth, ses, "taro@example.com")
    assert read_token(link.rsplit("/", 1)[1], secrets=[NEW_SECRET]) is not None

    # Step two: the old secret dropped. The link mailed in between still works.
    after = await start_app(unsubscribe_secret=[NEW_SECRET])
    page = await after.get(link)
    assert page.status_code == 200
    assert "案件のお知らせの配信を停止する" in page.text
    done = await after.post(link, data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200
    assert (await send(after, auth, "matching-notification", "taro@example.com")).status_code == 409
