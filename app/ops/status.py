"""GET /status/reputation (rates, holds, SES account status) and GET /status/setup (doctor)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from app.api_keys import FORBIDDEN, AdminKeyDep
from app.config import Settings
from app.ops import doctor
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


class CheckRead(BaseModel):
    name: str = Field(
        description="`account`, `identity`, `dkim`, `mail_from`, `configuration_set`, "
        "`subscription`, `dns`, `database`, `public_url` (`ses` alone with the mailbox backend).",
        examples=["subscription"],
    )
    status: doctor.Status
    summary: str = Field(description="What was found.")
    fix: str | None = Field(description="What to do about it; null when ok.")


class SetupRead(BaseModel):
    ready: bool = Field(description="True when no check failed (warnings allowed).")
    checks: list[CheckRead] = Field(description="The checks of `tegami doctor`, in its order.")


@router.get(
    "/setup",
    response_model=SetupRead,
    summary="Ready to send? SES account, identity, events, SNS, DNS, schema, public URL",
    description="The same checks as `tegami doctor`, asked of SES, SNS and DNS now (a few "
    "seconds). Always 200: `ready` and each check's `status` say what is missing.",
    responses={401: {"description": "No or unknown API key."}, **FORBIDDEN},
)
async def setup(request: Request, caller: AdminKeyDep) -> SetupRead:
    settings: Settings = request.app.state.settings
    checks = await doctor.run_checks(
        settings,
        engine=request.app.state.engine,
        http=request.app.state.http,
        nameserver=settings.dns_nameserver,
    )
    return SetupRead(
        ready=doctor.ready(checks),
        checks=[
            CheckRead(name=c.name, status=c.status, summary=c.summary, fix=c.fix) for c in checks
        ],
    )
