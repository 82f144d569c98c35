"""/console over HTTP (in process): the session cookie's promises, CSRF on every form, who may
change what, the masked preview, and TEGAMI_CONSOLE=false. The browser flows are in
test_browser.py."""

from __future__ import annotations

import re

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api_keys import create_key, revoke_key
from app.console import session as console_session
from app.db import create_sessionmaker
from app.models import ApiKeyScope
from tests.conftest import AppFactory
from tests.fake_ses import FakeSes
from tests.support.conftest import Desk


@pytest.fixture(autouse=True)
def _ses_with_suppression_list(ses_account_for_the_app: FakeSes | None) -> FakeSes | None:
    return ses_account_for_the_app


async def new_key(engine: AsyncEngine, scope: ApiKeyScope, name: str) -> str:
    async with create_sessionmaker(engine)() as db:
        key = await create_key(db, name=name, scope=scope)
        await db.commit()
    return key


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


async def sign_in(client: httpx.AsyncClient, key: str) -> httpx.Response:
    form = await client.get("/console")
    return await client.post("/console/sign-in", data={"key": key, "csrf": csrf_of(form.text)})


async def test_sign_in_sets_a_safe_session_cookie_and_never_echoes_the_key(
    client: httpx.AsyncClient, api_key: str
) -> None:
    answer = await sign_in(client, api_key)

    assert answer.status_code == 303 and answer.headers["location"] == "/console"
    cookie = next(
        c for c in answer.headers.get_list("set-cookie") if c.startswith("tegami_console=")
    )
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=strict" in cookie
    assert "Max-Age=28800" in cookie and "Path=/console" in cookie
    assert api_key not in cookie
    home = await client.get("/console")
    assert home.status_code == 200 and "バウンス率" in home.text and "<svg" in home.text
    assert api_key not in home.text


async def test_a_wrong_or_app_key_cannot_sign_in(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    wrong = await sign_in(client, "tgm_not-a-key")
    assert wrong.status_code == 401 and "正しくありません" in wrong.text
    app_key = await new_key(engine, ApiKeyScope.APP, "the-app")
    refused = await sign_in(client, app_key)
    assert refused.status_code == 403 and "tegami_console=" not in str(refused.headers)


async def test_a_form_without_its_csrf_token_changes_nothing(
    client: httpx.AsyncClient, api_key: str, engine: AsyncEngine
) -> None:
    form = await client.get("/console")
    forged = await client.post("/console/sign-in", data={"key": api_key, "csrf": "forged"})
    assert forged.status_code == 403
    assert csrf_of(form.text)
    await sign_in(client, api_key)
    auth = {"Authorization": f"Bearer {api_key}"}
    await client.put("/recipients/x@example.com/suppression", json={}, headers=auth)

    lift = await client.post(
        "/console/person/lift",
        data={"address": "x@example.com", "csrf": "forged", "confirm": "yes"},
    )

    assert lift.status_code == 403
    state = (await client.get("/recipients/x@example.com", headers=auth)).json()
    assert state["suppressed"] is not None


async def test_a_revoked_key_loses_its_session(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    key = await new_key(engine, ApiKeyScope.ADMIN, "leaving")
    await sign_in(client, key)
    assert "サインアウト" in (await client.get("/console")).text
    async with create_sessionmaker(engine)() as db:
        await revoke_key(db, name="leaving")
        await db.commit()

    after = await client.get("/console/search", params={"q": "a@example.com"})

    assert after.status_code == 303 and after.headers["location"] == "/console"


async def test_only_admin_may_lift_from_the_console(
    client: httpx.AsyncClient, engine: AsyncEngine, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reader that is not admin (the `support` scope's place): app keys read, for this test.
    monkeypatch.setattr(console_session, "READERS", frozenset({"admin", "support", "app"}))
    reader = await new_key(engine, ApiKeyScope.APP, "reader")
    auth = {"Authorization": f"Bearer {api_key}"}
    await client.put("/recipients/x@example.com/suppression", json={}, headers=auth)
    await sign_in(client, reader)
    page = await client.get("/console/person", params={"address": "x@example.com"})
    assert "配信停止中" in page.text and "配信停止を解除する" not in page.text

    lift = await client.post(
        "/console/person/lift",
        data={"address": "x@example.com", "csrf": csrf_of(page.text), "confirm": "yes"},
    )

    assert lift.status_code == 403 and "管理者" in lift.text
    state = (await client.get("/recipients/x@example.com", headers=auth)).json()
    assert state["suppressed"] is not None


async def test_the_mail_page_masks_link_tokens(client: httpx.AsyncClient, api_key: str) -> None:
    auth = {"Authorization": f"Bearer {api_key}"}
    sent = await client.post(
        "/emails/password-reset",
        json={"to": "t@example.com", "params": {"reset_url": "https://proworks.jp/reset?token=s3cr3t-token"}},
        headers=auth,
    )  # fmt: skip
    await sign_in(client, api_key)

    page = await client.get(f"/console/mail/{sent.json()['id']}")

    assert page.status_code == 200 and "パスワードのリセット" in page.text
    assert "s3cr3t" not in page.text and "token=***" in page.text
    assert page.headers["cache-control"] == "no-store"


async def test_console_off_is_404(start_app: AppFactory) -> None:
    client = await start_app(console=False)
    assert (await client.get("/console")).status_code == 404
    assert (await client.post("/console/sign-in")).status_code == 404


async def test_home_charts_the_bounce_rate_of_the_day_and_week(desk: Desk) -> None:
    _, ses_id = await desk.sent("gone@example.com")
    await desk.ses("eventpub-bounce-permanent-general.json", "gone@example.com", ses_id)
    await desk.sent("fine@example.com")
    await sign_in(desk.client, desk.auth["Authorization"].removeprefix("Bearer "))

    home = (await desk.client.get("/console")).text

    assert "直近24時間: 送信 2通、バウンス率 50.00%、苦情率 0.000%" in home
    assert "直近7日間: 送信 2通、バウンス率 50.00%" in home
    assert home.count("<svg") == 2 and "<script" not in home


async def test_a_persons_page_shows_the_bounce_diagnostic_and_admin_erases(desk: Desk) -> None:
    email_id, ses_id = await desk.sent("gone@example.com")
    await desk.ses("notif-bounce-permanent-general-with-dsn.json", "gone@example.com", ses_id)
    await sign_in(desk.client, desk.auth["Authorization"].removeprefix("Bearer "))
    page = await desk.client.get("/console/search", params={"q": "GONE@example.com"})
    assert page.status_code == 200
    assert "バウンス" in page.text and "宛先不明（ハードバウンス）" in page.text
    assert "550" in page.text and email_id in page.text

    unconfirmed = await desk.client.post(
        "/console/person/erase", data={"address": "gone@example.com", "csrf": csrf_of(page.text)}
    )
    assert "確認のチェック" in unconfirmed.text
    erased = await desk.client.post(
        "/console/person/erase",
        data={"address": "gone@example.com", "csrf": csrf_of(page.text), "confirm": "yes"},
    )

    assert "個人データを消去しました" in erased.text and "データ消去済み" in erased.text
    shown = (await desk.client.get(f"/emails/{email_id}", headers=desk.auth)).json()
    assert shown["to"] is None


async def test_admin_releases_and_discards_held_mail(desk: Desk) -> None:
    first = await desk.send("a@example.com", "matching-notification")
    second = await desk.send("b@example.com", "matching-notification")
    await desk.hold_optional()
    await sign_in(desk.client, desk.auth["Authorization"].removeprefix("Bearer "))
    page = await desk.client.get("/console/held")
    assert first in page.text and second in page.text
    csrf = csrf_of(page.text)

    released = await desk.client.post(
        "/console/held/release", data={"csrf": csrf, "ids": [first], "confirm": "yes"}
    )
    discarded = await desk.client.post(
        "/console/held/discard", data={"csrf": csrf, "ids": [second], "confirm": "yes"}
    )

    assert "1通を送信待ちに戻しました" in released.text
    assert "1通を破棄しました" in discarded.text
    statuses = [
        (await desk.client.get(f"/emails/{i}", headers=desk.auth)).json()["status"]
        for i in (first, second)
    ]
    assert statuses == ["queued", "failed"]
