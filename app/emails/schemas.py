"""Request and response bodies of the send API."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from app.db import NO_NUL, check_storable
from app.emails.catalog import EMAIL_KINDS
from app.emails.links import MAX_LINK_LENGTH
from app.errors import ErrorBody
from app.models import MessageStatus
from app.recipients.addresses import ADDRESS_JSON_SCHEMA, check_address

# SES's message tags allow these characters in names and values; what SES sets itself
# (`ses:`) and what tegami sets (`tegami_id`, `tegami_type`) cannot collide with them.
MAX_TAGS = 10
MAX_TAG_LENGTH = 256
TAG_PATTERN = "^[A-Za-z0-9_-]+$"
_TAG = re.compile(f"[A-Za-z0-9_-]{{1,{MAX_TAG_LENGTH}}}", re.ASCII)
RESERVED_TAG_PREFIX = "tegami_"


def check_tags(tags: dict[str, str] | None) -> dict[str, str] | None:
    """At most ten tags of ASCII letters, digits, `_` and `-`; a ValueError names the tag."""
    if tags is None:
        return None
    if len(tags) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags, not {len(tags)}")
    for key, value in tags.items():
        if not _TAG.fullmatch(key):
            raise ValueError(
                f"tag {key!r}: a name is 1 to {MAX_TAG_LENGTH} ASCII letters, digits, _ or -"
            )
        if key.startswith(RESERVED_TAG_PREFIX):
            raise ValueError(f"tag {key!r}: names starting with tegami_ are tegami's own")
        if not isinstance(value, str) or not _TAG.fullmatch(value):
            raise ValueError(
                f"tag {key!r}: its value is 1 to {MAX_TAG_LENGTH} ASCII letters, digits, _ or -"
            )
    return tags


TAGS_JSON_SCHEMA: dict[str, Any] = {
    "maxProperties": MAX_TAGS,
    "propertyNames": {"pattern": TAG_PATTERN, "maxLength": MAX_TAG_LENGTH},
    "additionalProperties": {"type": "string", "pattern": TAG_PATTERN, "maxLength": MAX_TAG_LENGTH},
}


def _link(description: str) -> Any:
    # The schema says what any deployment accepts; which hosts is TEGAMI_LINK_HOSTS, checked
    # per request by app.emails.links (422 `invalid_params`).
    return Field(
        description=f"{description} An https:// link on a host in TEGAMI_LINK_HOSTS.",
        json_schema_extra={"pattern": "^https://", "maxLength": MAX_LINK_LENGTH},
    )


class VerifyEmailParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verification_url: str = _link("The address-verification link.")


class PasswordResetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reset_url: str = _link("The password-reset link.")


class EmailChangeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verification_url: str = _link("The link that confirms the new address (the recipient).")


class MatchingNotificationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_url: str = _link("The job's page.")


class EmailCreate(BaseModel):
    """What every send takes; each type's own body fixes ``params``."""

    model_config = ConfigDict(extra="forbid")

    to: str = Field(
        max_length=254,
        description="Recipient, as the user typed it (ASCII; legacy docomo/au local parts "
        "such as `taro.@docomo.ne.jp` are accepted).",
        json_schema_extra=dict(ADDRESS_JSON_SCHEMA),
    )
    params: BaseModel
    user_id: str | None = Field(
        default=None,
        max_length=200,
        description="The app's own id for the user.",
        json_schema_extra={"pattern": NO_NUL},
    )
    tags: dict[str, str] | None = Field(
        default=None,
        description=f'The app\'s own labels, e.g. `{{"job_id": "J-1"}}`: at most {MAX_TAGS}, '
        "names and values of ASCII letters, digits, `_` and `-` (names not starting with "
        "`tegami_`). Stored, sent to SES as message tags, carried by every `email.*` event, "
        "searchable (`GET /emails?tag=job_id:J-1`).",
        json_schema_extra=TAGS_JSON_SCHEMA,
    )
    send_at: AwareDatetime | None = Field(
        default=None,
        description="Not sent before this time (ISO 8601 with a UTC offset, at most 30 days "
        "ahead; the mail is `scheduled` until then). Account mail's link lasts one hour from "
        "the request, so its send_at must fall within that hour.",
        examples=["2026-12-06T08:00:00+09:00"],
    )

    @field_validator("to")
    @classmethod
    def _address(cls, value: str) -> str:
        return check_address(value)

    @field_validator("send_at", mode="before")
    @classmethod
    def _send_at_text(cls, value: object) -> object:
        # ISO 8601 text only: pydantic would read a number as a Unix time.
        if value is not None and not isinstance(value, str | datetime):
            raise ValueError("must be an ISO 8601 date-time with a UTC offset")
        return value

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: object) -> object:
        # Checked before pydantic's own str check, so the error names the tag.
        if isinstance(value, dict):
            check_tags(value)
        return value

    @field_validator("user_id")
    @classmethod
    def _user_id(cls, value: str | None) -> str | None:
        return check_storable(value)


def _example(params: dict[str, str]) -> dict[str, Any]:
    return {"examples": [{"to": "taro@example.com", "params": params, "user_id": "user_123"}]}


class VerifyEmailCreate(EmailCreate):
    model_config = ConfigDict(
        json_schema_extra=_example({"verification_url": "https://proworks.jp/verify?token=abc"})
    )

    params: VerifyEmailParams


class PasswordResetCreate(EmailCreate):
    model_config = ConfigDict(
        json_schema_extra=_example({"reset_url": "https://proworks.jp/reset?token=abc"})
    )

    params: PasswordResetParams


class EmailChangeCreate(EmailCreate):
    model_config = ConfigDict(
        json_schema_extra=_example({"verification_url": "https://proworks.jp/change?token=abc"})
    )

    params: EmailChangeParams


class MatchingNotificationCreate(EmailCreate):
    model_config = ConfigDict(json_schema_extra=_example({"job_url": "https://proworks.jp/jobs/1"}))

    params: MatchingNotificationParams


# The request body of each type of mail (its path is /emails/<type>).
EMAIL_BODIES: dict[str, type[EmailCreate]] = {
    "verify-email": VerifyEmailCreate,
    "password-reset": PasswordResetCreate,
    "email-change": EmailChangeCreate,
    "matching-notification": MatchingNotificationCreate,
}
assert EMAIL_BODIES.keys() == EMAIL_KINDS.keys()


class EmailAccepted(BaseModel):
    id: uuid.UUID
    status: MessageStatus = Field(
        description="`queued`, or `scheduled` when it waits for its `send_at` or for the end "
        "of quiet hours (also when replayed)."
    )


MAX_BATCH = 500


class EmailBatchResult(BaseModel):
    """One item's answer: ``id`` and ``status`` when accepted, else ``error``, exactly as the
    single send would have refused it (`invalid_request`, `invalid_params`, `suppressed`,
    `opted_out`)."""

    id: uuid.UUID | None = None
    status: MessageStatus | None = None
    error: ErrorBody | None = None


class EmailBatchAccepted(BaseModel):
    results: list[EmailBatchResult] = Field(description="One per item, in the items' order.")


def _items(create: type[EmailCreate]) -> Any:
    # Documented as the type's own send body; read by the route item by item, so that one bad
    # item is refused alone (its result says why) and the others are accepted.
    return Field(
        min_length=1,
        max_length=MAX_BATCH,
        description=f"1 to {MAX_BATCH} mails, each exactly the body of the single send.",
        json_schema_extra={"items": {"$ref": f"#/components/schemas/{create.__name__}"}},
    )


class EmailBatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    emails: list[dict[str, Any]]


class VerifyEmailBatch(EmailBatchCreate):
    emails: list[dict[str, Any]] = _items(VerifyEmailCreate)


class PasswordResetBatch(EmailBatchCreate):
    emails: list[dict[str, Any]] = _items(PasswordResetCreate)


class EmailChangeBatch(EmailBatchCreate):
    emails: list[dict[str, Any]] = _items(EmailChangeCreate)


class MatchingNotificationBatch(EmailBatchCreate):
    emails: list[dict[str, Any]] = _items(MatchingNotificationCreate)


EMAIL_BATCHES: dict[str, type[EmailBatchCreate]] = {
    "verify-email": VerifyEmailBatch,
    "password-reset": PasswordResetBatch,
    "email-change": EmailChangeBatch,
    "matching-notification": MatchingNotificationBatch,
}


class EmailPreview(BaseModel):
    """The mail as it would be sent, rendered by the worker's own function; the unsubscribe
    link is a placeholder (each sent mail gets its own)."""

    subject: str
    text: str
    html: str


class EmailCancelled(BaseModel):
    status: MessageStatus = Field(description="`cancelled`.")


class EmailEventRead(BaseModel):
    kind: str
    detail: str | None
    cause: str | None
    created_at: datetime


class EmailRead(BaseModel):
    id: uuid.UUID
    type: str
    category: str
    status: MessageStatus
    to: str | None = Field(description="Null once the recipient was erased.")
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    send_at: datetime | None = Field(
        description="When a `scheduled` mail was first due: its `send_at`, or the end of quiet "
        "hours; null when it was due at once."
    )
    expires_at: datetime | None
    ses_message_id: str | None
    last_error: str | None
    test: bool = Field(description="Accepted with a `test` key: rendered, never sent to SES.")
    tags: dict[str, str] = Field(description="The tags the send gave (`{}` when none).")
    events: list[EmailEventRead]
