"""API keys: created, listed, revoked and rotated by `tegami api-key`, stored as SHA-256, sent
as Bearer. This module owns the `api_key` table.

Scopes (`ApiKeyScope`): `app` sends, reads its own mails and manages opt-outs and erasure;
`admin` does everything, and alone may add or lift a suppression and read `/status`; `test`
is `app` whose mails never reach SES.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import NamedStatement, driver_connection
from app.errors import Forbidden, Unauthorized
from app.models import ApiKey, ApiKeyScope

KEY_PREFIX = "tgm_"


@dataclass(frozen=True)
class Caller:
    key_id: int
    name: str
    scope: ApiKeyScope

    @property
    def cause(self) -> str:
        """How the audit trail names this caller."""
        return f"api_key:{self.name}"

    @property
    def is_admin(self) -> bool:
        return self.scope is ApiKeyScope.ADMIN


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
        async with driver_connection(request.app.state.engine) as connection:
            found = await find_caller(connection, key_hash=key_hash)
        if found is None:
            raise Unauthorized("the API key is not valid")
        caller, valid_for = found
        cache.put(key_hash, caller, valid_for=valid_for)
    return caller


async def require_admin(caller: Annotated[Caller, Depends(require_caller)]) -> Caller:
    if not caller.is_admin:
        raise Forbidden(f"this needs an admin API key; {caller.name!r} is {caller.scope.value}")
    return caller


ApiKeyDep = Annotated[Caller, Depends(require_caller)]
"""Any valid key: app, admin or test."""

AdminKeyDep = Annotated[Caller, Depends(require_admin)]
"""An admin key; any other valid key gets 403 `forbidden`."""
