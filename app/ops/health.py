"""Liveness and readiness for App Runner's health check and for operators."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import select

from app.deps import EngineDep

router = APIRouter(tags=["health"])


class HealthRead(BaseModel):
    status: Literal["ok"]


class ReadinessRead(BaseModel):
    status: Literal["ok", "unavailable"]
    database: Literal["ok", "unreachable"]


@router.get("/healthz", summary="The process is up", operation_id="getHealth")
async def healthz() -> HealthRead:
    return HealthRead(status="ok")


@router.get(
    "/readyz",
    response_model=ReadinessRead,
    summary="The database answers",
    operation_id="getReadiness",
    responses={
        # A probe's answer, not an error of the API: the same body, with the state in it.
        503: {"model": ReadinessRead, "description": "The database cannot be reached."}
    },
)
async def readyz(engine: EngineDep) -> JSONResponse:
    try:
        async with asyncio.timeout(3):
            async with engine.connect() as conn:
                await conn.execute(select(1))
    except Exception:
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})
