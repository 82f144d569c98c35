"""Recipient addresses: the one rule for what is accepted and how it is sent, one normal form,
a keyed hash to find it by, and a mask for logs. Pure.

What is accepted can be sent. The local part is atext and dots in any order: besides RFC 5322
dot-atoms that admits the legacy docomo and au addresses (``taro.@docomo.ne.jp``,
``a..b@docomo.ne.jp``, ``.c@ezweb.ne.jp``) that those carriers let users create until 2009.
Such a local part is not a dot-atom, so on the wire (``To:`` and SES's ``Destination``) it is
quoted as RFC 5322 allows (``"taro."@docomo.ne.jp``); a dot-atom is never quoted. The quoted
spelling is accepted as well and names the same mailbox. ASCII only: SES has no SMTPUTF8, so
an internationalised domain must come as punycode (``xn--...``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Final, NamedTuple

_ATEXT: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
# atext and dots in any order: a dot-atom, or a legacy carrier local part.
_LOOSE_LOCAL: Final = re.compile(rf"(?:{_ATEXT}|\.)+", re.ASCII)
_DOT_ATOM: Final = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*", re.ASCII)
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# At least two labels; the top one alphabetic or an IDN A-label.
_DOMAIN: Final = re.compile(
    rf"(?:{_LABEL}\.)+(?:[A-Za-z]{{2,63}}|xn--[A-Za-z0-9-]{{1,59}})", re.ASCII
)
# C0 and C1 controls (CR, LF, TAB, NUL, NEL, ...) and the Unicode line and paragraph separators.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# RFC 5321 section 4.5.3.1: 64 octets of local part (quotes included), 254 for the address.
MAX_LOCAL: Final = 64
MAX_ADDRESS: Final = 254


# The same rule as a JSON Schema pattern (ECMA and Python regex alike), for the OpenAPI document:
# a local part of atext and dots, bare or in double quotes, at most 62 characters so that its
# quoted wire form fits in 64; then the domain. With ``ADDRESS_SCHEMA_MAX_LENGTH`` every string
# that matches is accepted, and every string that does not is refused.
_LOOSE_LOCAL_CHAR: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]"
ADDRESS_PATTERN: Final = (
    rf'^(?:"{_LOOSE_LOCAL_CHAR}{{1,62}}"|{_LOOSE_LOCAL_CHAR}{{1,62}})@'
    rf"(?:{_LABEL}\.)+(?:[A-Za-z]{{2,63}}|xn--[A-Za-z0-9-]{{1,59}})$"
)
# 254 on the wire, where a legacy local part gains two quotes.
ADDRESS_SCHEMA_MAX_LENGTH: Final = MAX_ADDRESS - 2
ADDRESS_JSON_SCHEMA: Final[dict[str, str | int]] = {
    "pattern": ADDRESS_PATTERN,
    "maxLength": ADDRESS_SCHEMA_MAX_LENGTH,
}


class AddressError(ValueError):
    """Not an address tegami can send to; the message says why, for a 422."""


class Address(NamedTuple):
    local: str  # unquoted: `taro.` for both `taro.@x` and `"taro."@x`
    domain: str

    @property
    def wire(self) -> str:
        """The addr-spec for ``To:`` and SES's ``Destination``: quoted only when it must be."""
        if _DOT_ATOM.fullmatch(self.local):
            return f"{self.local}@{self.domain}"
        # The local part holds atext and dots only, so nothing inside needs a backslash.
        return f'"{self.local}"@{self.domain}'


def parse_address(value: str) -> Address:
    """The address as tegami sends it, or :class:`AddressError` saying why it cannot be."""
    if _CONTROL.search(value):
        raise AddressError("must not contain control characters or line breaks")
    if not value.isascii():
        raise AddressError(
            "must be ASCII (SES has no SMTPUTF8; write an internationalised domain as xn--...)"
        )
    local, at, domain = value.rpartition("@")
    if len(local) >= 2 and local[0] == local[-1] == '"':
        local = local[1:-1]
    if not at or not _LOOSE_LOCAL.fullmatch(local) or not _DOMAIN.fullmatch(domain):
        raise AddressError("not a valid email address (ASCII addr-spec, e.g. taro@example.com)")
    address = Address(local, domain)
    wire = address.wire
    if len(wire) - len(domain) - 1 > MAX_LOCAL or len(wire) > MAX_ADDRESS:
        raise AddressError(
            f"too long: at most {MAX_LOCAL} characters before the @ (quotes included) "
            f"and {MAX_ADDRESS} in all"
        )
    return address


def check_address(value: str) -> str:
    """Accept ``value`` unchanged if tegami can send to it (mail goes to it as the app gave it)."""
    parse_address(value)
    return value


def wire_address(value: str) -> str:
    """``taro.@docomo.ne.jp`` -> ``"taro."@docomo.ne.jp``; ``taro@example.com`` unchanged."""
    return parse_address(value).wire


def normalize_address(address: str) -> str:
    """The form suppression, opt-out and SES feedback match on, whichever spelling is given.

    Total (SES may report anything): trimmed, a quoted local part unquoted (``"taro."@x`` and
    ``taro.@x`` are one mailbox), lowercased. Mailbox providers ignore case in practice; a
    suppression must not be dodged by ``Taro@`` vs ``taro@``. Mail still goes to the address
    as the app gave it.
    """
    address = address.strip()
    local, at, domain = address.rpartition("@")
    if at and len(local) >= 2 and local[0] == local[-1] == '"':
        # RFC 5322 quoted-string: a backslash quotes the next character.
        local = re.sub(r"\\(.)", r"\1", local[1:-1], flags=re.DOTALL)
        address = f"{local}@{domain}"
    return address.lower()


def address_hash(address: str, *, secret: str) -> bytes:
    """Keyed, so a leaked table does not reveal which addresses it holds."""
    return hmac.new(
        secret.encode(), normalize_address(address).encode("utf-8"), hashlib.sha256
    ).digest()


def mask_address(address: str) -> str:
    """`taro@example.com` -> `t***@example.com`, for logs."""
    local, at, domain = normalize_address(address).rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


# What an erased address becomes wherever free text quoted it (bounce diagnostics, SES errors).
ERASED_MARK = "[erased]"


# What an address is made of, to tell where one ends in free text: `taro@example.com` must
# not match inside `kotaro@example.com` or `taro@example.com.au`.
_LOCAL_EDGE: Final = _LOOSE_LOCAL_CHAR
_DOMAIN_CHAR: Final = r"[A-Za-z0-9-]"


def quoted_address_pattern(address: str) -> str:
    """A regular expression (use it case-insensitively) for this address, and no other,
    wherever free text quotes it, in either spelling of a legacy carrier address:
    `taro.@x` or `"taro."@x`.

    The same text is a PostgreSQL ARE and a Python ``re`` pattern. Anchored at both ends: no
    address character may stand before the local part, and the domain may not go on (a
    sentence's closing dot may follow). The address is escaped, so its `.`, `+`, `$`, `*`...
    are literals; re.escape's backslashes mean "this character, literally" to PostgreSQL too.
    """
    local, _, domain = normalize_address(address).rpartition("@")
    local, domain = re.escape(local), re.escape(domain)
    return f'(?<!{_LOCAL_EDGE})(?:"{local}"|{local})@{domain}(?!{_DOMAIN_CHAR}|\\.{_DOMAIN_CHAR})'
