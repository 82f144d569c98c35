"""Render a catalogue mail into the raw RFC 5322 message that SES sends.

Pure: no I/O after import. The templates (package data in ``app/emails/templates``) are read
once, at import, so a missing file stops the service at start-up rather than on the first send.
Each kind has ``<kind>.txt`` and ``<kind>.html`` (the body, in the seed's wording); each category
has a footer, ``_footer-<category>.*``; ``_layout.html`` wraps the HTML part.
"""

from __future__ import annotations

import html
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import AddressHeader, BaseHeader
from email.message import EmailMessage
from email.utils import format_datetime
from importlib.resources import files
from string import Template

from app.emails.catalog import EMAIL_KINDS, Category, EmailKind

# SMTP: CRLF line ends, RFC 2047 words for non-ASCII headers, folding at 78 columns.
# refold_source="none" only affects headers stored with set_raw: List-Unsubscribe must stay one
# unbroken <URL>; the default policy turns a long URL into encoded words no client understands.
_POLICY = policy.SMTP.clone(refold_source="none")
# RFC 5322 section 2.1.1: at most 998 octets per line, CRLF excluded.
_MAX_LINE = 998
# C0/C1 controls (CR, LF, NUL, NEL, ...) and the Unicode line and paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


@dataclass(frozen=True)
class SenderInfo:
    """The sender block 特定電子メール法 requires in matching notifications."""

    name: str
    postal_address: str
    contact: str


@dataclass(frozen=True)
class _Pair:
    text: Template
    html: Template


def _load(name: str) -> Template:
    resource = files("app.emails") / "templates" / name
    return Template(resource.read_text(encoding="utf-8"))


def _load_pair(stem: str) -> _Pair:
    return _Pair(text=_load(f"{stem}.txt"), html=_load(f"{stem}.html"))


_LAYOUT = _load("_layout.html")
_BODIES = {name: _load_pair(name) for name in EMAIL_KINDS}
_FOOTERS = {category: _load_pair(f"_footer-{category}") for category in Category}


def render_email(
    *,
    kind: EmailKind,
    params: Mapping[str, str],
    to: str,
    from_address: str,
    unsubscribe_url: str,
    sender: SenderInfo,
    now: datetime,
) -> bytes:
    """Return the complete message (multipart/alternative, text then HTML) as 7-bit CRLF bytes.

    Raises ValueError for anything that could inject a header or break the message: control
    characters, not exactly one ASCII address, a malformed unsubscribe URL, missing or unknown
    params, a naive ``now``.
    """
    recipient = _mailbox_header("To", to)
    author = _mailbox_header("From", from_address)
    _check_unsubscribe_url(unsubscribe_url)
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    values = _values(kind, params, unsubscribe_url, sender)
    pair, footer = _BODIES[kind.name], _FOOTERS[kind.category]

    text = pair.text.substitute(values) + "\n" + footer.text.substitute(values)
    escaped = {name: html.escape(value, quote=True) for name, value in values.items()}
    html_body = _LAYOUT.substitute(
        subject=html.escape(kind.subject, quote=True),
        content=pair.html.substitute(escaped),
        footer=footer.html.substitute(escaped),
    )

    message = EmailMessage(policy=_POLICY)
    message["From"] = author
    message["To"] = recipient
    message["Subject"] = kind.subject
    message["Date"] = format_datetime(now)
    message.set_raw("List-Unsubscribe", f"<{unsubscribe_url}>")
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    # base64 keeps the UTF-8 bodies 7-bit (the SMTP policy would otherwise send 8bit) and is
    # a third the size of quoted-printable for Japanese text.
    message.set_content(text, subtype="plain", charset="utf-8", cte="base64")
    message.add_alternative(html_body, subtype="html", charset="utf-8", cte="base64")
    # add_alternative gives the new part its own MIME-Version; only the top level needs one.
    for part in message.iter_parts():
        del part["MIME-Version"]
    return message.as_bytes()


def _refuse_controls(name: str, value: str) -> None:
    if any(unicodedata.category(char) in _FORBIDDEN_CATEGORIES for char in value):
        raise ValueError(f"{name} contains a control character or line break")


def _mailbox_header(name: str, value: str) -> AddressHeader:
    _refuse_controls(name, value)
    header = _POLICY.header_factory(name, value)
    # Both always hold for To and From; the checks tell mypy what the registry returns.
    if not isinstance(header, AddressHeader) or not isinstance(header, BaseHeader):
        raise TypeError(f"{name} is not an address header")
    if header.defects or len(header.addresses) != 1:
        raise ValueError(f"{name} must hold exactly one valid address")
    address = header.addresses[0]
    # SES takes 7-bit addresses only; an IDN domain must arrive as punycode (A-label).
    if not address.username or not address.domain or not address.addr_spec.isascii():
        raise ValueError(f"{name} must be an ASCII address with a domain")
    return header


def _check_unsubscribe_url(url: str) -> None:
    _refuse_controls("unsubscribe_url", url)
    # Inside <...> a space or angle bracket would end or split the URL (RFC 2369).
    if not url or not all("!" <= char <= "~" and char not in '<>"' for char in url):
        raise ValueError("unsubscribe_url must be a non-empty ASCII URL without spaces or <>")
    if len(f"List-Unsubscribe: <{url}>") > _MAX_LINE:
        raise ValueError("unsubscribe_url is too long for one header line")


def _values(
    kind: EmailKind, params: Mapping[str, str], unsubscribe_url: str, sender: SenderInfo
) -> dict[str, str]:
    missing = set(kind.params) - params.keys()
    unknown = params.keys() - set(kind.params)
    if missing or unknown:
        raise ValueError(
            f"{kind.name}: missing params {sorted(missing)}, unknown params {sorted(unknown)}"
        )
    for name, value in params.items():
        # A line break in a link could forge extra lines in the plain-text body.
        _refuse_controls(name, value)
    return {
        **params,
        "unsubscribe_url": unsubscribe_url,
        "sender_name": sender.name,
        "sender_postal_address": sender.postal_address,
        "sender_contact": sender.contact,
    }
