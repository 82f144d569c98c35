"""POST /sns/ses-events: SES feedback pushed by Amazon SNS, verified before it is read."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from app.db import driver_connection
from app.deps import get_engine, get_http, get_reputation_nudge, get_settings
from app.errors import AppError, ErrorCode, error_responses
from app.ops.metrics import SNS_MESSAGES
from app.sns import feedback, service
from app.sns.schemas import sns_message_schema
from app.sns.service import SnsOutcome
from app.sns.signature import (
    CertificateStore,
    MessageType,
    SnsShapeError,
    SnsVerificationError,
    parse_message,
    verify_message,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/sns", tags=["sns"])


async def get_certificates(request: Request) -> CertificateStore:
    """AWS's signing certificates, cached by URL for the app's life (built by the lifespan)."""
    certificates: CertificateStore = request.app.state.sns_certificates
    return certificates


class NotSnsMessage(AppError):
    status_code = 400
    code = ErrorCode.NOT_SNS_MESSAGE


class SnsRefused(AppError):
    """Failed verification; ``code`` is the reason (bad_signature, topic_not_allowed, …)."""

    status_code = 403
    code = ErrorCode.FORBIDDEN


class CertificateUnavailable(AppError):
    """AWS's certificate could not be fetched now: SNS should try again later."""

    status_code = 503
    code = ErrorCode.CERTIFICATE_UNAVAILABLE


class SnsReceipt(BaseModel):
    message_id: str = Field(description="The SNS MessageId.")
    outcome: SnsOutcome = Field(
        description="`applied`: the SES event changed state or history; `duplicate`: this "
        "MessageId (or this soft bounce) was applied before, nothing changed; `ignored`: "
        "verified but not SES feedback we act on; `confirmed`: subscription confirmed; "
        "`recorded`: UnsubscribeConfirmation noted (never followed)."
    )


_SNS_EXAMPLE = {
    "Type": "Notification",
    "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
    "TopicArn": "arn:aws:sns:ap-northeast-1:123456789012:tegami-ses-events",
    "Message": '{"eventType":"Bounce","bounce":{…},"mail":{…}}',
    "Timestamp": "2026-01-01T00:00:00.000Z",
    "SignatureVersion": "2",
    "Signature": "…",
    "SigningCertURL": "https://sns.ap-northeast-1.amazonaws.com/SimpleNotificationService-….pem",
}


@router.post(
    "/ses-events",
    response_model=SnsReceipt,
    summary="Receive SES feedback from Amazon SNS",
    description=(
        "The HTTPS endpoint of the SNS subscription that carries SES events. Every message "
        "is verified (signature, certificate URL, allowed topic, age) before it is read; "
        "each SNS MessageId is applied once. SNS posts `text/plain`; any content type is "
        "accepted."
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "An SNS message (JSON), as SNS posts it: a Notification carries one SES "
            "event in `Message`; a SubscriptionConfirmation is confirmed by tegami itself.",
            "content": {
                # SNS sends JSON as text/plain: the same message, either way.
                "text/plain": {
                    "schema": {"type": "string", "contentMediaType": "application/json"},
                    "example": _SNS_EXAMPLE,
                },
                "application/json": {"schema": sns_message_schema(), "example": _SNS_EXAMPLE},
            },
        }
    },
    operation_id="receiveSesEvent",
    responses=error_responses(
        400,
        403,
        413,
        502,
        503,
        _400="Not an SNS message (malformed JSON, missing fields, wrong types): "
        "`not_sns_message`; or a verified SES bounce, complaint, delivery, reject or "
        "rendering failure that cannot be read: `unreadable_ses_event`.",
        _403="Verification failed; `error.code` says why: `topic_not_allowed`, `cert_url`, "
        "`cert_not_valid`, `bad_signature`, `signature_version`, "
        "`bad_timestamp`, `too_old`, `in_future`, or `subscribe_url` (a "
        "SubscriptionConfirmation whose SubscribeURL is not an SNS confirmation URL).",
        _502="Could not confirm the subscription with SNS (`subscribe_failed`); SNS retries.",
        _503="The database is down (`unavailable`), or AWS's signing certificate could not be "
        "fetched (`certificate_unavailable`); SNS retries.",
    ),
)
async def receive_ses_event(request: Request) -> SnsReceipt:
    # The hot path: what it needs is awaited here, not resolved as FastAPI dependencies.
    settings = await get_settings(request)
    certificates = await get_certificates(request)
    body = await request.body()
    try:
        message = parse_message(body)
        await verify_message(
            message,
            certificates=certificates,
            allowed_topics=settings.sns_topic_arns,
            max_age_seconds=settings.sns_max_age_seconds,
            now=datetime.now(UTC),
        )
    except SnsShapeError as exc:
        SNS_MESSAGES.labels(outcome="malformed").inc()
        raise NotSnsMessage(f"not an SNS message: {exc}") from exc
    except SnsVerificationError as exc:
        if exc.reason == "cert_unavailable":
            # The URL passed the strict SNS-host rule: a failed download is an outage on the
            # way to AWS, not a forgery. 503 makes SNS retry instead of dropping the event.
            SNS_MESSAGES.labels(outcome="cert_unavailable").inc()
            log.warning(
                "SNS signing certificate unavailable",
                extra={"event": "sns_cert_unavailable", "detail": str(exc)[:300]},
            )
            raise CertificateUnavailable(
                "the signing certificate could not be fetched; try again"
            ) from exc
        SNS_MESSAGES.labels(outcome="refused").inc()
        log.warning(
            "SNS message refused",
            extra={"event": "sns_refused", "reason": exc.reason, "detail": str(exc)[:300]},
        )
        raise SnsRefused("the SNS message did not verify", code=ErrorCode(exc.reason)) from exc

    kind = MessageType(message["Type"])  # one of them: parse_message checked
    async with driver_connection(await get_engine(request)) as connection:
        if kind is MessageType.NOTIFICATION:
            # The hot path: committed when apply_notification returns.
            outcome = await feedback.apply_notification(
                connection,
                message=message,
                secret=settings.address_hash_secret.get_secret_value(),
                now=datetime.now(UTC),
                on_reputation_event=await get_reputation_nudge(request),
            )
        elif kind is MessageType.SUBSCRIPTION_CONFIRMATION:
            outcome = await service.confirm_subscription(
                connection, message=message, http=await get_http(request)
            )
        else:
            outcome = await service.record_unsubscribe_confirmation(connection, message=message)
    SNS_MESSAGES.labels(outcome=outcome).inc()
    return SnsReceipt(message_id=message["MessageId"], outcome=outcome)
