"""The console's session: a signed, expiring cookie that holds the key's id (never the key),
and the CSRF token every form carries. Who may do what is decided here, in two functions.

The key is checked once, at sign-in; each request then reads the key by id and refuses the
session as soon as the key is revoked.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.api_keys import Caller
from app.config import Settings
from app.deps import get_settings
from app.models import ApiKey, ApiKeyScope, Permission

COOKIE = "tegami_console"
# Before sign-in there is no session: the sign-in form's token is a cookie of its own.
SIGN_IN_COOKIE = "tegami_console_sign_in"
PATH = "/console"

# The scopes that may sign in to the console (read mail, recipients, verdicts); only admin
# may change anything from it (may_change).
READERS = frozenset({"admin", "support"})


def may_read(caller: Caller) -> bool:
    """Whether this key may sign in to the console."""
    return caller.scope.value in READERS


def may_change(caller: Caller) -> bool:
    """Whether this key may lift, erase, release or discard from the console."""
    return caller.may(Permission.SUPPRESS) and caller.may(Permission.ERASE)


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    # Derived from a secret every deployment has, for this one use: no new setting to keep.
    secret = hmac.new(
        settings.address_hash_secret.get_secret_value().encode(),
        b"tegami console session",
        hashlib.sha256,
    ).hexdigest()
    return URLSafeTimedSerializer(secret, salt="tegami-console")


@dataclass(frozen=True)
class ConsoleSession:
    caller: Caller
    csrf: str

    @property
    def can_change(self) -> bool:
        return may_change(self.caller)


def _secure(settings: Settings) -> bool:
    return settings.public_base_url.startswith("https://")


def start(response: Response, *, settings: Settings, caller: Caller) -> None:
    value = _serializer(settings).dumps({"k": caller.key_id, "c": secrets.token_urlsafe(24)})
    response.set_cookie(
        COOKIE,
        value,
        max_age=settings.console_session_minutes * 60,
        path=PATH,
        secure=_secure(settings),
        httponly=True,
        samesite="strict",
    )
    response.delete_cookie(SIGN_IN_COOKIE, path=PATH)


def end(response: Response, *, settings: Settings) -> None:
    response.delete_cookie(
        COOKIE, path=PATH, secure=_secure(settings), httponly=True, samesite="strict"
    )


async def current(request: Request, session: AsyncSession) -> ConsoleSession | None:
    """The signed-in session, or None (no cookie, a bad or expired one, a revoked key, or a
    key no longer allowed)."""
    settings = await get_settings(request)
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        data = _serializer(settings).loads(raw, max_age=settings.console_session_minutes * 60)
        key_id, csrf = int(data["k"]), str(data["c"])
    except (BadSignature, KeyError, TypeError, ValueError):
        return None
    row = (
        await session.execute(
            select(ApiKey.id, ApiKey.name, ApiKey.scope).where(
                ApiKey.id == key_id, ApiKey.revoked_at.is_(None)
            )
        )
    ).one_or_none()
    if row is None:
        return None
    caller = Caller(key_id=row.id, name=row.name, scope=ApiKeyScope(row.scope))
    if not may_read(caller):
        return None
    return ConsoleSession(caller=caller, csrf=csrf)


def sign_in_token(request: Request) -> str:
    """The sign-in form's CSRF token (double submit: the cookie and the form must agree)."""
    return request.cookies.get(SIGN_IN_COOKIE) or secrets.token_urlsafe(24)


def keep_sign_in_token(response: Response, token: str, *, settings: Settings) -> None:
    response.set_cookie(
        SIGN_IN_COOKIE,
        token,
        max_age=3600,
        path=PATH,
        secure=_secure(settings),
        httponly=True,
        samesite="strict",
    )


def same_token(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))
