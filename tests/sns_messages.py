"""Signing SES events into SNS messages and posting them, as SNS does (for tests).

Real-shaped SES events from ../shared/fixtures/ses-events/ are signed with a throwaway key whose
certificate is served through TEGAMI_SNS_CERT_DIR.
"""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from app.sns.signature import sign_message

# ../shared/fixtures, beside the checkout.
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
SES_EVENTS = FIXTURES / "ses-events"
GENUINE = FIXTURES / "sns-genuine"
GENUINE_FILES = ["http-0-v1-nosubject.json", "http-3-v2-subject.json"]

REGION = "ap-northeast-1"
TOPIC = f"arn:aws:sns:{REGION}:123456789012:tegami-ses-events"
CERT_NAME = "SimpleNotificationService-00112233445566778899aabbccddeeff.pem"
CERT_URL = f"https://sns.{REGION}.amazonaws.com/{CERT_NAME}"
HASH_SECRET = "test-address-hash-secret-0123456789"  # tests.conftest.make_settings
PARAMS = {
    "verify-email": {"verification_url": "https://proworks.jp/verify?token=v1"},
    "password-reset": {"reset_url": "https://proworks.jp/reset?token=r1"},
    "matching-notification": {"job_url": "https://proworks.jp/jobs/1"},
}

PERMANENT_BOUNCES = [
    ("eventpub-bounce-permanent-general.json", "recipient@example.com"),
    ("notif-bounce-permanent-general-with-dsn.json", "jane@example.com"),
    ("real-notif-bounce-permanent-general-simulator-2022.json", "bounce@simulator.amazonses.com"),
    ("real-notif-bounce-permanent-onaccountsuppressionlist-2020.json", "s@jakepfaf.dev"),
    (
        "real-notif-bounce-permanent-suppressed-simulator-2018.json",
        "suppressionlist@simulator.amazonses.com",
    ),
]
COMPLAINTS = [
    ("eventpub-complaint-abuse.json", "recipient@example.com"),
    ("notif-complaint-no-feedback.json", "richard@example.com"),
    ("notif-complaint-with-feedback-abuse.json", "richard@example.com"),
    ("real-eventpub-complaint-abuse-simulator-2022.json", "complaint@simulator.amazonses.com"),
]
SOFT_BOUNCES = [
    (
        "real-notif-bounce-transient-general-ooto-simulator-2018.json",
        "ooto@simulator.amazonses.com",
    ),
    (
        "real-notif-bounce-transient-general-4.4.7-expired-2020.json",
        "frankie.lee.job@gmailabc.com",
    ),
]
_PAYLOAD_KEYS = ("bounce", "complaint", "delivery", "deliveryDelay", "reject", "failure", "send")


# -- building SES events and SNS messages -----------------------------------------------------


def ses_event(
    name: str,
    *,
    to: str | dict[str, str] | None = None,
    ses_message_id: str | None = None,
    feedback_id: str | None = None,
    tegami_id: str | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """A fixture, addressed to ``to`` (its single address, or an old -> new mapping).

    Each bounce or complaint gets a fresh feedbackId unless one is given: SES gives every
    event its own, and tegami uses it to tell a repeated soft bounce from a new one.
    """
    raw = (SES_EVENTS / name).read_text()
    destination = json.loads(raw)["mail"]["destination"]
    replacements = {destination[0]: to} if isinstance(to, str) else (to or {})
    for old, new in replacements.items():
        raw = raw.replace(old, new)
    data: dict[str, Any] = json.loads(raw)
    payload = next((data[key] for key in _PAYLOAD_KEYS if key in data), None)
    if payload is not None:
        payload.update(changes)
        if "feedbackId" in payload:
            payload["feedbackId"] = feedback_id or f"0100-{uuid.uuid4()}-000000"
    if ses_message_id is not None:
        data["mail"]["messageId"] = ses_message_id
    if tegami_id is not None:
        data["mail"].setdefault("tags", {})["tegami_id"] = [tegami_id]
    return data


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Sns:
    """Signs and posts SNS messages to the app, as SNS does."""

    def __init__(self, client: httpx.AsyncClient, key_pem: bytes) -> None:
        self.client = client
        self.key_pem = key_pem

    def sign(self, **fields: Any) -> dict[str, Any]:
        message: dict[str, Any] = {
            "MessageId": str(uuid.uuid4()),
            "TopicArn": TOPIC,
            "Timestamp": iso(datetime.now(UTC)),
            "SigningCertURL": CERT_URL,
            **fields,
        }
        return sign_message(message, self.key_pem, signature_version="2")

    def notification(self, event: dict[str, Any] | str, **fields: Any) -> dict[str, Any]:
        body = event if isinstance(event, str) else json.dumps(event)
        return self.sign(Type="Notification", Message=body, **fields)

    async def post(
        self, message: dict[str, Any] | bytes, content_type: str = "text/plain; charset=UTF-8"
    ) -> httpx.Response:
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        return await self.client.post(
            "/sns/ses-events", content=body, headers={"Content-Type": content_type}
        )

    async def deliver(self, event: dict[str, Any] | str, **fields: Any) -> httpx.Response:
        """Post one notification and insist it was applied."""
        answer = await self.post(self.notification(event, **fields))
        assert answer.status_code == 200, answer.text
        assert answer.json()["outcome"] == "applied", answer.text
        return answer

    def confirmation(self, kind: str, *, subscribe_url: str | None = None) -> dict[str, Any]:
        token = secrets.token_hex(32)
        return self.sign(
            Type=kind,
            Token=token,
            Message=f"You have chosen to subscribe to the topic {TOPIC}.",
            SubscribeURL=subscribe_url
            or (
                f"https://sns.{REGION}.amazonaws.com/?Action=ConfirmSubscription"
                f"&TopicArn={TOPIC}&Token={token}"
            ),
        )
