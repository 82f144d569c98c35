"""GET /status/reputation: rates, thresholds, holds and SES's own account status."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.api_keys import FORBIDDEN, AdminKeyDep
from app.ops.reputation import ReputationWatch

router = APIRouter(prefix="/status", tags=["operations"])


@router.get(
    "/reputation",
    summary="Bounce and complaint rates, thresholds, holds, SES account status",
    description="Needs an admin key.",
    responses={401: {"description": "No or unknown API key."}, **FORBIDDEN},
)
async def reputation(request: Request, caller: AdminKeyDep) -> dict[str, Any]:
    watch: ReputationWatch = request.app.state.reputation
    # Fresh numbers, so an operator never reads a stale hold.
    await watch.evaluate()
    if watch.account.checked_at is None:
        await watch.poll_account()
    return watch.snapshot()
