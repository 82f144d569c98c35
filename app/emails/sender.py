"""Handing a rendered mail to SES (or, in development, to a local mailbox).

``classify_ses_error`` is the one place that decides retry, pause or give up.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from botocore.exceptions import BotoCoreError, ClientError

from app.recipients.addresses import wire_address

if TYPE_CHECKING:
    from types_aiobotocore_sesv2 import SESV2Client

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    RETRY = "retry"  # try again later: nothing is known to be wrong with the mail
    THROTTLED = "throttled"  # retry, and SES asks us to slow down
    PAUSED = "paused"  # about the account, not the mail: stop every worker until SES takes mail
    PERMANENT = "permanent"  # SES will never take this mail: fail it with the reason


# SES v2 error codes (https://docs.aws.amazon.com/ses/latest/APIReference-V2/API_SendEmail.html)
# and the errors every AWS API answers for credentials and signatures.
_THROTTLED = {
    "TooManyRequestsException",
    "Throttling",
    "ThrottlingException",
}
# The account, its credentials or its configuration: every mail would fail the same way, and
# an operator can mend it (a policy, a key, a configuration set, SES's own review).
_ACCOUNT = {
    "SendingPausedException",
    "AccountSuspendedException",
    "MailFromDomainNotVerifiedException",
    "LimitExceededException",  # the daily sending quota
    "AccessDeniedException",
    "AccessDenied",
    "ExpiredTokenException",
    "ExpiredToken",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "RequestExpired",
    "NotFoundException",  # a configuration set that does not exist
}
# This mail: SES will never take it as it is.
_MESSAGE = {
    "MessageRejected",
    "InvalidParameterValue",
    "BadRequestException",
}


def classify_ses_error(code: str, http_status: int | None) -> Outcome:
    """Sort an SES error by scope: the mail (fail it), the account (pause sending), or
    neither known (retry with backoff; an unlisted error never fails mail)."""
    if code in _THROTTLED or http_status == 429:
        return Outcome.THROTTLED
    if code in _ACCOUNT or http_status in (401, 403):
        return Outcome.PAUSED
    if code in _MESSAGE:
        return Outcome.PERMANENT
    return Outcome.RETRY


class SendError(Exception):
    def __init__(self, outcome: Outcome, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.outcome = outcome
        self.code = code
        self.message = message


@dataclass(frozen=True)
class OutgoingMail:
    raw: bytes
    to: str
    from_address: str
    tags: dict[str, str]


class Sender(Protocol):
    async def send(self, mail: OutgoingMail) -> str:
        """Hand the mail over; return the provider's message id or raise SendError."""

    async def max_send_rate(self) -> float | None:
        """Sends per second the provider allows, when it says."""

    async def account_status(self) -> dict[str, Any]:
        """SES GetAccount's answer (SendingEnabled, EnforcementStatus, ...)."""


class SesSender:
    def __init__(self, client: SESV2Client, *, configuration_set: str | None) -> None:
        self._client = client
        self._configuration_set = configuration_set

    @property
    def client(self) -> SESV2Client:
        """The SES v2 client, for SES calls other than sending (the suppression list)."""
        return self._client

    async def send(self, mail: OutgoingMail) -> str:
        extra: dict[str, str] = {}
        if self._configuration_set:
            extra["ConfigurationSetName"] = self._configuration_set
        try:
            answer = await self._client.send_email(
                FromEmailAddress=mail.from_address,
                # Quoted as in the To: line when the local part is not a dot-atom.
                Destination={"ToAddresses": [wire_address(mail.to)]},
                Content={"Raw": {"Data": mail.raw}},
                EmailTags=[{"Name": k, "Value": v} for k, v in mail.tags.items()],
                **extra,  # type: ignore[arg-type]
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            raise SendError(
                classify_ses_error(code, status), code, str(error.get("Message", ""))
            ) from exc
        except (BotoCoreError, OSError, TimeoutError) as exc:
            # Network trouble or timeouts: SES may come back any moment.
            raise SendError(Outcome.RETRY, type(exc).__name__, str(exc)) from exc
        return answer["MessageId"]

    async def max_send_rate(self) -> float | None:
        account = await self._client.get_account()
        rate = account.get("SendQuota", {}).get("MaxSendRate")
        return float(rate) if rate else None

    async def account_status(self) -> dict[str, Any]:
        return dict(await self._client.get_account())


class MailboxSender:
    """Development backend: each mail becomes an .eml file, listed at /dev/mailbox."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def send(self, mail: OutgoingMail) -> str:
        message_id = f"mailbox-{uuid.uuid4()}"
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        path = anyio.Path(self.directory) / f"{stamp}-{message_id}.eml"
        await anyio.Path(self.directory).mkdir(parents=True, exist_ok=True)
        await path.write_bytes(mail.raw)
        return message_id

    async def max_send_rate(self) -> float | None:
        return None

    async def account_status(self) -> dict[str, Any]:
        return {"SendingEnabled": True, "EnforcementStatus": "HEALTHY"}
