"""API keys for the app: created by `tegami api-key create`, stored as SHA-256, sent as Bearer."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import SessionDep
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


_bearer = HTTPBearer(auto_error=False, description="An API key from `tegami api-key create`.")


async def require_caller(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("an API key is required (Authorization: Bearer ...)")
    caller = await find_caller(session, key=credentials.credentials)
    if caller is None:
        raise Unauthorized("the API key is not valid")
    return caller


ApiKeyDep = Annotated[Caller, Depends(require_caller)]
