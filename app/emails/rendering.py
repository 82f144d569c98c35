"""Render a catalogue mail into the raw RFC 5322 message that SES sends.

Pure: no I/O after import. The templates (package data in ``app/emails/templates``) are read
once, at import, so a missing file stops the service at start-up rather than on the first send.
Each kind has ``<kind>.txt`` and ``<kind>.html`` (the body, in the seed's wording); each category
has a footer, ``_footer-<category>.*``; ``_layout.html`` wraps the HTML part.
"""

from __future__ import annotations

import base64
import functools
import html
import random
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import AddressHeader, BaseHeader
from email.utils import format_datetime, parsedate_to_datetime
from importlib.resources import files
from string import Template

from app.contact import contact_html
from app.emails.catalog import EMAIL_KINDS, EmailKind
from app.models import Category
from app.recipients.addresses import AddressError, wire_address

# SMTP: CRLF line ends, RFC 2047 words for non-ASCII headers, folding at 78 columns.
# refold_source="none" only affects headers stored with set_raw: List-Unsubscribe must stay one
# unbroken <URL>; the default policy turns a long URL into encoded words no client understands.
_POLICY = policy.SMTP.clone(refold_source="none")
# RFC 5322 section 2.1.1: at most 998 octets per line, CRLF excluded.
_MAX_LINE = 998
# C0/C1 controls (CR, LF, NUL, NEL, ...) and the Unicode line and paragraph separators:
# the Unicode categories Cc, Zl and Zp, which hold exactly these code points.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Printable ASCII but '"', '<' and '>'.
_URL_IN_ANGLES = re.compile(r"[!#-;=?-~]+")


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


@dataclass(frozen=True)
class RenderedParts:
    """What a mail says: its subject and both bodies (``render_email`` wraps them in MIME;
    ``POST /emails/<type>/preview`` shows them)."""

    subject: str
    text: str
    html: str


def render_parts(
    *,
    kind: EmailKind,
    params: Mapping[str, str],
    unsubscribe_url: str,
    sender: SenderInfo,
) -> RenderedParts:
    """The subject, text and HTML of a mail. Raises ValueError as ``render_email`` does."""
    _check_unsubscribe_url(unsubscribe_url)
    values = _values(kind, params, unsubscribe_url, sender)
    pair, footer = _BODIES[kind.name], _FOOTERS[kind.category]

    text = pair.text.substitute(values) + "\n" + footer.text.substitute(values)
    escaped = {name: html.escape(value, quote=True) for name, value in values.items()}
    escaped["sender_contact_html"] = contact_html(sender.contact, link_style="color:#1d4ed8;")
    html_body = _LAYOUT.substitute(
        subject=html.escape(kind.subject, quote=True),
        content=pair.html.substitute(escaped),
        footer=footer.html.substitute(escaped),
    )
    return RenderedParts(subject=kind.subject, text=text, html=html_body)


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
    recipient = _to_line(to)
    author = _from_line(from_address)
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    parts = render_parts(kind=kind, params=params, unsubscribe_url=unsubscribe_url, sender=sender)
    text, html_body = parts.text, parts.html

    boundary = _boundary()
    return b"".join(
        (
            author,
            recipient,
            _subject_line(kind.subject),
            # As the email package writes it: parsed back, then formatted again.
            _date_line(format_datetime(now)),
            b"List-Unsubscribe: <%s>\r\n" % unsubscribe_url.encode("ascii"),
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
            b"MIME-Version: 1.0\r\n",
            b'Content-Type: multipart/alternative;\r\n boundary="%s"\r\n\r\n' % boundary,
            b"--%s\r\n" % boundary,
            _text_part("plain", text),
            b"\r\n--%s\r\n" % boundary,
            _text_part("html", html_body),
            b"\r\n--%s--\r\n" % boundary,
        )
    )


# The message is assembled here byte for byte as the email package would generate it
# (EmailMessage with the SMTP policy, set_content(cte="base64"), as_bytes()), which took
# 3 ms a mail, most of the worker's time; only the headers that vary are still parsed and
# folded by the email package. tests/emails/test_rendering.py checks the wire format.


def _boundary() -> bytes:
    # The email package's boundary: 15 '=', 19 random digits, '=='. The parts are base64 and
    # the headers ASCII words, so it cannot occur in them.
    return b"=" * 15 + b"%019d" % random.randrange(sys.maxsize) + b"=="  # noqa: S311


@functools.lru_cache(maxsize=16)
def _subject_line(subject: str) -> bytes:
    return _POLICY.fold_binary("Subject", _POLICY.header_factory("Subject", subject))


@functools.lru_cache(maxsize=16)
def _from_line(from_address: str) -> bytes:
    return _POLICY.fold_binary("From", _mailbox_header("From", from_address))  # type: ignore[arg-type]


@functools.lru_cache(maxsize=8)
def _date_line(date: str) -> bytes:
    # As the email package writes it: parsed back, then formatted again. Keyed by the text,
    # which holds the offset (equal instants in two zones are equal datetimes); a worker
    # sends many mails within one second.
    return b"Date: %s\r\n" % format_datetime(parsedate_to_datetime(date)).encode()


def _text_part(subtype: str, content: str) -> bytes:
    # set_content(cte="base64"): lines joined with CRLF (and one after the last), then
    # base64 of 57-byte pieces, one 76-character line each.
    data = b"\r\n".join(content.encode("utf-8").splitlines()) + b"\r\n"
    encoded = base64.b64encode(data)
    encoded = b"".join(encoded[i : i + 76] + b"\r\n" for i in range(0, len(encoded), 76))
    return (
        b'Content-Type: text/%s; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n%s" % (subtype.encode(), encoded)
    )


def _refuse_controls(name: str, value: str) -> None:
    if _FORBIDDEN.search(value):
        raise ValueError(f"{name} contains a control character or line break")


def _to_line(to: str) -> bytes:
    # The one address rule (app/recipients/addresses.py): a bare addr-spec, its local part
    # quoted only when it is not a dot-atom (legacy docomo/au addresses). It has no
    # whitespace, so the email package would not fold it either; at most 254 characters, it
    # stays well inside the 998-octet line limit.
    try:
        return b"To: %s\r\n" % wire_address(to).encode("ascii")
    except AddressError as exc:
        raise ValueError(f"To: {exc}") from None


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
    if not _URL_IN_ANGLES.fullmatch(url):
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
