"""API keys for the app: created by `tegami api-key create`, stored as SHA-256, sent as Bearer."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import Unauthorized
from app.models import ApiKey

KEY_PREFIX = "tgm_"


@dataclass(frozen=True)
class Caller:
    key_id: int
    name: str

    @property
    def cause(self) -> str:
        """How the audit trail names this caller."""
        return f"api_key:{self.name}"


def hash_key(key: str) -> bytes:
    # Keys are 256 random bits: a plain hash is enough (no dictionary to guess from).
    return hashlib.sha256(key.encode()).digest()


async def create_key(session: AsyncSession, *, name: str) -> str:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(name=name, key_hash=hash_key(key)))
    await session.flush()
    return key


async def find_caller(session: AsyncSession, *, key: str) -> Caller | None:
    row = (
        await session.execute(
            select(ApiKey.id, ApiKey.name).where(
                ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)
            )
        )
    ).one_or_none()
    return Caller(key_id=row.id, name=row.name) if row else None


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

    def put(self, key_hash: bytes, caller: Caller) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # a handful of keys in practice; never grows unbounded
        self._entries[key_hash] = (time.monotonic() + self.ttl, caller)


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
        # A session of its own (not SessionDep), used only on a cache miss: the send path
        # then needs no yield dependency at all (see app/emails/router.py).
        sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
        async with sessionmaker() as session:
            caller = await find_caller(session, key=credentials.credentials)
        if caller is None:
            raise Unauthorized("the API key is not valid")
        cache.put(key_hash, caller)
    return caller


ApiKeyDep = Annotated[Caller, Depends(require_caller)]
