"""SES's own account-level suppression list, kept in step with tegami's suppressions.

SES drops mail to an address on that list without trying (bounce subtype
``OnAccountSuppressionList``), so a suppression lifted in tegami but kept by SES would bounce
again at once. Lifting and erasing remove the address there too; ``import_from_ses`` brings
SES's list into tegami. The writes to tegami's tables stay in ``service``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import AppError
from app.models import SuppressionReason
from app.recipients import service
from app.recipients.addresses import address_hash, normalize_address

if TYPE_CHECKING:
    from types_aiobotocore_sesv2 import SESV2Client

log = logging.getLogger(__name__)

# SES's reasons, as tegami's.
REASONS = {"BOUNCE": SuppressionReason.HARD_BOUNCE, "COMPLAINT": SuppressionReason.COMPLAINT}


class SesListOutcome(StrEnum):
    REMOVED = "removed"  # SES held the address; it no longer does
    NOT_LISTED = "not_listed"  # SES did not hold it
    NO_SES = "no_ses"  # the mailbox backend: there is no SES list to update
    FAILED = "failed"  # SES could not be asked; its list may still hold the address


class SesUnavailable(AppError):
    status_code = 502
    code = "ses_unavailable"


@dataclass(frozen=True)
class SesListEntry:
    address: str
    reason: str
    last_update: datetime | None


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{error.get('Code', 'error')} (HTTP {status})"
    return type(exc).__name__


class SesSuppressionList:
    """The list through SES v2; ``client`` None when mail does not go through SES."""

    def __init__(self, client: SESV2Client | None) -> None:
        self._client = client

    @property
    def available(self) -> bool:
        return self._client is not None

    async def remove(self, address: str) -> SesListOutcome:
        """Take ``address`` off SES's list; SesUnavailable when SES could not be asked.

        Tried as given, then in tegami's normal form: SES may hold either spelling.
        """
        if self._client is None:
            return SesListOutcome.NO_SES
        outcome = await self._remove(address.strip())
        if outcome is SesListOutcome.NOT_LISTED and normalize_address(address) != address.strip():
            outcome = await self._remove(normalize_address(address))
        return outcome

    async def _remove(self, address: str) -> SesListOutcome:
        assert self._client is not None
        try:
            await self._client.delete_suppressed_destination(EmailAddress=address)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NotFoundException":
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
