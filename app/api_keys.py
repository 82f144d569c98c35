"""API keys: created, listed, revoked and rotated by `tegami api-key`, stored as SHA-256, sent
as Bearer. This module owns the `api_key` table, and says what each scope may do.

What a scope may do is one table, ``PERMISSIONS``; a route names the one permission it needs
with a typed dependency (``SendKeyDep``, ``EraseKeyDep``, ...), and any other valid key gets
403 `forbidden` naming its scope and that permission. Which mails a key sees is
``Caller.may_see_mail``: an `app` key its own, a `test` key the test mails it sent, `admin`
and `support` every mail.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import NamedStatement, driver_connection
from app.deps import get_engine
from app.errors import Forbidden, Unauthorized
from app.models import ApiKey, ApiKeyScope, Permission

KEY_PREFIX = "tgm_"

# What each scope may do; every route of the API needs exactly one of these (tests/test_scopes.py
# holds each route to it).
PERMISSIONS: dict[ApiKeyScope, frozenset[Permission]] = {
    ApiKeyScope.ADMIN: frozenset(Permission),
    # The Next.js app: its users' mail, their settings screen, account deletion.
    ApiKeyScope.APP: frozenset(
        {
            Permission.SEND,
            Permission.READ_MAIL,
            Permission.READ_RECIPIENTS,
            Permission.OPT_OUT,
            Permission.ERASE,
        }
    ),
    # The support desk answers "why did my mail not arrive?": every mail and recipient, and
    # the rates and holds of /status (the console's chart). It sends and changes nothing: a
    # lift or an erasure is an operator's decision (admin).
    ApiKeyScope.SUPPORT: frozenset(
        {Permission.READ_MAIL, Permission.READ_RECIPIENTS, Permission.STATUS}
    ),
    # Staging and CI: a sandbox. It sends (never to SES) and reads the mails it sent; a real
    # person's history, consent (opt-outs) and data are out of its reach.
    ApiKeyScope.TEST: frozenset({Permission.SEND, Permission.READ_MAIL}),
}

# Scopes that see every key's mail (the others see the mails they sent).
_SEE_EVERY_MAIL = frozenset({ApiKeyScope.ADMIN, ApiKeyScope.SUPPORT})


@dataclass(frozen=True)
class Caller:
    key_id: int
    name: str
    scope: ApiKeyScope

    @property
    def cause(self) -> str:
        """How the audit trail names this caller."""
        return f"api_key:{self.name}"

    def may(self, permission: Permission) -> bool:
        return permission in PERMISSIONS[self.scope]

    @property
    def sees_every_mail(self) -> bool:
        """`admin` and `support`: a search of mail is not narrowed to this key's."""
        return self.scope in _SEE_EVERY_MAIL

    def may_see_mail(self, *, api_key_id: int | None, test: bool) -> bool:
        """Whether this key may read (or, with SEND, cancel) a mail sent with ``api_key_id``:
        any, for admin and support; its own for an app key; its own test mail for a test key.
        A mail it may not see is answered as if it did not exist (404)."""
        if self.sees_every_mail:
            return True
        if api_key_id != self.key_id:
            return False
        return test or self.scope is not ApiKeyScope.TEST


class ApiKeyError(Exception):
    """A key command that cannot be done; the message says why in one line."""


@dataclass(frozen=True)
class KeyInfo:
    name: str
    scope: ApiKeyScope
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    previous_key_expires_at: datetime | None


def hash_key(key: str) -> bytes:
    # Keys are 256 random bits: a plain hash is enough (no dictionary to guess from).
    return hashlib.sha256(key.encode()).digest()


def _new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def create_key(
    session: AsyncSession, *, name: str, scope: ApiKeyScope = ApiKeyScope.APP
) -> str:
    key = _new_key()
    created = await session.scalar(
        insert(ApiKey)
        .values(name=name, key_hash=hash_key(key), scope=scope.value)
        .on_conflict_do_nothing(index_elements=[ApiKey.name])
        .returning(ApiKey.id)
    )
    if created is None:
        raise ApiKeyError(f"an API key named {name!r} already exists (revoked keys keep theirs)")
    return key


async def list_keys(session: AsyncSession) -> list[KeyInfo]:
    rows = await session.execute(
        select(
            ApiKey.name,
            ApiKey.scope,
            ApiKey.created_at,
            ApiKey.last_used_at,
            ApiKey.revoked_at,
            ApiKey.previous_key_expires_at,
        ).order_by(ApiKey.created_at, ApiKey.id)
    )
    return [
        KeyInfo(
            name=row.name,
            scope=ApiKeyScope(row.scope),
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
            previous_key_expires_at=row.previous_key_expires_at,
        )
        for row in rows
    ]


async def revoke_key(session: AsyncSession, *, name: str) -> datetime:
    """Revoke the key (and a rotated predecessor still in its grace period); idempotent."""
    revoked_at: datetime | None = await session.scalar(
        update(ApiKey)
        .where(ApiKey.name == name)
        .values(revoked_at=func.coalesce(ApiKey.revoked_at, func.now()))
        .returning(ApiKey.revoked_at)
    )
    if revoked_at is None:
        raise ApiKeyError(f"no API key named {name!r}")
    return revoked_at


async def rotate_key(session: AsyncSession, *, name: str, grace: timedelta) -> str:
    """A new key for the same name and scope; the old one is accepted for `grace` more.

    A predecessor still in its grace period from an earlier rotation is replaced: only the
    last key before this one keeps working.
    """
    key = _new_key()
    rotated = await session.scalar(
        update(ApiKey)
        .where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
        .values(
            previous_key_hash=ApiKey.key_hash,
            previous_key_expires_at=func.now() + grace,
            key_hash=hash_key(key),
        )
        .returning(ApiKey.id)
    )
    if rotated is None:
        exists = await session.scalar(select(ApiKey.id).where(ApiKey.name == name))
        raise ApiKeyError(
            f"the API key {name!r} is revoked; create a new one"
            if exists
            else f"no API key named {name!r}"
        )
    return key


async def key_is_valid(session: AsyncSession, *, key: str) -> bool:
    """Whether `key` is the current, unrevoked key of some name (for `tegami dev`)."""
    found = await session.scalar(
        select(ApiKey.id).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )
    return found is not None


# One round trip on a cache miss: find the key (or a rotated predecessor in its grace period)
# and note its use, at most once a minute per key whatever the request rate and the number of
# processes. Updating a non-key column takes a lock that does not block the foreign-key checks
# of concurrent inserts into `message`.
_FIND_AND_TOUCH = NamedStatement.of(
    """
    WITH found AS (
        SELECT id, name, scope,
               CASE WHEN key_hash = :key_hash THEN NULL ELSE previous_key_expires_at END
                   AS expires_at
        FROM api_key
        WHERE revoked_at IS NULL
          AND (key_hash = :key_hash
               OR (previous_key_hash = :key_hash AND previous_key_expires_at > now()))
    ), touched AS (
        UPDATE api_key SET last_used_at = now()
        FROM found
        WHERE api_key.id = found.id
          AND (api_key.last_used_at IS NULL OR api_key.last_used_at < now() - interval '1 minute')
    )
    SELECT id, name, scope, EXTRACT(EPOCH FROM expires_at - now())::float8 AS seconds_left
    FROM found
    """
)


async def find_caller(
    connection: asyncpg.Connection, *, key_hash: bytes
) -> tuple[Caller, float | None] | None:
    """The caller of a valid key, and how many seconds it stays valid (None: until revoked)."""
    row = await connection.fetchrow(
        _FIND_AND_TOUCH.sql, *_FIND_AND_TOUCH.args({"key_hash": key_hash})
    )
    if row is None:
        return None
    caller = Caller(key_id=row["id"], name=row["name"], scope=ApiKeyScope(row["scope"]))
    return caller, row["seconds_left"]


# A valid key is looked up again at most this often: the send path then costs no database
# round trip for the key. A revoked key therefore keeps working for up to this many seconds
# in each process; unknown keys are never cached, so a new key works at once.
KEY_CACHE_SECONDS = 5.0


@dataclass
class KeyCache:
    """Callers of recently seen valid keys, by key hash; one per app (app.state)."""

    ttl: float = KEY_CACHE_SECONDS
    max_entries: int = 1000
    _entries: dict[bytes, tuple[float, Caller]] = field(default_factory=dict)

    def get(self, key_hash: bytes) -> Caller | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._entries[key_hash]
            return None
        return entry[1]

    def put(self, key_hash: bytes, caller: Caller, *, valid_for: float | None = None) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # a handful of keys in practice; never grows unbounded
        # A rotated key's predecessor leaves the cache when its grace period ends.
        ttl = self.ttl if valid_for is None else min(self.ttl, valid_for)
        self._entries[key_hash] = (time.monotonic() + ttl, caller)


def _key_cache(request: Request) -> KeyCache:
    cache: KeyCache | None = getattr(request.app.state, "api_key_cache", None)
    if cache is None:
        cache = request.app.state.api_key_cache = KeyCache()
    return cache


_bearer = HTTPBearer(auto_error=False, description="An API key from `tegami api-key create`.")


async def require_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("an API key is required (Authorization: Bearer ...)")
    cache = _key_cache(request)
    key_hash = hash_key(credentials.credentials)
    caller = cache.get(key_hash)
    if caller is None:
        # asyncpg's connection, used only on a cache miss: the send path then needs no yield
        # dependency at all (see app/emails/router.py).
        async with driver_connection(await get_engine(request)) as connection:
            found = await find_caller(connection, key_hash=key_hash)
        if found is None:
            raise Unauthorized("the API key is not valid")
        caller, valid_for = found
        cache.put(key_hash, caller, valid_for=valid_for)
    return caller


def _guard(permission: Permission) -> Any:
    async def require(caller: Annotated[Caller, Depends(require_caller)]) -> Caller:
        if not caller.may(permission):
            raise Forbidden(
                f"this needs the {permission.value!r} permission, which {caller.scope.value} "
                f"keys do not have (the key {caller.name!r})",
                scope=caller.scope.value,
                permission=permission.value,
            )
        return caller

    require.__name__ = f"require_{permission.value}"
    require.permission = permission  # type: ignore[attr-defined]  # read by tests/test_scopes.py
    return require


# One function per permission: FastAPI resolves a dependency once per request by identity.
_GUARDS = {permission: _guard(permission) for permission in Permission}


# Capitalized like Depends, which it stands for.
def Needs(permission: Permission) -> Any:
    """The dependency a route declares for the one permission it needs: the caller, or 401
    (no or unknown key), or 403 `forbidden` naming the key's scope and the permission."""
    return Depends(_GUARDS[permission])


def required_permission(call: Any) -> Permission | None:
    """The permission a dependency made by ``Needs`` checks; None for any other."""
    permission: Permission | None = getattr(call, "permission", None)
    return permission if _GUARDS.get(permission) is call else None  # type: ignore[arg-type]


SendKeyDep = Annotated[Caller, Needs(Permission.SEND)]
"""Send, batch, preview, cancel one's own mail: admin, app, test."""
ReadMailKeyDep = Annotated[Caller, Needs(Permission.READ_MAIL)]
"""Read a mail (which ones: ``Caller.may_see_mail``): admin, app, support, test."""
ReadRecipientsKeyDep = Annotated[Caller, Needs(Permission.READ_RECIPIENTS)]
"""Read a recipient's state and history: admin, app, support."""
OptOutKeyDep = Annotated[Caller, Needs(Permission.OPT_OUT)]
"""Set or lift an opt-out (the person's consent): admin, app."""
EraseKeyDep = Annotated[Caller, Needs(Permission.ERASE)]
"""Erase a person's data: admin, app."""
SuppressKeyDep = Annotated[Caller, Needs(Permission.SUPPRESS)]
"""Add or lift a suppression: admin."""
StatusKeyDep = Annotated[Caller, Needs(Permission.STATUS)]
"""Read /status (rates, holds, SES account, setup): admin, support."""
WebhooksKeyDep = Annotated[Caller, Needs(Permission.WEBHOOKS)]
"""Read the webhook deliveries: admin."""
