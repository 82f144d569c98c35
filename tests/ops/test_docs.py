"""/docs and /redoc work with no internet: every asset they load is served by tegami itself."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import AppFactory

CONTENT_TYPES = {
    ".js": ("application/javascript", "text/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
    ".json": ("application/json",),
}


def referenced_urls(page: str) -> list[str]:
    """Every URL the page loads: script and link tags, and the OpenAPI document it fetches."""
    return re.findall(r"""(?:src|href)=["']([^"']+)["']""", page) + re.findall(
        r"""(?:url:|spec-url=)\s*["']([^"']+)["']""", page
    )


@pytest.mark.parametrize(("page", "needs"), [("/docs", "SwaggerUIBundle"), ("/redoc", "<redoc")])
async def test_docs_pages_load_only_assets_tegami_serves(
    client: httpx.AsyncClient, page: str, needs: str
) -> None:
    answer = await client.get(page)
    assert answer.status_code == 200
    assert needs in answer.text

    urls = referenced_urls(answer.text)
    assert any(url.endswith(".js") for url in urls), urls
    assert "/openapi.json" in urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url} from afar"
        asset = await client.get(url)
        assert asset.status_code == 200, url
        suffix = url[url.rfind(".") :]
        assert asset.headers["content-type"].split(";")[0] in CONTENT_TYPES[suffix], url
        assert len(asset.content) > 100, url


async def test_docs_false_serves_no_docs_and_no_document(start_app: AppFactory) -> None:
    client = await start_app(docs=False)
    for path in ("/docs", "/redoc", "/openapi.json", "/static-offline-docs/swagger-ui.css"):
        answer = await client.get(path)
        assert answer.status_code == 404, path
        assert answer.json()["error"]["code"] == "not_found"
    assert (await client.get("/healthz")).status_code == 200
