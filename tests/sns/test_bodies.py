"""POST /sns/ses-events with bodies that are not well-formed SNS messages: always a 400 with
the JSON error body, never a 500. Both the SNS envelope and, once it verifies, the SES event
JSON inside it.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.sns.events import SesEventError, parse_ses_event
from app.sns.signature import MESSAGE_TYPES, SnsShapeError, parse_message
from tests.sns_messages import PARAMS, Sns, ses_event

_DEEP = 30_000  # well inside the 64 KiB body cap, far beyond any parser's recursion limit
_DIGITS = 20_000


def _envelope(**changes: object) -> bytes:
    message: dict[str, object] = {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:ap-northeast-1:123456789012:tegami-ses-events",
        "Message": "{}",
        "Timestamp": "2026-01-01T00:00:00.000Z",
        "SignatureVersion": "2",
        "Signature": "AAAA",
        "SigningCertURL": "https://sns.ap-northeast-1.amazonaws.com/SimpleNotificationService-0a.pem",
    }
    message.update(changes)
    return json.dumps(message).encode()


BAD_BODIES = {
    "empty": b"",
    "deep arrays": b"[" * _DEEP + b"]" * _DEEP,
    "deep objects": b'{"a":' * (_DEEP // 3) + b"1" + b"}" * (_DEEP // 3),
    "deep inside a field": _envelope()[:-1] + b', "x": ' + b"[" * _DEEP + b"]" * _DEEP + b"}",
    "huge integer": b'{"Type": ' + b"7" * _DIGITS + b"}",
    "huge integer in a field": _envelope()[:-1] + b', "x": ' + b"9" * _DIGITS + b"}",
    "huge float": b'{"x": 1.' + b"5" * _DIGITS + b"e99999}",
    "NaN": b'{"x": NaN}',
    "array": b"[]",
    "string": b'"Notification"',
    "number": b"42",
    "null": b"null",
    "true": b"true",
    "invalid UTF-8": b'{"Type": "\xff\xfe"}',
    "UTF-16": '{"Type": "Notification"}'.encode("utf-16"),
    "lone surrogate key": b'{"\\ud800": 1}',
    "trailing garbage": _envelope() + b"x",
    "two documents": _envelope() + _envelope(),
    "duplicate key": b'{"Type": "Notification", "Type": "Notification"}',
    "Type not a string": _envelope(Type=["Notification"]),
    "Message an object": _envelope(Message={"eventType": "Bounce"}),
    "Timestamp a number": _envelope(Timestamp=1_700_000_000),
    "NUL in Message": _envelope(Message="\x00"),
    "NUL in MessageId": _envelope(MessageId="22b80b92\x00"),
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_a_body_that_is_not_an_sns_message_is_a_400(sns: Sns, body: bytes) -> None:
    answer = await sns.post(body)
    assert answer.status_code == 400, answer.text[:300]
    assert answer.json()["error"]["code"] == "not_sns_message"
    assert len(answer.text) < 2000  # the body is not echoed back


def _bounce(**changes: object) -> dict[str, object]:
    event = ses_event("eventpub-bounce-permanent-general.json", to="taro@example.com")
    event.update(changes)
    return event


def _with_recipient(address: str) -> str:
    event = _bounce()
    event["bounce"]["bouncedRecipients"][0]["emailAddress"] = address  # type: ignore[index]
    return json.dumps(event)


BAD_SES_EVENTS = {
    "deep arrays": "[" * _DEEP + "]" * _DEEP,
    "deep inside the event": json.dumps(_bounce())[:-1]
    + ', "x": '
    + "[" * _DEEP
    + "]" * _DEEP
    + "}",
    "huge integer in the event": json.dumps(_bounce())[:-1] + ', "x": ' + "9" * _DIGITS + "}",
    "bounce as a huge number": '{"eventType": "Bounce", "bounce": ' + "9" * _DIGITS + "}",
    "array": "[]",
    "not JSON": "Bounce!",
    "NUL in the recipient": _with_recipient("taro\x00@example.com"),
    "lone surrogate in the recipient": json.dumps(_bounce()).replace(
        "taro@example.com", "taro\\ud800@example.com"
    ),
    "NUL in the message id": json.dumps(_bounce()).replace("EXAMPLE7c", "EXAMPLE\\u00007c"),
    "lone surrogate in the message id": json.dumps(_bounce()).replace(
        "EXAMPLE7c", "EXAMPLE\\udc007c"
    ),
}


@pytest.mark.parametrize("event", BAD_SES_EVENTS.values(), ids=BAD_SES_EVENTS.keys())
async def test_a_signed_notification_whose_ses_event_is_unreadable_is_a_400_or_ignored(
    sns: Sns, event: str
) -> None:
    answer = await sns.post(sns.notification(event))
    if answer.status_code == 200:
        # Verified, but not SES feedback tegami acts on.
        assert answer.json()["outcome"] == "ignored", answer.text[:300]
        return
    assert answer.status_code == 400, answer.text[:300]
    assert answer.json()["error"]["code"] == "unreadable_ses_event"


async def test_a_bounce_whose_diagnostic_cannot_be_stored_still_suppresses(
    sns: Sns, auth: dict[str, str]
) -> None:
    event = json.dumps(_bounce()).replace("user unknown", "user\\u0000unknown\\udc00")
    await sns.deliver(event)
    answer = await sns.client.post(
        "/emails/verify-email",
        json={"to": "taro@example.com", "params": PARAMS["verify-email"]},
        headers=auth,
    )
    assert answer.status_code == 409
    assert answer.json()["error"]["reason"] == "hard_bounce"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
)


@given(st.one_of(st.binary(max_size=200), _json.map(lambda v: json.dumps(v).encode())))
def test_parse_message_returns_a_message_or_refuses_the_shape(body: bytes) -> None:
    try:
        message = parse_message(body)
    except SnsShapeError:
        return
    assert isinstance(message, dict) and message["Type"] in MESSAGE_TYPES


@given(st.one_of(st.text(max_size=200), _json.map(json.dumps)))
def test_parse_ses_event_returns_an_event_or_refuses_it(message: str) -> None:
    try:
        parse_ses_event(message)
    except SesEventError:
        return
