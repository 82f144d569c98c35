"""SES feedback (the ``Message`` of an SNS notification) parsed into typed events; pure, no I/O.

Both SES formats are read: notifications (``notificationType``) and event publishing
(``eventType``). Strict where the recipient rules depend on a field (message id, event type,
recipients, bounce type), tolerant of everything SES adds, omits or formats differently.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import getaddresses
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from app.emails.lifecycle import Event, Report
from app.errors import AppError, ErrorCode
from app.recipients.addresses import address_hash
from app.recipients.rules import Feedback


class EventKind(StrEnum):
    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    DELIVERY = "delivery"
    SEND = "send"
    REJECT = "reject"
    OPEN = "open"
    CLICK = "click"
    RENDERING_FAILURE = "rendering_failure"
    DELIVERY_DELAY = "delivery_delay"
    SUBSCRIPTION = "subscription"


class SesEventError(ValueError):
    """Not an SES event we understand (the HTTP layer answers 400 or records it as ignored)."""


class UnreadableSesEvent(AppError):
    status_code = 400
    code = ErrorCode.UNREADABLE_SES_EVENT


@dataclass(frozen=True)
class SesEvent:
    kind: EventKind
    ses_message_id: str
    occurred_at: datetime
    recipients: tuple[str, ...]
    bounce_type: str | None = None
    bounce_subtype: str | None = None
    complaint_feedback_type: str | None = None
    feedback_id: str | None = None
    detail: str | None = None
    # hash=False keeps the event hashable although tags is a mapping.
    tags: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    @property
    def is_hard_bounce(self) -> bool:
        return self.kind is EventKind.BOUNCE and self.bounce_type == "Permanent"

    @property
    def is_soft_bounce(self) -> bool:
        return self.kind is EventKind.BOUNCE and self.bounce_type in ("Transient", "Undetermined")

    @property
    def feedback(self) -> Feedback:
        """What the recipient rules need to know of this event."""
        if self.is_hard_bounce:
            return Feedback.HARD_BOUNCE
        if self.is_soft_bounce:
            return Feedback.SOFT_BOUNCE
        if self.kind is EventKind.BOUNCE:
            return Feedback.BOUNCE
        if self.kind is EventKind.COMPLAINT:
            # "not-spam": the recipient's provider says the mail was wrongly flagged.
            if self.complaint_feedback_type == "not-spam":
                return Feedback.NOT_SPAM
            return Feedback.COMPLAINT
        if self.kind is EventKind.DELIVERY:
            return Feedback.DELIVERY
        if self.kind in (EventKind.REJECT, EventKind.RENDERING_FAILURE):
            return Feedback.FAILURE
        return Feedback.NOTED

    def cause(self, *, sns_message_id: str) -> str:
        """How the audit trail and the mail's history name this event."""
        cause = f"sns:{sns_message_id}"
        return f"{cause} feedback:{self.feedback_id}" if self.feedback_id else cause

    def addresses(self, *, secret: str) -> dict[bytes, str]:
        """The recipients it names, one per address hash (Taro@ and taro@ are one), in
        hash order: the order their rows are locked in."""
        addresses: dict[bytes, str] = {}
        for address in self.recipients:
            addresses.setdefault(address_hash(address, secret=secret), address)
        return dict(sorted(addresses.items()))

    @property
    def tagged_ids(self) -> list[uuid.UUID]:
        """The tegami ids the mail was tagged with (found by them when the event beat the
        worker's record of the SES MessageId)."""
        tagged: list[uuid.UUID] = []
        for tag in self.tags.get("tegami_id", ()):
            try:
                tagged.append(uuid.UUID(tag))
            except ValueError:
                continue
        return tagged

    @property
    def report(self) -> Report:
        """What the event says about the mail, for its history (app.emails.lifecycle)."""
        return Report(
            event=Event(self.kind.value),
            feedback=self.feedback,
            ses_message_id=self.ses_message_id,
            ses_type=self.bounce_type or self.complaint_feedback_type,
            ses_subtype=self.bounce_subtype,
            diagnostic=self.detail,
        )


# eventType / notificationType -> (kind, key of the type-specific object in the message).
_TYPES: dict[str, tuple[EventKind, str]] = {
    "Bounce": (EventKind.BOUNCE, "bounce"),
    "Complaint": (EventKind.COMPLAINT, "complaint"),
    "Delivery": (EventKind.DELIVERY, "delivery"),
    "Send": (EventKind.SEND, "send"),
    "Reject": (EventKind.REJECT, "reject"),
    "Open": (EventKind.OPEN, "open"),
    "Click": (EventKind.CLICK, "click"),
    # AWS's own example names the object "failure"; "renderingFailure" is accepted as well.
    "Rendering Failure": (EventKind.RENDERING_FAILURE, "failure"),
    "DeliveryDelay": (EventKind.DELIVERY_DELAY, "deliveryDelay"),
    "Subscription": (EventKind.SUBSCRIPTION, "subscription"),
}
_TYPES_BY_KIND = {kind: key for kind, key in _TYPES.values()}

# Where each kind names the recipients it is about; other kinds are about mail.destination.
_RECIPIENT_LISTS: dict[EventKind, str] = {
    EventKind.BOUNCE: "bouncedRecipients",
    EventKind.COMPLAINT: "complainedRecipients",
    EventKind.DELIVERY: "recipients",
    EventKind.DELIVERY_DELAY: "delayedRecipients",
}

# What PostgreSQL text cannot hold: NUL, and lone surrogates (a JSON "\ud800" decodes to one).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

# Diagnostic codes can run to a paragraph; the full payload is kept elsewhere by the caller.
_DETAIL_MAX = 1000


# SES types whose loss would change who gets mail: one we cannot read is refused (400),
# never quietly ignored. Anything else we cannot read (a test "Hello world", SES's
# AmazonSnsSubscriptionSucceeded notice, a future type) is recorded as ignored.
_STATE_CHANGING_TYPES: Final = frozenset(
    {"Bounce", "Complaint", "Delivery", "Reject", "Rendering Failure"}
)


def read_ses_event(message: str) -> SesEvent | None:
    """The SES event in an SNS ``Message``; None when it is nothing we act on."""
    try:
        return parse_ses_event(message)
    except SesEventError as exc:
        if _ses_type(message) in _STATE_CHANGING_TYPES:
            raise UnreadableSesEvent(f"the SES event cannot be read: {exc}") from exc
        return None


def _ses_type(message: str) -> str | None:
    try:
        data = json.loads(message)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    name = data.get("eventType", data.get("notificationType"))
    return name if isinstance(name, str) else None


def parse_ses_event(message: str | Mapping[str, Any]) -> SesEvent:
    """Parse the SNS ``Message`` of an SES event; raise :class:`SesEventError` if it is not one."""
    data = _load(message)
    kind, payload = _kind_and_payload(data)
    mail = data.get("mail")
    if not isinstance(mail, Mapping):
        raise SesEventError("SES event has no mail object")
    message_id = mail.get("messageId")
    if not isinstance(message_id, str) or not message_id.strip():
        raise SesEventError("SES event has no mail.messageId")
    if not message_id.isprintable():
        raise SesEventError("mail.messageId holds control characters or lone surrogates")

    occurred_raw = payload.get("timestamp") or mail.get("timestamp")
    if occurred_raw is None:
        raise SesEventError("SES event has no timestamp")

    bounce_type: str | None = None
    if kind is EventKind.BOUNCE:
        bounce_type = _optional_str(payload, "bounceType")
        # The recipient rules cannot tell a hard bounce from a soft one without it.
        if bounce_type is None:
            raise SesEventError("bounce has no bounceType")

    return SesEvent(
        kind=kind,
        ses_message_id=message_id,
        occurred_at=_timestamp(occurred_raw),
        recipients=_recipients(kind, payload, mail),
        bounce_type=bounce_type,
        bounce_subtype=_optional_str(payload, "bounceSubType") if bounce_type else None,
        complaint_feedback_type=(
            _optional_str(payload, "complaintFeedbackType") if kind is EventKind.COMPLAINT else None
        ),
        feedback_id=(
            _optional_str(payload, "feedbackId")
            if kind in (EventKind.BOUNCE, EventKind.COMPLAINT)
            else None
        ),
        detail=_detail(kind, payload),
        tags=_tags(mail.get("tags")),
    )


def _load(message: str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(message, str):
        try:
            message = json.loads(message)
        except (ValueError, RecursionError) as exc:
            raise SesEventError(f"SES event is not JSON: {exc}") from None
    if not isinstance(message, Mapping):
        raise SesEventError("SES event is not a JSON object")
    return message


def _kind_and_payload(data: Mapping[str, Any]) -> tuple[EventKind, Mapping[str, Any]]:
    type_name = data.get("eventType", data.get("notificationType"))
    if not isinstance(type_name, str):
        raise SesEventError("SES event has neither eventType nor notificationType")
    try:
        kind, key = _TYPES[type_name]
    except KeyError:
        raise SesEventError(f"unknown SES event type {type_name!r}") from None
    payload = data.get(key)
    if payload is None and kind is EventKind.RENDERING_FAILURE:
        payload = data.get("renderingFailure")
    if payload is None:
        # Send, Reject, Open, … carry nothing the rules need; Bounce and friends do.
        if kind in _RECIPIENT_LISTS:
            raise SesEventError(f"{type_name} event has no {key} object")
        return kind, {}
    if not isinstance(payload, Mapping):
        raise SesEventError(f"{type_name} event: {key} is not an object")
    return kind, payload


def _recipients(
    kind: EventKind, payload: Mapping[str, Any], mail: Mapping[str, Any]
) -> tuple[str, ...]:
    list_key = _RECIPIENT_LISTS.get(kind)
    where = f"{_TYPES_BY_KIND[kind]}.{list_key}" if list_key else "mail.destination"
    items = payload.get(list_key) if list_key else mail.get("destination")
    if not isinstance(items, list):
        raise SesEventError(f"{where} is not a list")
    addresses: list[str] = []
    for item in items:
        # Bounce, complaint and delay lists hold objects; delivery and destination hold strings.
        raw = item.get("emailAddress") if isinstance(item, Mapping) else item
        if not isinstance(raw, str):
            raise SesEventError(f"{where} has an entry without an address")
        address = _bare_address(raw, where)
        if address not in addresses:
            # Counted once: a repeated address must not count two soft bounces.
            addresses.append(address)
    if not addresses and list_key:
        raise SesEventError(f"{where} is empty")
    return tuple(addresses)


def _bare_address(raw: str, where: str) -> str:
    # getaddresses rather than parseaddr: on 3.11 parseaddr("a@x, b@y") quietly returns a@x.
    parsed = getaddresses([raw])
    if len(parsed) != 1 or "@" not in parsed[0][1]:
        raise SesEventError(f"{where} has an entry that is not one address")
    address = parsed[0][1].strip()
    # NUL, other controls and lone surrogates ("\\ud800" in the JSON) cannot be stored or
    # hashed; no mailbox has them.
    if not address.isprintable():
        raise SesEventError(f"{where} has an address with control characters")
    return address


def _timestamp(raw: object) -> datetime:
    if not isinstance(raw, str):
        raise SesEventError("SES event timestamp is not a string")
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise SesEventError(f"SES event timestamp {raw!r} is not ISO 8601") from None
    # SES documents its timestamps as UTC; a missing offset means UTC, never local time.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _detail(kind: EventKind, payload: Mapping[str, Any]) -> str | None:
    text: str | None = None
    if kind is EventKind.BOUNCE:
        for item in payload.get("bouncedRecipients") or ():
            if isinstance(item, Mapping) and (text := _optional_str(item, "diagnosticCode")):
                break
    elif kind is EventKind.REJECT:
        text = _optional_str(payload, "reason")
    elif kind is EventKind.RENDERING_FAILURE:
        text = _optional_str(payload, "errorMessage")
    elif kind is EventKind.DELIVERY_DELAY:
        text = _optional_str(payload, "delayType")
    elif kind is EventKind.DELIVERY:
        text = _optional_str(payload, "smtpResponse")
    if text is None:
        return None
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 1] + "…"


def _tags(raw: object) -> Mapping[str, tuple[str, ...]]:
    if raw is None:
        return MappingProxyType({})
    if not isinstance(raw, Mapping):
        raise SesEventError("mail.tags is not an object")
    tags: dict[str, tuple[str, ...]] = {}
    for name, values in raw.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise SesEventError(f"mail.tags[{name!r}] is not a list of strings")
        tags[str(name)] = tuple(values)
    return MappingProxyType(tags)


def _optional_str(obj: Mapping[str, Any], key: str) -> str | None:
    # SES writes null (complaintSubType) or leaves fields out; both mean "not given".
    value = obj.get(key)
    if not isinstance(value, str):
        return None
    if _UNSTORABLE.search(value):
        # Free text from remote MTAs: keep what can be stored (PostgreSQL text holds neither
        # NUL nor lone surrogates) rather than lose the event.
        value = _UNSTORABLE.sub("\ufffd", value)
    return value.strip() or None
