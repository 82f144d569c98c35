"""GET /status/reputation (rates, holds, SES account status) and GET /status/setup (doctor)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from app.api_keys import StatusKeyDep
from app.deps import EngineDep, HttpDep, SettingsDep
from app.errors import error_responses
from app.reputation.watch import Level, ReputationWatch
from app.setup import doctor

router = APIRouter(prefix="/status", tags=["operations"])
# Each run asks SES, SNS and DNS: answers are kept this long, and calls meanwhile share them.
SETUP_CACHE_SECONDS = 30.0
_clock = time.monotonic


@dataclass
class _SetupCache:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    answer: SetupRead | None = None
    at: float = 0.0


async def get_setup_cache(request: Request) -> _SetupCache:
    """One per app, made at the first call."""
    cache: _SetupCache | None = getattr(request.app.state, "setup_cache", None)
    if cache is None:
        cache = request.app.state.setup_cache = _SetupCache()
    return cache


async def get_reputation(request: Request) -> ReputationWatch:
    watch: ReputationWatch = request.app.state.reputation
    return watch


SetupCacheDep = Annotated[_SetupCache, Depends(get_setup_cache)]
ReputationDep = Annotated[ReputationWatch, Depends(get_reputation)]


class RateRead(BaseModel):
    rate: float = Field(description="Share of the window's sends, 0 to 1.")
    level: Level = Field(
        description="`ok`, `warning`, `alert` or `critical`: the highest of the thresholds "
        "below that the rate reached."
    )
    warning_at: float = Field(description="Half of SES's review level: a warning in the log.")
    alert_at: float = Field(
        description="SES's review level: an alert, and optional mail held by the guard."
    )
    critical_at: float = Field(description="Where SES may pause the account's sending.")


class BounceRateRead(RateRead):
    hard_bounces: int


class ComplaintRateRead(RateRead):
    complaints: int


class SesAccountRead(BaseModel):
    sending_enabled: bool | None
    enforcement_status: str | None
    production_access: bool | None
    checked_at: datetime | None
    error: str | None


class ReputationRead(BaseModel):
    counted: bool = Field(description="Enough sends in the window for the rates to count.")
    sends_in_window: int
    window: int
    min_sends: int
    bounce: BounceRateRead
    complaint: ComplaintRateRead
    guard: bool = Field(description="TEGAMI_REPUTATION_GUARD: hold optional mail when over.")
    held_categories: list[str] = Field(description="Categories held now (`matching`).")
    ses_account: SesAccountRead = Field(description="SES's GetAccount; null fields: unknown.")
    evaluated_at: datetime | None


@router.get(
    "/reputation",
    response_model=ReputationRead,
    summary="Bounce and complaint rates, thresholds, holds, SES account status",
    description="Needs the `status` permission (admin and support keys).",
    operation_id="getReputation",
    responses=error_responses(401, 403, 503),
)
async def reputation(caller: StatusKeyDep, watch: ReputationDep) -> ReputationRead:
    # Fresh numbers, so an operator never reads a stale hold.
    await watch.evaluate()
    if watch.account.checked_at is None:
        await watch.poll_account()
    return ReputationRead.model_validate(watch.snapshot())


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
    description="The same checks as `tegami doctor`, asked of SES, SNS and DNS (a few "
    "seconds); the answer is kept for 30 s, so calls meanwhile ask nothing again. Always 200: "
    "`ready` and each check's `status` say what is missing.",
    operation_id="getSetup",
    responses=error_responses(401, 403, 503),
)
async def setup(
    caller: StatusKeyDep,
    cache: SetupCacheDep,
    settings: SettingsDep,
    engine: EngineDep,
    http: HttpDep,
) -> SetupRead:
    async with cache.lock:
        if cache.answer is None or _clock() - cache.at >= SETUP_CACHE_SECONDS:
            checks = await doctor.run_checks(
                settings,
                engine=engine,
                http=http,
                nameserver=settings.dns_nameserver,
            )
            cache.answer = SetupRead(
                ready=doctor.ready(checks),
                checks=[
                    CheckRead(name=c.name, status=c.status, summary=c.summary, fix=c.fix)
                    for c in checks
                ],
            )
            cache.at = _clock()
        return cache.answer
