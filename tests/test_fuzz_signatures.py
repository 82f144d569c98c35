"""hypothesis on what the SNS verifier and the token codec must refuse, where the existing
properties (tests/sns/test_signature.py, tests/unsubscribe/test_tokens.py) leave gaps:

- SNS: small edits (one character replaced, inserted or deleted) in every signed field of
  every message Type, both signature versions, including the confirmation-only fields
  ``SubscribeURL`` and ``Token``; and any flipped bit of the signature itself. The existing
  properties mutate AWS-signed Notifications only, and replace whole fields.
- Tokens: one character replaced, inserted or deleted, in the tokens of any claim (the
  existing properties flip bits of the decoded bytes, or edit the text of one fixed token):
  every length of category, so every kind of base64 tail.
"""

from __future__ import annotations

import base64
import string
from typing import Any

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from app.sns.signature import (
    SnsShapeError,
    SnsVerificationError,
    make_signing_identity,
    sign_message,
    verify_signature,
)
from app.unsubscribe.tokens import UnsubscribeClaim, make_token, read_token
from tests.sns.test_signature import dev_message, signed_fields

IDENTITY = make_signing_identity()
CERTIFICATE = x509.load_pem_x509_certificate(IDENTITY[1])
MESSAGES = [
    sign_message(dev_message(kind, **extra), IDENTITY[0], signature_version=version)
    for kind, extra in [
        ("Notification", {}),
        ("Notification", {"Subject": "Amazon SES Email Event Notification"}),
        ("SubscriptionConfirmation", {}),
        ("UnsubscribeConfirmation", {}),
    ]
    for version in ("1", "2")
]
SECRET = "current-secret-0123456789"
URL_SAFE = string.ascii_letters + string.digits + "-_"


def test_the_unedited_messages_verify() -> None:
    for message in MESSAGES:
        verify_signature(message, CERTIFICATE)


@st.composite
def edits(draw: st.DrawFn, text: str, alphabet: st.SearchStrategy[str]) -> str:
    """``text`` with one character replaced, inserted or deleted."""
    how = draw(st.sampled_from(["replace", "insert", "delete"] if text else ["insert"]))
    if how == "insert":
        index = draw(st.integers(0, len(text)))
        return text[:index] + draw(alphabet) + text[index:]
    index = draw(st.integers(0, len(text) - 1))
    if how == "delete":
        return text[:index] + text[index + 1 :]
    replacement = draw(alphabet.filter(lambda c: c != text[index]))
    return text[:index] + replacement + text[index + 1 :]


@settings(max_examples=300, deadline=None, database=None)
@given(data=st.data())
def test_any_small_edit_of_any_signed_field_of_any_type_is_refused(data: st.DataObject) -> None:
    message: dict[str, Any] = data.draw(st.sampled_from(MESSAGES))
    field = data.draw(st.sampled_from([f for f in signed_fields(message) if f != "Type"]))
    edited = data.draw(edits(message[field], st.characters()))
    with pytest.raises((SnsVerificationError, SnsShapeError)) as caught:
        verify_signature({**message, field: edited}, CERTIFICATE)
    if isinstance(caught.value, SnsVerificationError):
        assert caught.value.reason == "bad_signature", (field, edited)


@settings(max_examples=200, deadline=None, database=None)
@given(data=st.data())
def test_any_flipped_bit_of_the_signature_is_refused(data: st.DataObject) -> None:
    message: dict[str, Any] = data.draw(st.sampled_from(MESSAGES))
    raw = bytearray(base64.b64decode(message["Signature"]))
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(SnsVerificationError) as caught:
        verify_signature({**message, "Signature": base64.b64encode(raw).decode()}, CERTIFICATE)
    assert caught.value.reason == "bad_signature"


claims = st.builds(
    UnsubscribeClaim,
    recipient_id=st.integers(min_value=1, max_value=2**63 - 1),
    category=st.from_regex(r"[a-z_]{1,32}", fullmatch=True),
    issued_at=st.integers(min_value=0, max_value=2**32 - 1),
)


@settings(max_examples=300, deadline=None, database=None)
@given(claim=claims, data=st.data())
def test_any_one_character_edit_of_any_token_is_refused(
    claim: UnsubscribeClaim, data: st.DataObject
) -> None:
    token = make_token(claim, secret=SECRET)
    alphabet = st.sampled_from(URL_SAFE) | st.characters()
    forged = data.draw(edits(token, alphabet))
    assert read_token(forged, secrets=[SECRET]) is None, (token, forged)
