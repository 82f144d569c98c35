"""/dev/mailbox: the mails the `mailbox` backend kept, for local development only."""

from __future__ import annotations

import email
import email.policy
import html
import json
import re
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse

from app.config import Settings
from app.db import SessionDep
from app.deps import SettingsDep
from app.emails import service as emails
from app.emails.catalog import EMAIL_KINDS
from app.errors import AppError, NotFound
from app.webhooks import deliveries
from app.webhooks.events import webhook_id

router = APIRouter(prefix="/dev", tags=["development"], include_in_schema=False)

# What MailboxSender names its files: a timestamp, "mailbox-" and a UUID.
_MAIL_NAME = re.compile(r"^[\w.-]+\.eml$")

_STYLE = """
body { font-family: sans-serif; margin: 1.5rem; color: #222; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
.headers td:first-child { white-space: nowrap; color: #555; }
.headers td { font-family: monospace; font-size: 0.85rem; word-break: break-all; }
figure { margin: 0; }
.views { display: flex; gap: 1.5rem; align-items: flex-start; flex-wrap: wrap; }
iframe { border: 1px solid #999; background: #fff; height: 760px; }
pre { background: #f6f6f6; padding: 1rem; white-space: pre-wrap; max-width: 80ch; }
"""


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html lang='ja'><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style><body>{body}</body></html>"
    )


def _mail(settings: Settings, name: str) -> tuple[Path, EmailMessage]:
    path = settings.mailbox_dir / name
    if not _MAIL_NAME.match(name) or not path.is_file():
        raise NotFound("no such mail")
    # The default policy makes an EmailMessage (get_body, decoded content).
    return path, email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


@router.get("/mailbox", response_class=HTMLResponse)
async def mailbox(settings: SettingsDep, session: SessionDep) -> HTMLResponse:
    rows = []
    directory = settings.mailbox_dir
    files = sorted(directory.glob("*.eml"), reverse=True) if directory.is_dir() else []
    for path in files[:200]:
        parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        link = f"<a href='/dev/mailbox/{quote(path.name)}'>"
        rows.append(
            f"<tr><td>{html.escape(str(parsed['Date']))}</td>"
            f"<td>{html.escape(str(parsed['To']))}</td>"
            f"<td>{link}{html.escape(str(parsed['Subject']))}</a></td></tr>"
        )
    return _page(
        "tegami mailbox",
        "<h1>Mailbox</h1>"
        f"<p>{len(files)} mail(s) in {html.escape(str(directory))}</p>"
        "<table><tr><th>Date</th><th>To</th><th>Subject</th></tr>"
        + "".join(rows)
        + "</table>"
        + _PREVIEW_FORM
        + await _webhook_events(settings, session),
    )


_PREVIEW_FORM = (
    "<h2>Preview a mail</h2><p>Rendered as <code>POST /emails/&lt;type&gt;/preview</code> "
    "renders it (the worker's own function); nothing is stored or sent.</p>"
    "<form method='get' action='/dev/preview'><select name='type'>"
    + "".join(
        f"<option value='{name}'>{name} ({html.escape(kind.params[0])})</option>"
        for name, kind in EMAIL_KINDS.items()
    )
    + "</select> <input name='to' value='taro@example.com' size='24'> "
    "<input name='link' value='https://proworks.jp/' size='40'> "
    "<button>Preview</button></form>"
)


def _views(source_html: str) -> str:
    # srcdoc in a sandbox with nothing allowed: the mail's HTML runs no script and cannot
    # reach this page, as in a mail client.
    source = html.escape(source_html, quote=True)
    return "".join(
        f"<figure><figcaption>{label} ({width} px)</figcaption>"
        f"<iframe title='{label}' sandbox='' width='{width}' srcdoc=\"{source}\"></iframe>"
        "</figure>"
        for label, width in (("desktop", 800), ("phone", 375))
    )


@router.get("/preview", response_class=HTMLResponse)
async def preview(settings: SettingsDep, type: str, to: str, link: str) -> HTMLResponse:
    """The form's answer: the mail of that type with that link, as it would be sent."""
    kind = EMAIL_KINDS.get(type)
    if kind is None:
        raise NotFound("no such type of mail")
    back = "<p><a href='/dev/mailbox'>&larr; mailbox</a></p>"
    try:
        parts = emails.preview(
            kind=kind,
            params={kind.params[0]: link},
            send_at=None,
            settings=settings,
        )
    except AppError as refused:
        detail = html.escape(str(refused.extra.get("detail", "")))
        return _page(
            "preview refused",
            f"{back}<h1>Refused</h1><p>{html.escape(refused.message)}</p><pre>{detail}</pre>",
        )
    return _page(
        parts.subject,
        f"{back}<h1>{html.escape(parts.subject)}</h1><p>To: {html.escape(to)}</p>"
        f"<h2>HTML part</h2><div class='views'>{_views(parts.html)}</div>"
        f"<h2>Text part</h2><pre>{html.escape(parts.text)}</pre>",
    )


async def _webhook_events(settings: Settings, session: SessionDep) -> str:
    """The events posted to TEGAMI_WEBHOOK_URL (`tegami dev --webhook-url`), and how each went."""
    url = settings.webhook_url
    if url is None:
        return "<h2>Webhooks</h2><p>Off: start with <code>tegami dev --webhook-url URL</code>.</p>"
    rows = [
        f"<tr><td>{html.escape(row.created_at.isoformat(timespec='seconds'))}</td>"
        f"<td>{html.escape(row.type)}</td><td><code>{webhook_id(row.id)}</code></td>"
        f"<td>{html.escape(row.status)}</td><td>{row.attempts}</td>"
        f"<td>{html.escape(str(row.last_status or row.last_error or ''))}</td>"
        f"<td><pre>{html.escape(json.dumps(row.data, ensure_ascii=False, indent=2))}</pre></td>"
        "</tr>"
        for row in await deliveries.list_deliveries(session, status=None, limit=100)
    ]
    return (
        f"<h2>Webhooks to {html.escape(url)}</h2>"
        "<table><tr><th>Created</th><th>Type</th><th>webhook-id</th><th>Status</th>"
        "<th>Attempts</th><th>Last answer</th><th>Data</th></tr>" + "".join(rows) + "</table>"
    )


@router.get("/mailbox/{name}", response_class=HTMLResponse)
async def mailbox_item(name: str, settings: SettingsDep) -> HTMLResponse:
    """One mail as a recipient sees it: its HTML at desktop and phone width, text, headers."""
    _, parsed = _mail(settings, name)
    html_part = parsed.get_body(preferencelist=("html",))
    text_part = parsed.get_body(preferencelist=("plain",))
    headers = "".join(
        f"<tr><td>{html.escape(key)}</td><td>{html.escape(str(value))}</td></tr>"
        for key, value in parsed.items()
    )
    views = _views(str(html_part.get_content())) if html_part is not None else ""
    text = (
        f"<h2>Text part</h2><pre>{html.escape(str(text_part.get_content()))}</pre>"
        if text_part is not None
        else ""
    )
    return _page(
        str(parsed["Subject"]),
        "<p><a href='/dev/mailbox'>&larr; mailbox</a></p>"
        f"<h1>{html.escape(str(parsed['Subject']))}</h1>"
        f"<p><a href='/dev/mailbox/{quote(name)}/raw' download='{html.escape(name)}'>"
        "download the .eml</a></p>"
        f"<h2>HTML part</h2><div class='views'>{views or '<p>(none)</p>'}</div>"
        f"{text}<h2>Headers</h2><table class='headers'>{headers}</table>",
    )


@router.get("/mailbox/{name}/raw")
async def mailbox_raw(name: str, settings: SettingsDep) -> Response:
    path, _ = _mail(settings, name)
    return Response(
        path.read_bytes(),
        media_type="message/rfc822",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
