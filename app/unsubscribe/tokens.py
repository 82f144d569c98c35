"""The unsubscribe token codec: an HMAC-signed (recipient id, category, issue time); pure.

Layout (version 1), base64url without padding so that it fits a path segment::

    0x01 | recipient_id: u64 BE | issued_at: u32 BE | category: ascii [a-z_]{1,32} | mac: 16 bytes

mac = HMAC-SHA256(secret, DOMAIN + everything before the mac)[:16]. The category runs to the
mac, which has a fixed length, so no length byte is needed. The token holds no address and
does not expire (DESIGN.md, Unsubscribe): 50 characters for "matching", 82 at most.

Opting back in needs more than the token (DESIGN.md: it is consent): a resubscribe nonce,
``<expires_at>.<mac>``, that only the done page hands out, bound to that one token and valid
for ``RESUBSCRIBE_NONCE_SECONDS``. Its mac uses the same secrets under another domain.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

_VERSION = 1
# Domain separation: the same secret signing anything else can never yield a valid token.
_DOMAIN = b"tegami.unsubscribe.v1\x00"
_HEADER = struct.Struct(">BQI")
_MAC_LEN = 16
_CATEGORY = re.compile(r"[a-z_]{1,32}")
_MAX_RECIPIENT_ID = 2**63 - 1  # PostgreSQL bigint
_MAX_ISSUED_AT = 2**32 - 1  # u32 seconds: until 2106; a new version can widen it

# Long enough to read the done page and press its button; short enough that a page saved or
# scraped long ago cannot opt anyone back in.
RESUBSCRIBE_NONCE_SECONDS = 3600
# Replicas' clocks differ a little: a page made by one replica is checked by another.
_NONCE_CLOCK_SKEW = 300
_NONCE_DOMAIN = b"tegami.resubscribe.v1\x00"
_NONCE = re.compile(r"([0-9]{1,10})\.([A-Za-z0-9_-]{22})")

_MIN_RAW = _HEADER.size + 1 + _MAC_LEN
_MAX_RAW = _HEADER.size + 32 + _MAC_LEN
_MAX_TOKEN_CHARS = (_MAX_RAW * 8 + 5) // 6
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class UnsubscribeClaim:
    recipient_id: int
    category: str
    issued_at: int

    def __post_init__(self) -> None:
        # type() rather than isinstance(): True is an int too, and never a recipient.
        if type(self.recipient_id) is not int or not 0 < self.recipient_id <= _MAX_RECIPIENT_ID:
            raise ValueError("recipient_id must be a positive bigint")
        if not isinstance(self.category, str) or not _CATEGORY.fullmatch(self.category):
            raise ValueError("category must be 1-32 characters of [a-z_]")
        if type(self.issued_at) is not int or not 0 <= self.issued_at <= _MAX_ISSUED_AT:
            raise ValueError("issued_at must be unix seconds between 1970 and 2106")


def make_token(claim: UnsubscribeClaim, *, secret: str) -> str:
    """Sign ``claim`` with ``secret`` (the current one, first in the setting's list)."""
    if not secret:
        raise ValueError("an unsubscribe secret is required")
    body = _HEADER.pack(_VERSION, claim.recipient_id, claim.issued_at) + claim.category.encode()
    return _b64encode(body + _mac(body, secret))


def read_token(token: str, *, secrets: Sequence[str]) -> UnsubscribeClaim | None:
    """The claim of a token signed with any of ``secrets``; None for any other token.

    Whatever the token, this never raises; only a misconfigured ``secrets`` does.
    """
    _check_secrets(secrets)
    raw = _b64decode(token)
    if raw is None or not _MIN_RAW <= len(raw) <= _MAX_RAW or raw[0] != _VERSION:
        return None
    body, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
    # Every secret is tried, so the time taken does not say which one matched.
    valid = False
    for secret in secrets:
        valid |= hmac.compare_digest(mac, _mac(body, secret))
    if not valid:
        return None
    _, recipient_id, issued_at = _HEADER.unpack_from(body)
    try:
        category = body[_HEADER.size :].decode("ascii")
        return UnsubscribeClaim(recipient_id, category, issued_at)
    except ValueError:  # UnicodeDecodeError included; only reachable with a leaked secret
        return None


def make_resubscribe_nonce(token: str, *, expires_at: int, secret: str) -> str:
    """The nonce of the done page's 「配信を再開する」 form for ``token``, good until
    ``expires_at`` (unix seconds), signed with ``secret`` (the current one)."""
    if not secret:
        raise ValueError("an unsubscribe secret is required")
    if type(expires_at) is not int or not 0 <= expires_at <= _MAX_ISSUED_AT:
        raise ValueError("expires_at must be unix seconds between 1970 and 2106")
    return f"{expires_at}.{_b64encode(_nonce_mac(token, expires_at, secret))}"


def resubscribe_nonce_valid(nonce: str, *, token: str, now: int, secrets: Sequence[str]) -> bool:
    """Whether ``nonce`` was made for ``token`` with one of ``secrets`` and has not expired
    at ``now``. Never raises for any nonce or token; only a misconfigured ``secrets`` does."""
    _check_secrets(secrets)
    if not isinstance(nonce, str) or not isinstance(token, str) or len(token) > _MAX_TOKEN_CHARS:
        return False
    found = _NONCE.fullmatch(nonce)
    if found is None:
        return False
    expires_at = int(found[1])
    # One spelling only (no leading zeros), and never longer-lived than this code mints.
    if (
        found[1] != str(expires_at)
        or not now < expires_at <= now + RESUBSCRIBE_NONCE_SECONDS + _NONCE_CLOCK_SKEW
    ):
        return False
    mac = _b64decode_exact(found[2])
    if mac is None:
        return False
    valid = False
    for secret in secrets:
        valid |= hmac.compare_digest(mac, _nonce_mac(token, expires_at, secret))
    return valid


def _nonce_mac(token: str, expires_at: int, secret: str) -> bytes:
    message = (
        _NONCE_DOMAIN + token.encode("utf-8", "backslashreplace") + b"\x00" + b"%d" % expires_at
    )
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()[:_MAC_LEN]


def _b64decode_exact(text: str) -> bytes | None:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if _b64encode(raw) == text else None


def _check_secrets(secrets: Sequence[str]) -> None:
    # Loud, because a wrong setting would otherwise turn every link into a silent 404.
    if isinstance(secrets, str):  # a str is a Sequence[str]: each character would be a secret
        raise TypeError("secrets must be a list of secrets, not one string")
    if not secrets or not all(isinstance(secret, str) and secret for secret in secrets):
        raise ValueError("secrets must be a non-empty list of non-empty strings")


def _mac(body: bytes, secret: str) -> bytes:
    return hmac.new(secret.encode(), _DOMAIN + body, hashlib.sha256).digest()[:_MAC_LEN]


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(token: object) -> bytes | None:
    # Length first: nothing oversized reaches the regex or the decoder.
    if not isinstance(token, str) or not 0 < len(token) <= _MAX_TOKEN_CHARS:
        return None
    if not _TOKEN_CHARS.fullmatch(token) or len(token) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    # Unused low bits must be zero: one token, one spelling.
    return raw if _b64encode(raw) == token else None
