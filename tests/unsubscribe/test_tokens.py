"""Unsubscribe tokens: what one signs reads back, and nothing else ever reads."""

from __future__ import annotations

import base64
import hashlib
import hmac
import string
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.unsubscribe.tokens import (
    RESUBSCRIBE_NONCE_SECONDS,
    UnsubscribeClaim,
    make_resubscribe_nonce,
    make_token,
    read_token,
    resubscribe_nonce_valid,
)

SECRET = "current-secret-0123456789"
OLD_SECRET = "previous-secret-9876543210"
CLAIM = UnsubscribeClaim(recipient_id=123, category="matching", issued_at=1_700_000_000)
# The base64url alphabet, in its order.
URL_SAFE = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"

# Mails already in inboxes carry tokens of this exact form: changing it breaks their links.
GOLDEN = "AQAAAAAAAAB7ZVPxAG1hdGNoaW5n8NvuBNZlhUvcrX0uE_bIBw"

claims = st.builds(
    UnsubscribeClaim,
    recipient_id=st.integers(min_value=1, max_value=2**63 - 1),
    category=st.from_regex(r"[a-z_]{1,32}", fullmatch=True),
    issued_at=st.integers(min_value=0, max_value=2**32 - 1),
)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def signed(body: bytes, secret: str = SECRET) -> str:
    """A token for any body, signed as version 1 signs: to show what the reader refuses."""
    mac = hmac.new(secret.encode(), b"tegami.unsubscribe.v1\x00" + body, hashlib.sha256)
    return b64(body + mac.digest()[:16])


def body(
    version: int = 1, recipient_id: int = 123, issued_at: int = 0, category: bytes = b"x"
) -> bytes:
    return struct.pack(">BQI", version, recipient_id, issued_at) + category


def test_round_trip() -> None:
    token = make_token(CLAIM, secret=SECRET)

    assert read_token(token, secrets=[SECRET]) == CLAIM


def test_format_is_stable() -> None:
    layout = body(recipient_id=123, issued_at=1_700_000_000, category=b"matching")

    assert signed(layout) == GOLDEN
    assert make_token(CLAIM, secret=SECRET) == GOLDEN
    assert read_token(GOLDEN, secrets=[SECRET]) == CLAIM


def test_token_is_a_short_url_safe_path_segment() -> None:
    token = make_token(CLAIM, secret=SECRET)
    longest = make_token(UnsubscribeClaim(2**63 - 1, "z" * 32, 2**32 - 1), secret=SECRET)

    assert set(token) <= set(URL_SAFE)
    assert len(token) == 50
    assert len(longest) == 82
    assert base64.urlsafe_b64decode(token + "==")[0] == 1  # version byte


def test_same_claim_different_secret_gives_a_different_token() -> None:
    assert make_token(CLAIM, secret=SECRET) != make_token(CLAIM, secret=OLD_SECRET)


def test_token_made_with_an_old_secret_reads_while_the_secret_is_listed() -> None:
    old_token = make_token(CLAIM, secret=OLD_SECRET)

    assert read_token(old_token, secrets=[SECRET, OLD_SECRET]) == CLAIM
    assert read_token(make_token(CLAIM, secret=SECRET), secrets=[SECRET, OLD_SECRET]) == CLAIM


def test_token_made_with_a_removed_secret_no_longer_reads() -> None:
    old_token = make_token(CLAIM, secret=OLD_SECRET)

    assert read_token(old_token, secrets=[SECRET]) is None


def test_every_single_character_change_is_refused() -> None:
    token = make_token(CLAIM, secret=SECRET)
    for position, original in enumerate(token):
        for replacement in URL_SAFE.replace(original, ""):
            forged = token[:position] + replacement + token[position + 1 :]
            assert read_token(forged, secrets=[SECRET]) is None, forged


def test_every_truncation_and_extension_is_refused() -> None:
    token = make_token(CLAIM, secret=SECRET)
    for end in range(len(token)):
        assert read_token(token[:end], secrets=[SECRET]) is None
        assert read_token(token[end + 1 :], secrets=[SECRET]) is None
    for extra in ("A", "AA", "AAAA", "-", "x" * 40):
        assert read_token(token + extra, secrets=[SECRET]) is None


def test_non_canonical_spelling_of_a_valid_token_is_refused() -> None:
    token = make_token(CLAIM, secret=SECRET)
    # 50 characters carry 37 bytes: the low 4 bits of the last character are unused, so
    # setting them spells the same bytes differently.
    value = URL_SAFE.index(token[-1])
    assert value & 0b1111 == 0
    non_canonical = token[:-1] + URL_SAFE[value | 0b0101]

    assert base64.urlsafe_b64decode(non_canonical + "==") == base64.urlsafe_b64decode(token + "==")
    assert read_token(non_canonical, secrets=[SECRET]) is None


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "=",
        "A",
        "AAAA",
        GOLDEN + "=",
        GOLDEN + "==",
        GOLDEN.replace("_", "/"),
        GOLDEN.replace("_", "+"),
        GOLDEN[:10] + "+" + GOLDEN[11:],
        GOLDEN[:10] + "/" + GOLDEN[11:],
        GOLDEN + "\n",
        " " + GOLDEN,
        GOLDEN[:20] + "é" + GOLDEN[21:],
        GOLDEN[:20] + "\uff21" + GOLDEN[21:],  # fullwidth A
        GOLDEN[:20] + "\x00" + GOLDEN[21:],
        GOLDEN[:25] + "." + GOLDEN[26:],
        "A" * 10_000_000,
        GOLDEN * 2,
        "../" + GOLDEN,
    ],
    ids=lambda value: repr(value[:24]),
)
def test_garbage_is_refused(garbage: str) -> None:
    assert read_token(garbage, secrets=[SECRET]) is None


@pytest.mark.parametrize("not_a_string", [None, b"AQAA", 12, ["AQAA"]])
def test_non_string_token_is_refused(not_a_string: object) -> None:
    assert read_token(not_a_string, secrets=[SECRET]) is None  # type: ignore[arg-type]


def test_well_signed_other_version_is_refused() -> None:
    assert read_token(signed(body(category=b"matching")), secrets=[SECRET]) is not None
    assert read_token(signed(body(version=2, category=b"matching")), secrets=[SECRET]) is None


def test_mac_without_the_domain_prefix_is_refused() -> None:
    raw = body(category=b"matching")
    bare_mac = hmac.new(SECRET.encode(), raw, hashlib.sha256).digest()[:16]

    assert read_token(b64(raw + bare_mac), secrets=[SECRET]) is None


@pytest.mark.parametrize(
    "bad_body",
    [
        body(recipient_id=0),
        body(category=b"Matching"),
        body(category=b"a" * 33),
        body(category=b""),
        body(category="é".encode()),
        body(category=b"\xff"),
    ],
)
def test_well_signed_invalid_claim_is_refused(bad_body: bytes) -> None:
    # Only someone holding the secret could make these; still never a claim, never an error.
    assert read_token(signed(bad_body), secrets=[SECRET]) is None


@pytest.mark.parametrize(
    ("recipient_id", "category", "issued_at"),
    [
        (0, "matching", 0),
        (-1, "matching", 0),
        (2**63, "matching", 0),
        (True, "matching", 0),
        (1, "", 0),
        (1, "Matching", 0),
        (1, "matching-news", 0),
        (1, "a" * 33, 0),
        (1, "matching\n", 0),
        (1, "matching", -1),
        (1, "matching", 2**32),
        (1, "matching", 1.5),
    ],
)
def test_invalid_claim_cannot_be_made(recipient_id: int, category: str, issued_at: int) -> None:
    with pytest.raises(ValueError):
        UnsubscribeClaim(recipient_id, category, issued_at)


def test_empty_secret_is_refused_when_signing() -> None:
    with pytest.raises(ValueError):
        make_token(CLAIM, secret="")


@pytest.mark.parametrize(
    ("secrets", "error"),
    [(SECRET, TypeError), ([], ValueError), ([SECRET, ""], ValueError)],
)
def test_misconfigured_secrets_fail_loudly(secrets: list[str], error: type[Exception]) -> None:
    with pytest.raises(error):
        read_token(GOLDEN, secrets=secrets)


@settings(database=None)
@given(claim=claims, secret=st.text(min_size=1, max_size=64))
def test_any_claim_round_trips(claim: UnsubscribeClaim, secret: str) -> None:
    token = make_token(claim, secret=secret)

    assert len(token) <= 82
    assert set(token) <= set(URL_SAFE)
    assert read_token(token, secrets=[OLD_SECRET, secret]) == claim


@settings(database=None)
@given(text=st.text(max_size=200) | st.text(alphabet=URL_SAFE, min_size=30, max_size=90))
def test_random_strings_never_raise_and_never_verify(text: str) -> None:
    assert read_token(text, secrets=[SECRET, OLD_SECRET]) is None


@settings(database=None)
@given(claim=claims, data=st.data())
def test_any_flipped_bit_is_refused(claim: UnsubscribeClaim, data: st.DataObject) -> None:
    raw = bytearray(base64.urlsafe_b64decode(make_token(claim, secret=SECRET) + "=="))
    bit = data.draw(st.integers(min_value=0, max_value=len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)

    assert read_token(b64(bytes(raw)), secrets=[SECRET]) is None


# -- the resubscribe nonce: what only the done page gives --------------------------------

NOW = 1_800_000_000


def test_a_nonce_is_good_for_its_token_until_it_expires() -> None:
    token = make_token(CLAIM, secret=SECRET)
    nonce = make_resubscribe_nonce(token, expires_at=NOW + 60, secret=SECRET)
    assert resubscribe_nonce_valid(nonce, token=token, now=NOW, secrets=[SECRET])
    assert resubscribe_nonce_valid(nonce, token=token, now=NOW + 59, secrets=[OLD_SECRET, SECRET])
    assert not resubscribe_nonce_valid(nonce, token=token, now=NOW + 60, secrets=[SECRET])
    assert not resubscribe_nonce_valid(nonce, token=token, now=NOW, secrets=[OLD_SECRET])


def test_a_nonce_made_by_a_replica_whose_clock_runs_ahead_is_still_good() -> None:
    token = make_token(CLAIM, secret=SECRET)
    nonce = make_resubscribe_nonce(
        token, expires_at=NOW + 90 + RESUBSCRIBE_NONCE_SECONDS, secret=SECRET
    )
    assert resubscribe_nonce_valid(nonce, token=token, now=NOW, secrets=[SECRET])


def test_a_nonce_is_bound_to_one_token() -> None:
    token = make_token(CLAIM, secret=SECRET)
    other = make_token(UnsubscribeClaim(124, "matching", CLAIM.issued_at), secret=SECRET)
    nonce = make_resubscribe_nonce(token, expires_at=NOW + 60, secret=SECRET)
    assert not resubscribe_nonce_valid(nonce, token=other, now=NOW, secrets=[SECRET])


def test_an_edited_or_overlong_nonce_is_refused() -> None:
    token = make_token(CLAIM, secret=SECRET)
    nonce = make_resubscribe_nonce(token, expires_at=NOW + 60, secret=SECRET)
    expiry, mac = nonce.split(".")
    for bad in (
        f"{int(expiry) + 1}.{mac}",  # a later expiry under the same mac
        f"0{expiry}.{mac}",  # another spelling
        f"{expiry}.{mac[:-1]}",
        f"{expiry}.{mac}A",
        nonce + "\n",
        "",
        token,
    ):
        assert not resubscribe_nonce_valid(bad, token=token, now=NOW, secrets=[SECRET]), bad
    # Never longer-lived than the code mints (give or take replicas' clocks), even when
    # signed with the secret.
    far = make_resubscribe_nonce(
        token, expires_at=NOW + RESUBSCRIBE_NONCE_SECONDS + 301, secret=SECRET
    )
    assert not resubscribe_nonce_valid(far, token=token, now=NOW, secrets=[SECRET])


@given(st.text(max_size=200), st.text(max_size=200))
def test_random_nonces_never_raise_and_never_verify(nonce: str, token: str) -> None:
    assert not resubscribe_nonce_valid(nonce, token=token, now=NOW, secrets=[SECRET])
