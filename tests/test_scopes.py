"""What each scope may do, over every route of the app: `admin`, `app`, `support`, `test`.

``MATRIX`` has one row per route the app serves (found from its router, with the dev mailbox's
routes too): the permission it needs and the scopes that have it, or that it takes no API key.
A new route without a row fails ``test_every_route_has_a_row``; a route whose dependency is
not the row's permission fails ``test_each_route_needs_the_permission_of_its_row``; and each
row is walked over HTTP with a key of each scope.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api_keys import PERMISSIONS, create_key, require_caller, required_permission
from app.config import MailBackend
from app.db import create_sessionmaker
from app.main import create_app
from app.models import ApiKeyScope, Permission
from app.status.router import SetupRead, _SetupCache
from tests.conftest import make_settings
from tests.emails.test_router import LINKS, body

# The suppression list's lift and erase reach SES's account list (tests/fake_ses.py).
pytestmark = pytest.mark.usefixtures("ses_account")

ADMIN, APP, SUPPORT, TEST = (
    ApiKeyScope.ADMIN,
    ApiKeyScope.APP,
    ApiKeyScope.SUPPORT,
    ApiKeyScope.TEST,
)
SCOPES = (ADMIN, APP, SUPPORT, TEST)


@dataclass(frozen=True)
class Keyed:
    """A route for API keys: the permission it needs, and which scopes get through."""

    permission: Permission
    allowed: frozenset[ApiKeyScope]


@dataclass(frozen=True)
class Open:
    """A route that takes no API key; ``why`` says what guards it instead."""

    why: str


def keyed(permission: Permission, *scopes: ApiKeyScope) -> Keyed:
    return Keyed(permission, frozenset(scopes))


KINDS = ("verify-email", "password-reset", "email-change", "matching-notification")
SEND = keyed(Permission.SEND, ADMIN, APP, TEST)

# The console signs in with a support or admin key and then carries a signed session cookie;
# app.console.session says who may read and who may change (tests/console walk both).
CONSOLE = "session cookie: support/admin key"

MATRIX: dict[tuple[str, str], Keyed | Open] = {
    **{("POST", f"/emails/{kind}"): SEND for kind in KINDS},
    **{("POST", f"/emails/{kind}/batch"): SEND for kind in KINDS},
    **{("POST", f"/emails/{kind}/preview"): SEND for kind in KINDS},
    ("DELETE", "/emails/{id}"): SEND,
    ("GET", "/emails/{id}"): keyed(Permission.READ_MAIL, ADMIN, APP, SUPPORT, TEST),
    ("GET", "/recipients/{email}"): keyed(Permission.READ_RECIPIENTS, ADMIN, APP, SUPPORT),
    ("GET", "/emails"): keyed(Permission.READ_MAIL, ADMIN, APP, SUPPORT, TEST),
    ("GET", "/recipients/{email}/why"): keyed(Permission.READ_RECIPIENTS, ADMIN, APP, SUPPORT),
    ("PUT", "/recipients/{email}/opt-outs/{category}"): keyed(Permission.OPT_OUT, ADMIN, APP),
    ("DELETE", "/recipients/{email}/opt-outs/{category}"): keyed(Permission.OPT_OUT, ADMIN, APP),
    ("DELETE", "/recipients/{email}"): keyed(Permission.ERASE, ADMIN, APP),
    ("PUT", "/recipients/{email}/suppression"): keyed(Permission.SUPPRESS, ADMIN),
    ("DELETE", "/recipients/{email}/suppression"): keyed(Permission.SUPPRESS, ADMIN),
    ("GET", "/status/reputation"): keyed(Permission.STATUS, ADMIN, SUPPORT),
    ("GET", "/status/setup"): keyed(Permission.STATUS, ADMIN, SUPPORT),
    ("GET", "/webhooks/deliveries"): keyed(Permission.WEBHOOKS, ADMIN),
    ("POST", "/sns/ses-events"): Open("SNS's signature"),
    ("GET", "/unsubscribe/{token}"): Open("the link's HMAC token"),
    ("POST", "/unsubscribe/{token}"): Open("the link's HMAC token"),
    ("POST", "/unsubscribe/{token}/resubscribe"): Open("the link's HMAC token"),
    ("GET", "/healthz"): Open("says nothing but up"),
    ("GET", "/readyz"): Open("says nothing but ready"),
    ("GET", "/metrics"): Open("counts only; no addresses"),
    ("GET", "/docs"): Open("the API's documentation (TEGAMI_DOCS)"),
    ("GET", "/docs/oauth2-redirect"): Open("the API's documentation (TEGAMI_DOCS)"),
    ("GET", "/redoc"): Open("the API's documentation (TEGAMI_DOCS)"),
    ("GET", "/console"): Open(CONSOLE),
    ("POST", "/console/sign-in"): Open(CONSOLE),
    ("POST", "/console/sign-out"): Open(CONSOLE),
    ("GET", "/console/search"): Open(CONSOLE),
    ("GET", "/console/person"): Open(CONSOLE),
    ("POST", "/console/person/lift"): Open(CONSOLE),
    ("POST", "/console/person/erase"): Open(CONSOLE),
    ("GET", "/console/mail/{mail_id}"): Open(CONSOLE),
    ("GET", "/console/held"): Open(CONSOLE),
    ("POST", "/console/held/{action}"): Open(CONSOLE),
    ("GET", "/dev/mailbox"): Open("tegami dev only (TEGAMI_MAIL_BACKEND=mailbox)"),
    ("GET", "/dev/preview"): Open("tegami dev only (TEGAMI_MAIL_BACKEND=mailbox)"),
    ("GET", "/dev/mailbox/{name}"): Open("tegami dev only (TEGAMI_MAIL_BACKEND=mailbox)"),
    ("GET", "/dev/mailbox/{name}/raw"): Open("tegami dev only (TEGAMI_MAIL_BACKEND=mailbox)"),
}


def _api_routes(app: FastAPI) -> dict[tuple[str, str], Dependant]:
    """Each (method, path) the app answers with an endpoint of its own, and what that
    endpoint depends on (the included routers' dependencies too)."""
    routes: dict[tuple[str, str], Dependant] = {}
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute):
            for method in context.methods or ():
                routes[(method, str(context.path_format))] = context.dependant
    return routes


def every_route() -> dict[tuple[str, str], Dependant]:
    """Every route the app can serve: production's, and those `tegami dev` adds."""
    routes: dict[tuple[str, str], Dependant] = {}
    for backend in MailBackend:
        routes |= _api_routes(create_app(make_settings(mail_backend=backend)))
    return routes


def _calls(dependant: Dependant) -> list[Any]:
    found = []
    for sub in dependant.dependencies:
        found.append(sub.call)
        found += _calls(sub)
    return found


def test_every_route_has_a_row() -> None:
    served = set(every_route())
    assert served - set(MATRIX) == set(), "routes with no row in MATRIX: say who may call them"
    assert set(MATRIX) - served == set(), "rows for routes the app does not serve"


@pytest.mark.parametrize("route", sorted(MATRIX), ids=" ".join)
def test_each_route_needs_the_permission_of_its_row(route: tuple[str, str]) -> None:
    row = MATRIX[route]
    calls = _calls(every_route()[route])
    needed = {p for p in map(required_permission, calls) if p is not None}
    if isinstance(row, Open):
        assert needed == set()
        assert require_caller not in calls
    else:
        assert needed == {row.permission}
        # The table of scopes says the same as the row.
        assert row.allowed == {s for s in SCOPES if row.permission in PERMISSIONS[s]}


async def _key(engine: AsyncEngine, scope: ApiKeyScope, name: str | None = None) -> dict[str, str]:
    async with create_sessionmaker(engine)() as session:
        key = await create_key(session, name=name or f"{scope}-{uuid.uuid4().hex[:6]}", scope=scope)
        await session.commit()
    return {"Authorization": f"Bearer {key}"}


def _request(method: str, path: str) -> dict[str, Any]:
    """A request a caller with the permission would make (its answer may still be 404 or
    409: only 401 and 403 are about the key)."""
    url = (
        path.replace("{id}", str(uuid.uuid4()))
        .replace("{email}", "hanako@example.com")
        .replace("{category}", "matching")
    )
    request: dict[str, Any] = {"method": method, "url": url}
    kind = next((k for k in KINDS if path.startswith(f"/emails/{k}")), None)
    if kind is not None and path.endswith("/batch"):
        request["json"] = {"emails": [body("hanako@example.com", kind)]}
    elif kind is not None and path.endswith("/preview"):
        request["json"] = {"params": LINKS[kind]}
    elif kind is not None:
        request["json"] = body("hanako@example.com", kind)
    elif path.endswith("/suppression") and method == "PUT":
        request["json"] = {"detail": "asked by phone"}
    return request


def _without_message(answer: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = answer.json()["error"]
    return {k: v for k, v in error.items() if k != "message"}


async def test_each_scope_is_allowed_exactly_its_rows_and_told_why_otherwise(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    keys = {scope: await _key(engine, scope) for scope in SCOPES}
    # /status/setup asks SES, SNS and DNS; its answer is kept 30 s: one kept answer will do.
    client.app.state.setup_cache = _SetupCache(  # type: ignore[attr-defined]
        answer=SetupRead(ready=True, checks=[]), at=time.monotonic()
    )
    wrong: list[str] = []
    for (method, path), row in sorted(MATRIX.items()):
        if not isinstance(row, Keyed) or path.startswith("/dev/"):
            continue
        for scope in SCOPES:
            answer = await client.request(**_request(method, path), headers=keys[scope])
            what = f"{scope} {method} {path}: {answer.status_code} {answer.text[:200]}"
            if scope in row.allowed:
                if answer.status_code in (401, 403):
                    wrong.append(what)
            elif answer.status_code != 403 or _without_message(answer) != {
                "code": "forbidden",
                "scope": scope.value,
                "permission": row.permission.value,
            }:
                wrong.append(what)
    assert wrong == []


async def test_a_test_key_cannot_read_or_change_a_real_person(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    app = await _key(engine, APP, "nextjs-app")
    ci = await _key(engine, TEST, "ci")
    other_ci = await _key(engine, TEST, "ci-2")
    person = "taro@example.com"
    real = await client.post(
        "/emails/matching-notification", json=body(person, "matching-notification"), headers=app
    )
    assert real.status_code == 202, real.text
    assert (
        await client.put(f"/recipients/{person}/opt-outs/matching", headers=app)
    ).status_code == 200

    # Not the real mail (not even that it exists), nor the person's history.
    hidden = await client.get(f"/emails/{real.json()['id']}", headers=ci)
    assert hidden.status_code == 404
    assert hidden.json()["error"]["code"] == "email_not_found"
    refused = await client.get(f"/recipients/{person}", headers=ci)
    assert refused.status_code == 403
    assert refused.json()["error"]["permission"] == "read_recipients"
    # Nor the person's consent, their data, or their suppression.
    assert (
        await client.delete(f"/recipients/{person}/opt-outs/matching", headers=ci)
    ).status_code == 403
    assert (await client.delete(f"/recipients/{person}", headers=ci)).status_code == 403
    assert (
        await client.put(f"/recipients/{person}/suppression", json={}, headers=ci)
    ).status_code == 403
    assert (await client.delete(f"/emails/{real.json()['id']}", headers=ci)).status_code == 404

    # The person is as the app left them: opted out, not erased, their mail still queued.
    state = (await client.get(f"/recipients/{person}", headers=app)).json()
    assert state["address"] == person
    assert [o["category"] for o in state["opt_outs"]] == ["matching"]
    assert state["suppressed"] is None
    assert (await client.get(f"/emails/{real.json()['id']}", headers=app)).json()[
        "status"
    ] == "queued"

    # What the test key may do: send, and read the mails it sent (not another test key's).
    mine = await client.post("/emails/verify-email", json=body(person), headers=ci)
    assert mine.status_code == 202, mine.text
    shown = await client.get(f"/emails/{mine.json()['id']}", headers=ci)
    assert (shown.status_code, shown.json()["test"]) == (200, True)
    assert (await client.get(f"/emails/{mine.json()['id']}", headers=other_ci)).status_code == 404


async def test_a_support_key_reads_every_mail_and_recipient_and_changes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    app = await _key(engine, APP, "nextjs-app")
    desk = await _key(engine, SUPPORT, "support-desk")
    person = "hanako@example.com"
    sent = await client.post("/emails/verify-email", json=body(person), headers=app)
    assert sent.status_code == 202, sent.text
    mail = f"/emails/{sent.json()['id']}"

    shown = await client.get(mail, headers=desk)
    assert (shown.status_code, shown.json()["to"]) == (200, person)
    assert (await client.get(f"/recipients/{person}", headers=desk)).status_code == 200
    assert (await client.get("/status/reputation", headers=desk)).status_code == 200

    for method, url in [
        ("POST", "/emails/verify-email"),
        ("DELETE", mail),
        ("DELETE", f"/recipients/{person}"),
        ("PUT", f"/recipients/{person}/opt-outs/matching"),
        ("PUT", f"/recipients/{person}/suppression"),
    ]:
        answer = await client.request(method, url, json=body(person), headers=desk)
        assert answer.status_code == 403, (method, url, answer.text)
        assert answer.json()["error"]["scope"] == "support"
    assert (await client.get(mail, headers=app)).json()["status"] == "queued"
    assert (await client.get(f"/recipients/{person}", headers=app)).json()["address"] == person
