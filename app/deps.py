"""What routes get from the running app, as typed dependencies.

The lifespan (app/main.py) builds these and keeps them on ``app.state``; this is the one module
that reads them there, so a route asks for ``SettingsDep`` or ``EngineDep`` by type. Adapters a
domain owns are read beside them (``SesListDep``, the SNS certificate store).

They are coroutines: FastAPI runs a plain function dependency in a thread. The hot paths (send,
SNS ingest) await them directly, which skips FastAPI's per-dependency resolution.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated

import httpx
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


async def get_sessionmaker(request: Request) -> async_sessionmaker[AsyncSession]:
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    return sessionmaker


async def get_http(request: Request) -> httpx.AsyncClient:
    """The app's HTTP client (no redirects followed, 5 s timeout)."""
    http: httpx.AsyncClient = request.app.state.http
    return http


async def get_outbox_wake(request: Request) -> asyncio.Event:
    """Set it and this process's worker looks at the outbox now."""
    wake: asyncio.Event = request.app.state.outbox_wake
    return wake


async def get_reputation_nudge(request: Request) -> Callable[[], None]:
    """Call it and the reputation guard evaluates now (a bounce or complaint just landed)."""
    nudge: Callable[[], None] = request.app.state.reputation.nudge
    return nudge


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
HttpDep = Annotated[httpx.AsyncClient, Depends(get_http)]
OutboxWakeDep = Annotated[asyncio.Event, Depends(get_outbox_wake)]
ReputationNudgeDep = Annotated[Callable[[], None], Depends(get_reputation_nudge)]
