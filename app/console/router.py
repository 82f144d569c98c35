"""/console: the support desk in a browser. Server-rendered Japanese pages; a signed session
cookie (app/console/session.py); every form carries the CSRF token; only admin keys may lift,
erase, release or discard (each with a confirmation)."""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.ext.asyncio import AsyncSession

from app.api_keys import find_caller, hash_key
from app.config import Settings
from app.console import rates, session
from app.console.chart import rates_svg
from app.db import SessionDep, driver_connection
from app.deps import EngineDep, OutboxWakeDep, SettingsDep, get_settings
from app.emails import outbox
from app.emails import service as emails
from app.emails.catalog import EMAIL_KINDS
from app.emails.rendering import SenderInfo, render_parts
from app.erasure.unlisting import erase_and_unlist
from app.errors import NotFound
from app.recipients import service as recipients
from app.recipients.addresses import AddressError, address_hash, check_address
from app.recipients.ses_list import SesListDep, SesUnavailable
from app.support import search
from app.support import service as support

log = logging.getLogger(__name__)

router = APIRouter(prefix="/console", include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

STATUS_LABELS = {
    "queued": "送信待ち",
    "sending": "送信中",
    "scheduled": "予約",
    "held": "保留",
    "sent": "送信済み",
    "delivered": "配達済み",
    "bounced": "バウンス",
    "complained": "迷惑メール報告",
    "expired": "期限切れ",
    "failed": "失敗",
    "cancelled": "取り消し",
}
VERDICT_LABELS = {
    "never_sent": "送信依頼なし",
    "queued": "送信待ち",
    "scheduled": "送信予約中",
    "held": "保留中",
    "sent": "送信済み（結果待ち）",
    "delivered": "配達済み",
    "bounced": "バウンス",
    "complained": "迷惑メール報告",
    "expired": "期限切れ",
    "failed": "送信失敗",
    "suppressed": "配信停止中",
    "opted_out": "受信者が配信停止",
    "erased": "データ消去済み",
}
SUPPRESSION_LABELS = {
    "hard_bounce": "宛先不明（ハードバウンス）",
    "soft_bounce_limit": "一時エラーが3回連続",
    "complaint": "迷惑メール報告",
    "manual": "手作業",
}
templates.env.globals.update(status_labels=STATUS_LABELS, verdict_labels=VERDICT_LABELS)
templates.env.globals.update(suppression_labels=SUPPRESSION_LABELS)
templates.env.filters["when"] = lambda moment: (
    moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment is not None else "-"
)


async def _hash(request: Request, address: str) -> bytes:
    secret = (await get_settings(request)).address_hash_secret.get_secret_value()
    return address_hash(address, secret=secret)


def _page(
    request: Request, name: str, context: dict[str, Any], *, status_code: int = 200
) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    # Pages name people: never cached, never framed.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "frame-src 'self'; form-action 'self'; frame-ancestors 'none'"
    )
    return response


def _sign_in_page(
    request: Request, settings: Settings, *, error: str | None = None, status: int = 200
) -> Response:
    token = session.sign_in_token(request)
    response = _page(request, "sign_in.html", {"error": error, "csrf": token}, status_code=status)
    session.keep_sign_in_token(response, token, settings=settings)
    return response


async def _signed_in(request: Request, db: AsyncSession) -> session.ConsoleSession | None:
    return await session.current(request, db)


def _to_sign_in() -> RedirectResponse:
    return RedirectResponse("/console", status_code=303)


async def _may_change(
    request: Request, db: AsyncSession, csrf: str
) -> session.ConsoleSession | Response:
    """The session of a form that changes something (lift, erase, release, discard), or the
    page that refuses it: not signed in, a stale form (CSRF), or a key that may only read."""
    signed = await _signed_in(request, db)
    if signed is None:
        return _to_sign_in()
    if not session.same_token(signed.csrf, csrf):
        return _bad_form(request, signed)
    if not signed.can_change:
        return _forbidden(request, signed)
    return signed


def _forbidden(request: Request, signed: session.ConsoleSession) -> Response:
    return _page(
        request,
        "message.html",
        {
            "session": signed,
            "title": "権限がありません",
            "message": "この操作には管理者（admin）キーが必要です。"
            f"サインイン中のキー「{signed.caller.name}」は{signed.caller.scope.value}です。",
        },
        status_code=403,
    )


def _bad_form(request: Request, signed: session.ConsoleSession | None) -> Response:
    return _page(
        request,
        "message.html",
        {
            "session": signed,
            "title": "フォームの有効期限が切れました",
            "message": "ページを開き直してから、もう一度操作してください。",
        },
        status_code=403,
    )


@router.get("", response_class=HTMLResponse)
async def home(request: Request, db: SessionDep, settings: SettingsDep) -> Response:
    signed = await _signed_in(request, db)
    if signed is None:
        return _sign_in_page(request, settings)
    day = await rates.buckets(db, unit="hour", count=24)
    week = await rates.buckets(db, unit="day", count=7)
    return _page(
        request,
        "home.html",
        {
            "session": signed,
            "day_chart": rates_svg(day, title="直近24時間（1時間ごと）", label_format="%H時"),
            "week_chart": rates_svg(week, title="直近7日間（1日ごと）", label_format="%m/%d"),
            "day": _totals(day),
            "week": _totals(week),
        },
    )


def _totals(buckets: list[rates.Bucket]) -> dict[str, Any]:
    sends = sum(b.sends for b in buckets)
    bounces = sum(b.hard_bounces for b in buckets)
    complaints = sum(b.complaints for b in buckets)
    return {
        "sends": sends,
        "bounce_rate": f"{bounces / sends:.2%}" if sends else "-",
        "complaint_rate": f"{complaints / sends:.3%}" if sends else "-",
    }


@router.post("/sign-in")
async def sign_in(
    request: Request,
    settings: SettingsDep,
    engine: EngineDep,
    key: Annotated[str, Form(max_length=200)],
    csrf: Annotated[str, Form(max_length=100)],
) -> Response:
    if not session.same_token(request.cookies.get(session.SIGN_IN_COOKIE), csrf):
        return _sign_in_page(
            request, settings, error="フォームの有効期限が切れました。", status=403
        )
    async with driver_connection(engine) as connection:
        found = await find_caller(connection, key_hash=hash_key(key.strip()))
    if found is None:
        return _sign_in_page(request, settings, error="APIキーが正しくありません。", status=401)
    caller, _ = found
    if not session.may_read(caller):
        return _sign_in_page(
            request,
            settings,
            error="このキーではコンソールを使えません（support または admin キーが必要です）。",
            status=403,
        )
    response = RedirectResponse("/console", status_code=303)
    session.start(response, settings=settings, caller=caller)
    return response


@router.post("/sign-out")
async def sign_out(
    request: Request,
    db: SessionDep,
    settings: SettingsDep,
    csrf: Annotated[str, Form(max_length=100)],
) -> Response:
    signed = await _signed_in(request, db)
    response = _to_sign_in()
    if signed is not None and session.same_token(signed.csrf, csrf):
        session.end(response, settings=settings)
    return response


_UUID = re.compile(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


@router.get("/search", response_class=HTMLResponse)
async def search_page(request: Request, db: SessionDep, q: str = "") -> Response:
    signed = await _signed_in(request, db)
    if signed is None:
        return _to_sign_in()
    q = q.strip()[:254]
    if _UUID.fullmatch(q):
        return RedirectResponse(f"/console/mail/{q.lower()}", status_code=303)
    if "@" in q:
        return await _person(request, db, signed, q)
    page = await search.find_emails(db, filters=search.Filters(user_id=q), limit=50) if q else None
    return _page(
        request, "search.html", {"session": signed, "q": q, "emails": page.emails if page else []}
    )


async def _person(
    request: Request,
    db: AsyncSession,
    signed: session.ConsoleSession,
    address: str,
    *,
    notice: str | None = None,
) -> Response:
    try:
        check_address(address)
    except AddressError as exc:
        return _page(
            request,
            "search.html",
            {"session": signed, "q": address, "emails": [], "error": str(exc)},
            status_code=422,
        )
    hashed = await _hash(request, address)
    verdict = await support.why(db, address=address, address_hash=hashed, type=None)
    try:
        state = await recipients.read_state(db, address_hash=hashed)
    except NotFound:
        state = None
    page = await search.find_emails(db, filters=search.Filters(address_hash=hashed), limit=20)
    timeline = []
    for found in page.emails:
        _, events = await emails.read(db, message_id=found.id)
        timeline.append((found, events))
    return _page(
        request,
        "person.html",
        {
            "session": signed,
            "address": address,
            "verdict": verdict,
            "state": state,
            "timeline": timeline,
            "more": page.next_cursor is not None,
            "notice": notice,
        },
    )


@router.get("/person", response_class=HTMLResponse)
async def person(request: Request, db: SessionDep, address: str = "") -> Response:
    signed = await _signed_in(request, db)
    if signed is None:
        return _to_sign_in()
    return await _person(request, db, signed, address.strip()[:254])


@router.post("/person/lift", response_class=HTMLResponse)
async def lift(
    request: Request,
    db: SessionDep,
    ses_list: SesListDep,
    address: Annotated[str, Form(max_length=254)],
    csrf: Annotated[str, Form(max_length=100)],
    confirm: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    signed = await _may_change(request, db, csrf)
    if isinstance(signed, Response):
        return signed
    if confirm != "yes":
        return await _person(
            request, db, signed, address, notice="確認のチェックを入れてください。"
        )
    hashed = await _hash(request, address)
    if await recipients.suppression_reason(db, address_hash=hashed) is None:
        return await _person(request, db, signed, address, notice="配信停止されていません。")
    try:
        await ses_list.remove(address)
    except SesUnavailable as exc:
        return await _person(
            request, db, signed, address, notice=f"SESに接続できず、解除できませんでした: {exc}"
        )
    await recipients.lift_suppression(db, address_hash=hashed, cause=signed.caller.cause)
    await db.commit()
    return await _person(request, db, signed, address, notice="配信停止を解除しました。")


@router.post("/person/erase", response_class=HTMLResponse)
async def erase(
    request: Request,
    db: SessionDep,
    settings: SettingsDep,
    ses_list: SesListDep,
    address: Annotated[str, Form(max_length=254)],
    csrf: Annotated[str, Form(max_length=100)],
    confirm: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    signed = await _may_change(request, db, csrf)
    if isinstance(signed, Response):
        return signed
    if confirm != "yes":
        return await _person(
            request, db, signed, address, notice="確認のチェックを入れてください。"
        )
    await erase_and_unlist(
        db,
        ses=ses_list,
        address=address,
        address_hash=await _hash(request, address),
        cause=signed.caller.cause,
        retry_seconds=settings.ses_list_retry_seconds,
    )
    return await _person(request, db, signed, address, notice="個人データを消去しました。")


def mask_link(url: str) -> str:
    """A link with its token hidden: query values and long path segments become ***."""
    parts = urlsplit(url)
    path = "/".join("***" if len(seg) >= 16 else seg for seg in parts.path.split("/"))
    query = "&".join(
        f"{pair.partition('=')[0]}=***" if "=" in pair else "***"
        for pair in parts.query.split("&")
        if pair
    )
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


@router.get("/mail/{mail_id}", response_class=HTMLResponse)
async def mail(request: Request, db: SessionDep, settings: SettingsDep, mail_id: str) -> Response:
    signed = await _signed_in(request, db)
    if signed is None:
        return _to_sign_in()
    try:
        message, events = await emails.read(db, message_id=uuid.UUID(mail_id))
    except (ValueError, NotFound):
        return _page(
            request,
            "message.html",
            {"session": signed, "title": "見つかりません", "message": "そのメールIDはありません。"},
            status_code=404,
        )
    kind = EMAIL_KINDS[message.kind]
    # Sent mail's params are purged: the preview then shows each link as a placeholder.
    params = {
        name: mask_link((message.params or {}).get(name) or "https://proworks.jp/***")
        for name in kind.params
    }
    preview = render_parts(
        kind=kind,
        params=params,
        unsubscribe_url=emails.UNSUBSCRIBE_PLACEHOLDER,
        sender=SenderInfo(
            name=settings.sender_name,
            postal_address=settings.sender_postal_address,
            contact=settings.sender_contact,
        ),
    )
    return _page(
        request,
        "mail.html",
        {"session": signed, "message": message, "events": events, "preview": preview},
    )


@router.get("/held", response_class=HTMLResponse)
async def held(request: Request, db: SessionDep, notice: str | None = None) -> Response:
    signed = await _signed_in(request, db)
    if signed is None:
        return _to_sign_in()
    connection = await db.connection()
    mails = await outbox.held_mail(connection)
    return _page(request, "held.html", {"session": signed, "mails": mails, "notice": notice})


@router.post("/held/{action}", response_class=HTMLResponse)
async def held_action(
    request: Request,
    db: SessionDep,
    wake_worker: OutboxWakeDep,
    action: str,
    csrf: Annotated[str, Form(max_length=100)],
    ids: Annotated[list[str] | None, Form()] = None,
    confirm: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    signed = await _may_change(request, db, csrf)
    if isinstance(signed, Response):
        return signed
    if action not in ("release", "discard"):
        return _page(
            request,
            "message.html",
            {"session": signed, "title": "見つかりません", "message": "その操作はありません。"},
            status_code=404,
        )
    chosen = [uuid.UUID(i) for i in ids or [] if _UUID.fullmatch(i)]
    if confirm != "yes" or not chosen:
        return await held(request, db, notice="メールを選び、確認のチェックを入れてください。")
    connection = await db.connection()
    cause = signed.caller.cause
    if action == "release":
        count = await outbox.release_held(connection, ids=chosen, cause=cause)
        wake_worker.set()
        notice = f"{count}通を送信待ちに戻しました。"
    else:
        count = await outbox.discard_held(connection, ids=chosen, cause=cause)
        notice = f"{count}通を破棄しました。"
    await db.commit()
    return await held(request, db, notice=notice)
