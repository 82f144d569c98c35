"""Handing a rendered mail to SES (or, in development, to a local mailbox).

``classify_ses_error`` is the one place that decides retry, pause or give up.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parseaddr
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from botocore.exceptions import BotoCoreError, ClientError

from app import aws
from app.config import MailBackend, Settings
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


# MessageRejected "Email address is not verified. The following identities failed the check
# in region …: a@b, c@d": about the account when it names the From address or its domain (the
# identity lapsed, say its DKIM records were deleted), about one mail when it names only that
# mail's recipient (the sandbox, which takes verified recipients only).
_NOT_VERIFIED = "not verified"


def _names(message: str, identity: str) -> bool:
    """Whether SES's message names ``identity`` as a whole (``proworks.jp`` is not named by
    ``staff@proworks.jp`` nor by ``mail.proworks.jp``)."""
    if not identity:
        return False
    pattern = r"(?<![\w.@+\-])" + re.escape(identity.lower()) + r"(?![\w\-]|\.\w)"
    return re.search(pattern, message.lower()) is not None


def classify_ses_error(
    *, code: str, http_status: int | None, message: str, from_address: str, to_addresses: list[str]
) -> Outcome:
    """Sort an SES error by scope: the mail (fail it), the account (pause sending), or
    neither known (retry with backoff; an unlisted error never fails mail)."""
    if code in _THROTTLED or http_status == 429:
        return Outcome.THROTTLED
    if code in _ACCOUNT or http_status in (401, 403):
        return Outcome.PAUSED
    if code == "MessageRejected":
        sender = parseaddr(from_address)[1] or from_address
        if _names(message, sender) or _names(message, sender.rpartition("@")[2]):
            # Also "Did not have authority to send from email …": the From, not this mail.
            return Outcome.PAUSED
    if code == "MessageRejected" and _NOT_VERIFIED in message.lower():
        recipients = [*to_addresses, *(wire_address(a) for a in to_addresses)]
        if any(_names(message, address) for address in recipients):
            return Outcome.PERMANENT
        # Names nobody we know of: every mail would fail alike, so it is not this mail's fault.
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
            refused = aws.refusal(exc)
            outcome = classify_ses_error(
                code=refused.code,
                http_status=refused.http_status,
                message=refused.message,
                from_address=mail.from_address,
                to_addresses=[mail.to],
            )
            raise SendError(outcome, refused.code, refused.message) from exc
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


def with_message_id(raw: bytes, message_id: str) -> bytes:
    """The mail with a Message-ID header in SES's form, as SES adds one to every mail it sends:
    a spam filter scores the local copy as it would score the real one."""
    newline = b"\r\n" if b"\r\n" in raw[:2000] else b"\n"
    return f"Message-ID: <{message_id}@email.amazonses.com>".encode() + newline + raw


class MailboxSender:
    """Development backend: each mail becomes an .eml file, listed at /dev/mailbox."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def send(self, mail: OutgoingMail) -> str:
        message_id = f"mailbox-{uuid.uuid4()}"
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        path = anyio.Path(self.directory) / f"{stamp}-{message_id}.eml"
        await anyio.Path(self.directory).mkdir(parents=True, exist_ok=True)
        await path.write_bytes(with_message_id(mail.raw, message_id))
        return message_id

    async def max_send_rate(self) -> float | None:
        return None

    async def account_status(self) -> dict[str, Any]:
        return {"SendingEnabled": True, "EnforcementStatus": "HEALTHY"}


@contextlib.asynccontextmanager
async def open_sender(settings: Settings) -> AsyncIterator[Sender]:
    if settings.mail_backend == MailBackend.MAILBOX:
        yield MailboxSender(settings.mailbox_dir)
        return
    async with aws.client("sesv2", pool_size=settings.send_concurrency) as client:
        yield SesSender(client, configuration_set=settings.ses_configuration_set)
