"""The console's flows in a real browser: Playwright driving the distribution's Chromium
(/usr/bin/chromium, installed by .ci/run) against `tegami serve` in its own process. Signs in,
searches an address, reads the verdict, lifts a suppression as admin, is refused it with a key
that is not admin; screenshots at desktop and phone width go to tests/artifacts/."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.models import ApiKeyScope
from tests.served import PROJECT, ServedTegami

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = PROJECT / "tests" / "artifacts"
# The reader that is not admin: `support` once that scope exists, an `app` key until then
# (refused at the sign-in itself).
NON_ADMIN = "support" if "support" in {s.value for s in ApiKeyScope} else "app"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"
)


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[ServedTegami]:
    tegami = ServedTegami(database_url, tmp_path).start()
    yield tegami
    tegami.stop()


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield browser
        browser.close()


def sign_in(page: object, url: str, key: str) -> None:
    page.goto(f"{url}/console")  # type: ignore[attr-defined]
    page.get_by_label("APIキー（support または admin）").fill(key)  # type: ignore[attr-defined]
    page.get_by_role("button", name="サインイン").click()  # type: ignore[attr-defined]


def test_support_desk_flows_in_chromium(served: ServedTegami, browser: object) -> None:
    from playwright.sync_api import Browser, expect

    assert isinstance(browser, Browser)
    ARTIFACTS.mkdir(exist_ok=True)
    run = secrets.token_hex(3)
    admin = served.cli("api-key", "create", f"console-admin-{run}", "--scope", "admin")
    reader = served.cli("api-key", "create", f"console-reader-{run}", "--scope", NON_ADMIN)
    address = f"taro.{run}@docomo.ne.jp"
    auth = {"Authorization": f"Bearer {admin}"}
    with httpx.Client(base_url=served.url, headers=auth) as api:
        sent = api.post(
            "/emails/password-reset",
            json={"to": address, "params": {"reset_url": "https://proworks.jp/reset?token=t0k"}},
        )
        assert sent.status_code == 202, sent.text
        suppressed = api.put(f"/recipients/{address}/suppression", json={"detail": "電話で依頼"})
        assert suppressed.status_code == 200, suppressed.text

    # Desktop, admin: sign in, search the address, read the verdict, lift the suppression.
    desktop = browser.new_context(viewport={"width": 1280, "height": 900}, locale="ja-JP")
    page = desktop.new_page()
    sign_in(page, served.url, admin)
    expect(page.get_by_role("heading", name="メールの検索")).to_be_visible()
    assert page.locator("svg.chart").count() == 2
    assert admin not in page.content()
    page.get_by_label("検索").fill(address.upper())
    page.get_by_role("button", name="検索", exact=True).click()
    verdict = page.locator("#verdict")
    expect(verdict).to_contain_text("配信停止中")
    expect(verdict).to_contain_text("手作業")
    expect(page.locator("#suppression")).to_contain_text("電話で依頼")
    page.screenshot(path=str(ARTIFACTS / "console-person-1280.png"), full_page=True)
    page.get_by_label("アドレスが使えることを確認しました").check()
    page.get_by_role("button", name="配信停止を解除する").click()
    expect(page.get_by_role("status")).to_contain_text("配信停止を解除しました")
    expect(page.locator("#suppression")).to_contain_text("配信停止されていません")
    expect(page.locator("#verdict")).not_to_contain_text("配信停止中")
    with httpx.Client(base_url=served.url, headers=auth) as api:
        assert api.get(f"/recipients/{address}").json()["suppressed"] is None
    desktop.close()

    # Phone width, admin: the same page reads without sideways scrolling.
    phone = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, locale="ja-JP"
    )
    page = phone.new_page()
    sign_in(page, served.url, admin)
    page.goto(f"{served.url}/console/person?address={address}")
    expect(page.locator("#verdict")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(ARTIFACTS / "console-person-390.png"), full_page=True)
    page.goto(f"{served.url}/console")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(ARTIFACTS / "console-home-390.png"), full_page=True)
    phone.close()

    # A key that is not admin: refused the lift.
    with httpx.Client(base_url=served.url, headers=auth) as api:
        api.put(f"/recipients/{address}/suppression", json={})
    other = browser.new_context(viewport={"width": 390, "height": 844}, locale="ja-JP")
    page = other.new_page()
    sign_in(page, served.url, reader)
    if NON_ADMIN == "support":
        page.goto(f"{served.url}/console/person?address={address}")
        expect(page.locator("#verdict")).to_contain_text("配信停止中")
        assert page.get_by_role("button", name="配信停止を解除する").count() == 0
        csrf = page.locator('input[name="csrf"]').first.get_attribute("value")
        refused = page.request.post(
            f"{served.url}/console/person/lift",
            form={"address": address, "csrf": csrf or "", "confirm": "yes"},
        )
        assert refused.status == 403
    else:
        expect(page.get_by_role("alert")).to_contain_text("support または admin キーが必要")
        refused = page.request.post(
            f"{served.url}/console/person/lift",
            form={"address": address, "csrf": "x", "confirm": "yes"},
            max_redirects=0,
        )
        assert refused.status == 303  # no session: back to the sign-in
    page.screenshot(path=str(ARTIFACTS / "console-refused-390.png"), full_page=True)
    other.close()
    with httpx.Client(base_url=served.url, headers=auth) as api:
        assert api.get(f"/recipients/{address}").json()["suppressed"] is not None
