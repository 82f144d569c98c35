"""`tegami simulate`: post a signed SES event through the real /sns/ses-events of `tegami dev`.

`tegami dev` trusts a local signing certificate (made once under ``.tegami/sns/``, served
through TEGAMI_SNS_CERT_DIR) and a dev topic; this module signs with the matching key, so the
event takes exactly the path SES feedback takes in production: verification included.
"""

from __future__ import annotations

import email.policy
import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.parser import BytesParser
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import httpx

from app.sns.signature import make_signing_identity, sign_message

DEV_REGION: Final = "us-east-1"
DEV_TOPIC_ARN: Final = f"arn:aws:sns:{DEV_REGION}:000000000000:tegami-dev"
DEV_SOURCE: Final = "PRO WORKS <noreply@proworks.jp>"


class SimulatedEvent(StrEnum):
    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    DELIVERY = "delivery"


@dataclass(frozen=True)
class DevSigner:
    key_pem: bytes
    cert_dir: Path
    cert_url: str


def ensure_dev_signer(state_dir: Path) -> DevSigner:
    """The dev signing key and certificate under ``state_dir/sns``, made on first use.

    The certificate file is named as its URL's last segment, the way TEGAMI_SNS_CERT_DIR
    expects, and its name is derived from the certificate itself (stable across runs).
    """
    sns_dir = state_dir / "sns"
    cert_dir = sns_dir / "certs"
    key_file = sns_dir / "signing-key.pem"
    if not key_file.exists() or not any(cert_dir.glob("SimpleNotificationService-*.pem")):
        cert_dir.mkdir(parents=True, exist_ok=True)
        for stale in cert_dir.glob("SimpleNotificationService-*.pem"):
            stale.unlink()
        key_pem, cert_pem = make_signing_identity(common_name=f"sns.{DEV_REGION}.amazonaws.com")
        name = f"SimpleNotificationService-{hashlib.sha256(cert_pem).hexdigest()[:32]}.pem"
        (cert_dir / name).write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        key_file.chmod(0o600)
    cert_file = sorted(cert_dir.glob("SimpleNotificationService-*.pem"))[0]
    return DevSigner(
        key_pem=key_file.read_bytes(),
        cert_dir=cert_dir,
        cert_url=f"https://sns.{DEV_REGION}.amazonaws.com/{cert_file.name}",
    )


def dev_sns_environment(state_dir: Path) -> dict[str, str]:
    """The settings that make `tegami dev` trust the simulator's signatures."""
    signer = ensure_dev_signer(state_dir)
    return {"TEGAMI_SNS_CERT_DIR": str(signer.cert_dir), "TEGAMI_SNS_TOPIC_ARNS": DEV_TOPIC_ARN}


def _iso(moment: datetime) -> str:
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


def _ses_message_id() -> str:
    # SES's shape: 16 hex, a UUID, a six-digit suffix.
    return f"{secrets.token_hex(8)}-{uuid.uuid4()}-000000"


def ses_event(
    kind: SimulatedEvent,
    address: str,
    *,
    soft: bool = False,
    now: datetime | None = None,
    ses_message_id: str | None = None,
) -> dict[str, Any]:
    """An SES event-publishing payload shaped like AWS's own examples (and the fixtures)."""
    now = now or datetime.now(UTC)
    sent = now - timedelta(seconds=2)
    message_id = ses_message_id or _ses_message_id()
    mail: dict[str, Any] = {
        "timestamp": _iso(sent),
        "source": DEV_SOURCE,
        "sourceArn": f"arn:aws:ses:{DEV_REGION}:000000000000:identity/proworks.jp",
        "sendingAccountId": "000000000000",
        "messageId": message_id,
        "destination": [address],
        "headersTruncated": False,
        "headers": [
            {"name": "From", "value": DEV_SOURCE},
            {"name": "To", "value": address},
            {"name": "Subject", "value": "tegami simulate"},
            {"name": "MIME-Version", "value": "1.0"},
        ],
        "commonHeaders": {
            "from": [DEV_SOURCE],
            "to": [address],
            "messageId": message_id,
            "subject": "tegami simulate",
        },
        "tags": {
            "ses:configuration-set": ["tegami-dev"],
            "ses:source-ip": ["192.0.2.0"],
            "ses:from-domain": ["proworks.jp"],
            "ses:caller-identity": ["tegami-dev"],
        },
    }
    feedback_id = f"{secrets.token_hex(8)}-{uuid.uuid4()}-000000"
    if kind is SimulatedEvent.BOUNCE:
        recipient = (
            {
                "emailAddress": address,
                "action": "failed",
                "status": "4.4.7",
                "diagnosticCode": (
                    "smtp; 554 4.4.7 Message expired: unable to deliver in 840 minutes."
                ),
            }
            if soft
            else {
                "emailAddress": address,
                "action": "failed",
                "status": "5.1.1",
                "diagnosticCode": "smtp; 550 5.1.1 user unknown",
            }
        )
        return {
            "eventType": "Bounce",
            "bounce": {
                "bounceType": "Transient" if soft else "Permanent",
                "bounceSubType": "General",
                "bouncedRecipients": [recipient],
                "timestamp": _iso(now),
                "feedbackId": feedback_id,
                "reportingMTA": "dsn; mta.example.com",
            },
            "mail": mail,
        }
    if kind is SimulatedEvent.COMPLAINT:
        return {
            "eventType": "Complaint",
            "complaint": {
                "complainedRecipients": [{"emailAddress": address}],
                "timestamp": _iso(now),
                "feedbackId": feedback_id,
                "userAgent": "tegami simulate",
                "complaintFeedbackType": "abuse",
                "arrivalDate": _iso(now),
            },
            "mail": mail,
        }
    return {
        "eventType": "Delivery",
        "mail": mail,
        "delivery": {
            "timestamp": _iso(now),
            "processingTimeMillis": 2000,
            "recipients": [address],
            "smtpResponse": "250 2.6.0 Message received",
            "reportingMTA": "mta.example.com",
        },
    }


def sns_notification(
    event: dict[str, Any],
    *,
    signer: DevSigner,
    topic_arn: str = DEV_TOPIC_ARN,
    now: datetime | None = None,
) -> dict[str, Any]:
    """An SNS Notification carrying ``event``, signed as SNS signs (SignatureVersion 2)."""
    message = {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": topic_arn,
        "Message": json.dumps(event),
        "Timestamp": _iso(now or datetime.now(UTC)),
        "SigningCertURL": signer.cert_url,
        "UnsubscribeURL": (
            f"https://sns.{DEV_REGION}.amazonaws.com/?Action=Unsubscribe"
            f"&SubscriptionArn={topic_arn}:{uuid.uuid4()}"
        ),
    }
    return sign_message(message, signer.key_pem, signature_version="2")


async def post_notification(
    http: httpx.AsyncClient, notification: dict[str, Any]
) -> httpx.Response:
    """POST as SNS does: text/plain body and the x-amz-sns-* headers."""
    return await http.post(
        "/sns/ses-events",
        content=json.dumps(notification).encode(),
        headers={
            "Content-Type": "text/plain; charset=UTF-8",
            "x-amz-sns-message-type": notification["Type"],
            "x-amz-sns-message-id": notification["MessageId"],
            "x-amz-sns-topic-arn": notification["TopicArn"],
            "User-Agent": "Amazon Simple Notification Service Agent",
        },
    )


def last_mail_to(mailbox: Path, address: str) -> str | None:
    """The message id of the newest mail the dev mailbox holds for ``address``, if any.

    The feedback then names a mail tegami really sent, as SES's does: it shows on the mail
    (GET /emails/{id}) and counts towards the bounce and complaint rates.
    """
    if not mailbox.is_dir():
        return None
    wanted = address.strip().lower()
    for path in sorted(mailbox.glob("*-mailbox-*.eml"), reverse=True):
        with path.open("rb") as handle:
            headers = BytesParser(policy=email.policy.default).parse(handle, headersonly=True)
        if str(headers.get("To", "")).strip().lower() == wanted:
            return path.stem.split("-", 1)[1]
    return None


async def simulate(
    kind: SimulatedEvent, address: str, *, soft: bool, url: str, state_dir: Path
) -> httpx.Response:
    signer = ensure_dev_signer(state_dir)
    event = ses_event(
        kind, address, soft=soft, ses_message_id=last_mail_to(state_dir / "mailbox", address)
    )
    notification = sns_notification(event, signer=signer)
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:
        return await post_notification(http, notification)
