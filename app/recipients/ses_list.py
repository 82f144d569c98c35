"""SES's own account-level suppression list, kept in step with tegami's suppressions.

SES drops mail to an address on that list without trying (bounce subtype
``OnAccountSuppressionList``), so a suppression lifted in tegami but kept by SES would bounce
again at once. Lifting and erasing remove the address there too, under each spelling SES may
hold (``taro.@docomo.ne.jp`` and the quoted ``"taro."@docomo.ne.jp`` tegami sends to);
``import_from_ses`` brings SES's list into tegami (its writes stay in ``service``).

The owner of ``ses_list_removal``: an erasure queues the removal in its own transaction, so it
survives SES being away (or the process dying) and a background loop takes it from there
(``retry_removals_forever``); the address is kept only until SES has let it go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

from botocore.exceptions import BotoCoreError, ClientError
from fastapi import Depends, Request
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app import aws
from app.errors import AppError, ErrorCode
from app.models import SesListRemoval, SuppressionReason
from app.recipients import service
from app.recipients.addresses import (
    AddressError,
    address_hash,
    mask_address,
    normalize_address,
    wire_address,
)

if TYPE_CHECKING:
    from types_aiobotocore_sesv2 import SESV2Client

log = logging.getLogger(__name__)

# SES's reasons, as tegami's.
REASONS = {"BOUNCE": SuppressionReason.HARD_BOUNCE, "COMPLAINT": SuppressionReason.COMPLAINT}


class SesListOutcome(StrEnum):
    REMOVED = "removed"  # SES held the address; it no longer does
    NOT_LISTED = "not_listed"  # SES did not hold it
    NO_SES = "no_ses"  # the mailbox backend: there is no SES list to update
    # SES could not be asked: an erasure's removal waits in ses_list_removal and is retried
    PENDING = "pending"


class SesUnavailable(AppError):
    status_code = 502
    code = ErrorCode.SES_UNAVAILABLE


@dataclass(frozen=True)
class SesListEntry:
    address: str
    reason: str
    last_update: datetime | None


def _describe(exc: Exception) -> str:
    refused = aws.refusal(exc)
    return str(refused) if refused is not None else type(exc).__name__


class SesSuppressionList:
    """The list through SES v2; ``client`` None when mail does not go through SES."""

    def __init__(self, client: SESV2Client | None) -> None:
        self._client = client

    @property
    def available(self) -> bool:
        return self._client is not None

    async def remove(self, address: str) -> SesListOutcome:
        """Take ``address`` off SES's list under every spelling; SesUnavailable when SES could
        not be asked (each removal is idempotent: a retry starts again from the first)."""
        if self._client is None:
            return SesListOutcome.NO_SES
        outcome = SesListOutcome.NOT_LISTED
        for spelling in spellings(address):
            if await self._remove(spelling) is SesListOutcome.REMOVED:
                outcome = SesListOutcome.REMOVED
        return outcome

    async def _remove(self, address: str) -> SesListOutcome:
        assert self._client is not None
        try:
            await self._client.delete_suppressed_destination(EmailAddress=address)
        except ClientError as exc:
            if aws.refusal(exc).code == "NotFoundException":
                return SesListOutcome.NOT_LISTED
            raise SesUnavailable(
                f"SES's suppression list could not be updated: {_describe(exc)}"
            ) from exc
        except (BotoCoreError, OSError, TimeoutError) as exc:
            raise SesUnavailable(
                f"SES's suppression list could not be updated: {_describe(exc)}"
            ) from exc
        return SesListOutcome.REMOVED

    async def entries(self) -> AsyncIterator[SesListEntry]:
        """Every address on SES's list, page by page (SesUnavailable on any failure)."""
        if self._client is None:
            return
        token: str | None = None
        while True:
            try:
                page = await (
                    self._client.list_suppressed_destinations(NextToken=token)
                    if token
                    else self._client.list_suppressed_destinations()
                )
            except (ClientError, BotoCoreError, OSError, TimeoutError) as exc:
                raise SesUnavailable(
                    f"SES's suppression list could not be read: {_describe(exc)}"
                ) from exc
            for summary in page.get("SuppressedDestinationSummaries", []):
                yield SesListEntry(
                    address=summary["EmailAddress"],
                    reason=str(summary.get("Reason", "")),
                    last_update=summary.get("LastUpdateTime"),
                )
            token = page.get("NextToken")
            if not token:
                return


def spellings(address: str) -> list[str]:
    """Each form SES's list may hold the address in: as given, tegami's normal form, and the
    quoted wire form mail went to (a bounce lists that one): `taro.@docomo.ne.jp` and
    `"taro."@docomo.ne.jp` are one mailbox to tegami, two entries to SES."""
    normal = normalize_address(address)
    forms = [address.strip(), normal]
    with contextlib.suppress(AddressError):
        forms.append(wire_address(normal))
    return list(dict.fromkeys(forms))


# -- removals that wait for SES ----------------------------------------------------------

# Backoff of a removal SES keeps refusing: from TEGAMI_SES_LIST_RETRY_SECONDS, doubling, to this.
MAX_RETRY_SECONDS = 3600.0
_CLAIM_BATCH = 100


async def queue_removal(session: AsyncSession, *, address: str, retry_seconds: float) -> int:
    """Record, in the caller's transaction, that ``address`` must leave SES's list. Not due
    before ``retry_seconds``: the caller tries at once after its commit (``removed``)."""
    statement = (
        insert(SesListRemoval)
        .values(address=address, next_attempt_at=func.now() + timedelta(seconds=retry_seconds))
        .returning(SesListRemoval.id)
    )
    return (await session.execute(statement)).scalar_one()


async def removed(session: AsyncSession, *, removal_id: int) -> None:
    """SES let the address go: tegami forgets it here too."""
    await session.execute(delete(SesListRemoval).where(SesListRemoval.id == removal_id))


@dataclass(frozen=True)
class _Due:
    id: int
    address: str
    attempts: int


async def _claim_due(engine: AsyncEngine, *, retry_seconds: float) -> list[_Due]:
    """The due removals, each pushed to its next retry as it is claimed (no lock is held over
    the call to SES; a replica that dies mid-call leaves it due again then)."""
    due = (
        select(SesListRemoval.id)
        .where(SesListRemoval.next_attempt_at <= func.now())
        .order_by(SesListRemoval.next_attempt_at)
        .limit(_CLAIM_BATCH)
        .with_for_update(skip_locked=True)
        .subquery()
    )
    backoff = func.least(retry_seconds * func.power(2, SesListRemoval.attempts), MAX_RETRY_SECONDS)
    claimed = (
        update(SesListRemoval)
        .where(SesListRemoval.id == due.c.id)
        .values(
            attempts=SesListRemoval.attempts + 1,
            next_attempt_at=func.now() + func.make_interval(0, 0, 0, 0, 0, 0, backoff),
        )
        .returning(SesListRemoval.id, SesListRemoval.address, SesListRemoval.attempts)
    )
    async with engine.begin() as conn:
        rows = await conn.execute(claimed)
        return [_Due(id=r.id, address=r.address, attempts=r.attempts) for r in rows]


async def retry_due_removals(
    engine: AsyncEngine, ses_list: SesSuppressionList, *, retry_seconds: float
) -> int:
    """Try each due removal once; how many SES let go."""
    done = 0
    for due in await _claim_due(engine, retry_seconds=retry_seconds):
        try:
            outcome = await ses_list.remove(due.address)
        except SesUnavailable as exc:
            async with engine.begin() as conn:
                await conn.execute(
                    update(SesListRemoval)
                    .where(SesListRemoval.id == due.id)
                    .values(last_error=exc.message)
                )
            log.warning(
                "an erased address is still on SES's suppression list; tried again later",
                extra={
                    "event": "ses_suppression_list_removal_failed",
                    "address": mask_address(due.address),
                    "attempts": due.attempts,
                    "error": exc.message,
                },
            )
            continue
        async with engine.begin() as conn:
            await conn.execute(delete(SesListRemoval).where(SesListRemoval.id == due.id))
        done += 1
        log.info(
            "an erased address left SES's suppression list",
            extra={
                "event": "ses_suppression_list_removed",
                "address": mask_address(due.address),
                "outcome": outcome.value,
                "attempts": due.attempts,
            },
        )
    return done


async def retry_removals_forever(
    engine: AsyncEngine,
    ses_list: SesSuppressionList,
    *,
    retry_seconds: float,
    stopping: asyncio.Event,
) -> None:
    """Every ``retry_seconds``, the removals that are due (any replica may run this)."""
    while not stopping.is_set():
        try:
            await retry_due_removals(engine, ses_list, retry_seconds=retry_seconds)
        except Exception as exc:  # the database may be away: next round
            log.warning(
                "SES suppression list removals could not be read",
                extra={"event": "ses_suppression_list_retry_failed", "error": repr(exc)},
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=retry_seconds)


@dataclass(frozen=True)
class ImportResult:
    imported: int
    known: int


async def import_from_ses(
    session: AsyncSession, ses_list: SesSuppressionList, *, secret: str
) -> ImportResult:
    """Suppress in tegami every address on SES's list; idempotent. The caller commits."""
    imported = known = 0
    async for entry in ses_list.entries():
        created = await service.import_ses_suppression(
            session,
            address_hash=address_hash(entry.address, secret=secret),
            reason=REASONS.get(entry.reason, SuppressionReason.HARD_BOUNCE),
            ses_reason=entry.reason,
            listed_at=entry.last_update,
        )
        if created:
            imported += 1
        else:
            known += 1
    return ImportResult(imported=imported, known=known)


async def get_ses_list(request: Request) -> SesSuppressionList:
    """The app's client of SES's account suppression list (built by the lifespan)."""
    ses_list: SesSuppressionList = request.app.state.ses_suppression_list
    return ses_list


SesListDep = Annotated[SesSuppressionList, Depends(get_ses_list)]
