"""Address matching: one normal form, a keyed hash to find it by, and a mask for logs."""

from __future__ import annotations

import hashlib
import hmac


def normalize_address(address: str) -> str:
    # Mailbox providers ignore case in practice; a suppression must not be dodged by
    # `Taro@` vs `taro@`. Mail still goes to the address as the app gave it.
    return address.strip().lower()


def address_hash(address: str, *, secret: str) -> bytes:
    """Keyed, so a leaked table does not reveal which addresses it holds."""
    return hmac.new(
        secret.encode(), normalize_address(address).encode("utf-8"), hashlib.sha256
    ).digest()


def mask_address(address: str) -> str:
    """`taro@example.com` -> `t***@example.com`, for logs."""
    local, at, domain = address.strip().rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"
