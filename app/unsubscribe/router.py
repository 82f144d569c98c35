"""GET and POST /unsubscribe/{token}: the link in every mail and RFC 8058 one-click.

GET only shows a page with one button: link scanners and mail-security proxies follow GETs,
and must not unsubscribe anyone. POST (the button, or a mail client's one-click
``List-Unsubscribe=One-Click``) opts out. Both are idempotent; a token that is not ours, or
whose recipient was erased, gets a 404 page that names no address.

Every mail carries a link, account mail's too (DESIGN.md, Unsubscribe): a token signed for
``account`` opts out of the optional categories, since account mail itself is never stopped.

Opting back in is consent, so it takes what only the done page gives: a nonce for this token
that expires within the hour, posted from this site (where the browser says where from).
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
import time
from dataclasses import dataclass
from importlib.resources import files
from string import Template
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.contact import contact_html
from app.db import SessionDep
from app.deps import SettingsDep
from app.errors import error_responses
from app.models import OPTIONAL_CATEGORIES, Category
from app.recipients import service as recipients
from app.unsubscribe.tokens import (
    RESUBSCRIBE_NONCE_SECONDS,
    UnsubscribeClaim,
    make_resubscribe_nonce,
    read_token,
    resubscribe_nonce_valid,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/unsubscribe", tags=["unsubscribe"])


def _load(name: str) -> str:
    return (files("app.unsubscribe") / "templates" / name).read_text(encoding="utf-8")


# Read once, at import: a missing file stops the service at start-up.
_LAYOUT = Template(_load("_layout.html"))
_CONFIRM = Template(_load("confirm.html"))
_DONE = Template(_load("done.html"))
_NOT_FOUND = Template(_load("not-found.html"))
_REFUSED = Template(_load("refused.html"))
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
    # Not no-referrer: under it a browser sends `Origin: null` even with the page's own form,
    # and the resubscribe check could not tell it from another site's. The pages load nothing
    # and link only to mailto:, so the token in the URL still goes to no other site.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": _CSP,
}

# What the pages call each optional category.
CATEGORY_LABELS = {Category.MATCHING: ("案件のお知らせ", "新しいマッチング案件のご案内")}
# What a link opts out of, by the category its token was signed for: an account mail's link
# stops every optional category (account mail itself keeps flowing).
LINK_CATEGORIES: dict[str, tuple[Category, ...]] = {
    **{category.value: (category,) for category in OPTIONAL_CATEGORIES},
    Category.ACCOUNT.value: tuple(sorted(OPTIONAL_CATEGORIES)),
}

HTML_404: dict[int | str, dict[str, Any]] = {
    404: {
        "description": "Not a valid link (or its recipient was erased). Names no address.",
        "content": {"text/html": {}},
    }
}
HTML_403: dict[int | str, dict[str, Any]] = {
    403: {
        "description": "Not the done page's own form: no valid `nonce` for this link (missing, "
        "forged, or older than an hour), or posted from another site (`Origin` or "
        "`Sec-Fetch-Site` says so). Nothing changes; the page says how to opt back in.",
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


@dataclass(frozen=True)
class _Target:
    claim: UnsubscribeClaim
    categories: tuple[Category, ...]  # the optional categories the link opts out of
    opted_out: bool  # of every one of them, already

    @property
    def label(self) -> str:
        return "・".join(CATEGORY_LABELS[category][0] for category in self.categories)

    @property
    def description(self) -> str:
        return "、".join(CATEGORY_LABELS[category][1] for category in self.categories)


def _secrets(settings: Settings) -> list[str]:
    return [secret.get_secret_value() for secret in settings.unsubscribe_secret]


async def _link_target(settings: Settings, session: AsyncSession, token: str) -> _Target | None:
    """Whom the link is for, what it stops, and whether they already opted out; None for a
    link that names no one (forged, edited, or its recipient erased)."""
    claim = read_token(token, secrets=_secrets(settings))
    if claim is None or claim.category not in LINK_CATEGORIES:
        return None
    categories = LINK_CATEGORIES[claim.category]
    opted_out = await recipients.opt_out_status(
        session, recipient_id=claim.recipient_id, categories=categories
    )
    if opted_out is None:
        return None
    return _Target(claim=claim, categories=categories, opted_out=opted_out)


def _done(
    settings: Settings, token: str, target: _Target, *, title: str, heading: str
) -> HTMLResponse:
    """The done page; its 「配信を再開する」 form carries a fresh nonce for this token."""
    nonce = make_resubscribe_nonce(
        token,
        expires_at=int(time.time()) + RESUBSCRIBE_NONCE_SECONDS,
        secret=_secrets(settings)[0],
    )
    return _page(
        settings,
        title=title,
        content=_DONE,
        status=200,
        heading=heading,
        category_label=target.label,
        token=token,
        nonce=nonce,
    )


def _own_origins(request: Request, settings: Settings) -> set[str]:
    """This site as a browser names it in `Origin`: the public URL, or the host it asked."""
    public = urlsplit(settings.public_base_url)
    origins = {f"{public.scheme}://{public.netloc}".lower()}
    host = request.headers.get("host")
    if host:  # behind a proxy that ends TLS, the scheme seen here is not the browser's
        origins |= {f"https://{host}".lower(), f"http://{host}".lower()}
    return origins


def _cross_site(request: Request, settings: Settings) -> bool:
    """The browser says the POST comes from another site's page. Browsers send
    `Sec-Fetch-Site`, and `Origin` with a form's POST (`null` when they hide it); a client
    that sends neither is judged by the nonce alone."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site.lower() != "same-origin":
        return True
    origin = request.headers.get("origin")
    return origin is not None and origin.lower() not in _own_origins(request, settings)


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
async def unsubscribe_page(token: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    target = await _link_target(settings, session, token)
    if target is None:
        return _not_found(settings)
    if target.opted_out:
        return _done(
            settings,
            token,
            target,
            title="配信停止済み",
            heading=f"{target.label}の配信はすでに停止しています",
        )
    return _page(
        settings,
        title=f"{target.label}の配信停止",
        content=_CONFIRM,
        status=200,
        category_label=target.label,
        category_description=target.description,
    )


@router.post(
    "/{token}",
    response_class=HTMLResponse,
    summary="Opt out (the page's button, or RFC 8058 one-click)",
    description="Any body is accepted: mail clients send `List-Unsubscribe=One-Click` as "
    "application/x-www-form-urlencoded or multipart/form-data, and the page's button sends "
    "an empty form. Idempotent. The link of an account mail (verify-email, password-reset, "
    "email-change) opts out of the optional categories (matching notifications): account "
    "mail itself keeps coming.",
    operation_id="unsubscribe",
    responses={
        200: {"description": "Opted out (now or before)."},
        **HTML_404,
        **error_responses(413, 422, 503, html_route=True, _422=_NEVER_422),
    },
)
async def unsubscribe(
    token: str, request: Request, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    target = await _link_target(settings, session, token)
    if target is None:
        return _not_found(settings)
    # Only told apart in the log: both opt out, and no field is required (clients vary).
    form = parse_qs((await request.body()).decode("latin-1"))
    one_click = form.get("List-Unsubscribe") == ["One-Click"]
    for category in target.categories:
        created = await recipients.opt_out(
            session,
            recipient_id=target.claim.recipient_id,
            category=category,
            cause=f"unsubscribe:{fingerprint(token)}",
        )
        if created:
            log.info(
                "opted out",
                extra={
                    "event": "opted_out",
                    "recipient_id": target.claim.recipient_id,
                    "category": category.value,
                    "link_category": target.claim.category,
                    "one_click": one_click,
                },
            )
    await session.commit()
    return _done(
        settings,
        token,
        target,
        title="配信停止の完了",
        heading=f"{target.label}の配信を停止しました",
    )


@router.post(
    "/{token}/resubscribe",
    response_class=HTMLResponse,
    summary="Undo an opt-out (the done page's 「配信を再開する」 button)",
    description="The same token as the unsubscribe link, and the form field `nonce` that the "
    "done page gives (good for an hour, for this link only); a browser's request must come "
    "from this site (`Sec-Fetch-Site: same-origin`, `Origin` this site). Opting back in is "
    "consent: the old link alone, or a post from another site, is 403 and changes nothing. "
    "Idempotent.",
    operation_id="resubscribe",
    responses={
        200: {"description": "Opted back in (now or before)."},
        **HTML_403,
        **HTML_404,
        **error_responses(413, 422, 503, html_route=True, _422=_NEVER_422),
    },
)
async def resubscribe(
    token: str, request: Request, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    target = await _link_target(settings, session, token)
    if target is None:
        return _not_found(settings)
    form = parse_qs((await request.body()).decode("latin-1"))
    nonce = form.get("nonce", [""])[0]
    consent = not _cross_site(request, settings) and resubscribe_nonce_valid(
        nonce, token=token, now=int(time.time()), secrets=_secrets(settings)
    )
    if not consent:
        log.info(
            "resubscribe refused",
            extra={
                "event": "resubscribe_refused",
                "recipient_id": target.claim.recipient_id,
                "has_nonce": bool(nonce),
                "sec_fetch_site": request.headers.get("sec-fetch-site"),
            },
        )
        return _page(
            settings,
            title="配信を再開できませんでした",
            content=_REFUSED,
            status=403,
            category_label=target.label,
        )
    for category in target.categories:
        lifted = await recipients.opt_in(
            session,
            recipient_id=target.claim.recipient_id,
            category=category,
            cause=f"unsubscribe:{fingerprint(token)}",
        )
        if lifted:
            log.info(
                "opted back in",
                extra={
                    "event": "opted_in",
                    "recipient_id": target.claim.recipient_id,
                    "category": category.value,
                },
            )
    await session.commit()
    return _page(
        settings,
        title="配信の再開",
        content=_RESUBSCRIBED,
        status=200,
        category_label=target.label,
        token=token,
    )
