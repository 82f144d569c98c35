"""/dev/mailbox: the mails the `mailbox` backend kept, for local development only."""

from __future__ import annotations

import email
import email.policy
import html
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

from app.errors import NotFound

router = APIRouter(prefix="/dev", tags=["development"], include_in_schema=False)


def _mailbox(request: Request) -> Path:
    directory: Path = request.app.state.settings.mailbox_dir
    return directory


@router.get("/mailbox", response_class=HTMLResponse)
async def mailbox(request: Request) -> HTMLResponse:
    rows = []
    directory = _mailbox(request)
    files = sorted(directory.glob("*.eml"), reverse=True) if directory.is_dir() else []
    for path in files[:200]:
        parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        link = f"<a href='/dev/mailbox/{html.escape(path.name)}'>"
        rows.append(
            f"<tr><td>{html.escape(str(parsed['Date']))}</td>"
            f"<td>{html.escape(str(parsed['To']))}</td>"
            f"<td>{link}{html.escape(str(parsed['Subject']))}</a></td></tr>"
        )
    body = (
        "<!doctype html><html lang='ja'><meta charset='utf-8'><title>tegami mailbox</title>"
        "<body style='font-family:sans-serif'><h1>Mailbox</h1>"
        f"<p>{len(files)} mail(s) in {html.escape(str(directory))}</p>"
        "<table border='1' cellpadding='4'><tr><th>Date</th><th>To</th><th>Subject</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )
    return HTMLResponse(body)


@router.get("/mailbox/{name}", response_class=PlainTextResponse)
async def mailbox_item(name: str, request: Request) -> PlainTextResponse:
    directory = _mailbox(request)
    path = directory / name
    if "/" in name or not name.endswith(".eml") or not path.is_file():
        raise NotFound("no such mail")
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    parts = [f"{key}: {value}" for key, value in parsed.items()]
    for part in parsed.walk():
        if part.get_content_maintype() == "text":
            parts.append(f"\n--- {part.get_content_type()} ---\n{part.get_content()}")
    return PlainTextResponse("\n".join(parts))
