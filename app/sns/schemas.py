"""What SNS posts to /sns/ses-events, for the OpenAPI document: the endpoint reads the raw body
and verifies it before anything else (app/sns/signature.py), so these models only describe it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class _Signed(BaseModel):
    MessageId: str = Field(description="Unique per message; tegami applies each one once.")
    TopicArn: str = Field(description="Must be one of TEGAMI_SNS_TOPIC_ARNS.")
    Timestamp: str = Field(description="When SNS published it (ISO 8601, UTC).")
    SignatureVersion: Literal["1", "2"] = Field(description="1: SHA1withRSA; 2: SHA256withRSA.")
    Signature: str = Field(description="Base64, over the canonical string of the message.")
    SigningCertURL: str = Field(
        description="https://sns.<region>.amazonaws.com/SimpleNotificationService-<hex>.pem"
    )


class SnsNotification(_Signed):
    """An SES event (bounce, complaint, delivery, ...) published to the topic."""

    Type: Literal["Notification"]
    Subject: str | None = None
    Message: str = Field(
        description="The SES event, itself a JSON text: `eventType` (event publishing) or "
        "`notificationType` (identity notifications) is Bounce, Complaint, Delivery, "
        "DeliveryDelay, Send, Reject, Rendering Failure, Open or Click; `mail.messageId` is "
        "the SES MessageId tegami recorded at send; `bounce`, `complaint` or `delivery` names "
        "the recipients."
    )
    UnsubscribeURL: str | None = None


class SnsSubscriptionMessage(_Signed):
    """SNS asks to confirm the subscription (confirmed by fetching SubscribeURL) or tells of
    an unsubscription (recorded, never followed)."""

    Type: Literal["SubscriptionConfirmation", "UnsubscribeConfirmation"]
    Message: str
    Token: str
    SubscribeURL: str


def sns_message_schema() -> dict[str, Any]:
    """One of the two shapes, told apart by `Type`; inlined (the models have no nested ones)."""
    return {
        "oneOf": [SnsNotification.model_json_schema(), SnsSubscriptionMessage.model_json_schema()]
    }
