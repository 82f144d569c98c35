"""GET and POST /unsubscribe/{token}: the link in every mail and RFC 8058 one-click.

GET only shows a page with one button: link scanners and mail-security proxies follow GETs,
and must not unsubscribe anyone. POST (the button, or a mail client's one-click
``List-Unsubscribe=One-Click``) opts out. Both are idempotent; a token that is not ours, or
whose recipient was erased, gets a 404 page that names no address.
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
from importlib.resources import files
from string import Template
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import SessionDep
from app.emails.rendering import contact_html
from app.errors import error_responses
from app.models import OPTIONAL_CATEGORIES, Category
from app.recipients import service as recipients
from app.unsubscribe.tokens import UnsubscribeClaim, read_token

log = logging.getLogger(__name__)

router = APIRouter(prefix="/unsubscribe", tags=["unsubscribe"])


def _load(name: str) -> str:
    return (files("app.unsubscribe") / "templates" / name).read_text(encoding="utf-8")


# Read once, at import: a missing file stops the service at start-up.
_LAYOUT = Template(_load("_layout.html"))
_CONFIRM = Template(_load("confirm.html"))
_DONE = Template(_load("done.html"))
_NOT_FOUND = Template(_load("not-found.html"))
_RESUBSCRIBED = Template(_load("resubscribed.html"))
_STYLE = _load("page.css").strip()

# No scripts, no outside resources; the one style block is allowed by its hash, and the form
# may only post back here.
_CSP = "; ".join(
    [
        "default-src 'none'",
        f"style-src 'sha256-{base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()}'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": _CSP,
}

# What the pages call each optional category.
CATEGORY_LABELS = {Category.MATCHING: ("案件のお知らせ", "新しいマッチング案件のご案内")}

HTML_404: dict[int | str, dict[str, Any]] = {
    404: {
        "description": "Not a valid link (or its recipient was erased). Names no address.",
        "content": {"text/html": {}},
    }
}


# Declared so that a generated client knows the shape; a token is any text, so it cannot happen.
_NEVER_422 = "Invalid request (`invalid_request`); any token is read, so not in practice."


def _page(
    settings: Settings, *, title: str, content: Template, status: int, **values: str
) -> HTMLResponse:
    common = {"sender_name": settings.sender_name, "contact": settings.sender_contact}
    escaped = {key: html.escape(value) for key, value in {**common, **values}.items()}
    body = _LAYOUT.substitute(
        title=html.escape(title),
        style=_STYLE,
        content=content.substitute(escaped),
        sender_name=escaped["sender_name"],
        contact_html=contact_html(settings.sender_contact),
    )
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def _not_found(settings: Settings) -> HTMLResponse:
    return _page(settings, title="無効なリンク", content=_NOT_FOUND, status=404)


def _claim(settings: Settings, token: str) -> tuple[UnsubscribeClaim, Category] | None:
    secrets = [secret.get_secret_value() for secret in settings.unsubscribe_secret]
    claim = read_token(token, secrets=secrets)
    if claim is None or claim.category not in OPTIONAL_CATEGORIES:
        return None
    return claim, Category(claim.category)


async def _link_target(
    settings: Settings, session: AsyncSession, token: str
) -> tuple[UnsubscribeClaim, Category, bool] | None:
    """Whom the link is for and whether they already opted out; None for a link that names
    no one (forged, edited, or its recipient erased)."""
    found = _claim(settings, token)
    if found is None:
        return None
    claim, category = found
    opted_out = await recipients.opt_out_status(
        session, recipient_id=claim.recipient_id, category=category
    )
    if opted_out is None:
        return None
    return claim, category, opted_out


def fingerprint(token: str) -> str:
    """Names the token in the audit trail without storing it (it still works as a link)."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@router.get(
    "/{token}",
    response_class=HTMLResponse,
    summary="The unsubscribe page (changes nothing)",
    operation_id="showUnsubscribePage",
    responses={
        200: {"description": "A page with one button that opts out."},
        **HTML_404,
        **error_responses(422, 503, html_route=True, _422=_NEVER_422),
    },
)
async def unsubscribe_page(token: str, request: Request, session: SessionDep) -> HTMLResponse:
    settings: Settings = request.app.state.settings
    target = await _link_target(settings, session, token)
    if target is None:
        return _not_found(settings)
    _, category, opted_out = target
    label, description = CATEGORY_LABELS[category]
    if opted_out:
        return _page(
            settings,
            title="配信停止済み",
            content=_DONE,
            status=200,
            heading=f"{label}の配信はすでに停止しています",
            category_label=label,
            token=token,
        )
    return _page(
        settings,
        title=f"{label}の配信停止",
        content=_CONFIRM,
        status=200,
        category_label=label,
        category_description=description,
    )


@router.post(
    "/{token}",
    response_class=HTMLResponse,
    summary="Opt out (the page's button, or RFC 8058 one-click)",
    description="Any body is accepted: mail clients send `List-Unsubscribe=One-Click` as "
    "application/x-www-form-urlencoded or multipart/form-data, and the page's button sends "
    "an empty form. Idempotent.",
    operation_id="unsubscribe",
    responses={
        200: {"description": "Opted out (now or before)."},
        **HTML_404,
        **error_responses(413, 422, 503, html_route=True, _422=_NEVER_422),
    },
)
async def unsubscribe(token: str, request: Request, session: SessionDep) -> HTMLResponse:
    settings: Settings = request.app.state.settings
    target = await _link_target(settings, session, token)
    if target is None:
        return _not_found(settings)
    claim, category, _ = target
    # Only told apart in the log: both opt out, and no field is required (clients vary).
    form = parse_qs((await request.body()).decode("latin-1"))
    one_click = form.get("List-Unsubscribe") == ["One-Click"]
    created = await recipients.opt_out(
        session,
        recipient_id=claim.recipient_id,
        category=category,
        cause=f"unsubscribe:{fingerprint(token)}",
    )
    await session.commit()
    if created:
        log.info(
            "opted out",
            extra={
                "event": "opted_out",
                "recipient_id": claim.recipient_id,
                "category": category.value,
                "one_click": one_click,
            },
        )
    label, _ = CATEGORY_LABELS[category]
    return _page(
        settings,
        title="配信停止の完了",
        content=_DONE,
        status=200,
        heading=f"{label}の配信を停止しました",
        category_label=label,
        token=token,
    )


@router.post(
    "/{token}/resubscribe",
    response_class=HTMLResponse,
    summary="Undo an opt-out (the done page's 「配信を再開する」 button)",
    description="The same token as the unsubscribe link. Idempotent.",
    operation_id="resubscribe",
    responses={
        200: {"description": "Opted back in (now or before)."},
        **HTML_404,
        **error_responses(413, 422, 503, html_route=True, _422=_NEVER_422),
    },
)
async def resubscribe(token: str, request: Request, session: SessionDep) -> HTMLResponse:
    settings: Settings = request.app.state.settings
    target = await _link_target(settings, session, token)
    if target is None:
        return _not_found(settings)
    claim, category, _ = target
    lifted = await recipients.opt_in(
        session,
        recipient_id=claim.recipient_id,
        category=category,
        cause=f"unsubscribe:{fingerprint(token)}",
    )
    await session.commit()
    if lifted:
        log.info(
            "opted back in",
            extra={
                "event": "opted_in",
                "recipient_id": claim.recipient_id,
                "category": category.value,
            },
        )
    label, _ = CATEGORY_LABELS[category]
    return _page(
        settings,
        title="配信の再開",
        content=_RESUBSCRIBED,
        status=200,
        category_label=label,
        token=token,
    )
