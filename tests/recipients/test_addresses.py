"""Addresses: what is accepted can be sent, and every spelling of one mailbox matches one state.

The rule itself (pure), then through the API, the worker and moto's SES over HTTP, and through
a signed SES bounce posted to /sns/ses-events.
"""

from __future__ import annotations

import email
import email.policy
import re
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import AsyncEngine

from app.emails.catalog import EMAIL_KINDS
from app.emails.rendering import SenderInfo, render_email
from app.recipients.addresses import (
    AddressError,
    address_hash,
    check_address,
    mask_address,
    normalize_address,
    parse_address,
    quoted_address_pattern,
    wire_address,
)
from tests.ses import MotoSes
from tests.sns_messages import Sns, ses_event

LEGACY = {
    "taro.@docomo.ne.jp": '"taro."@docomo.ne.jp',
    "a..b@docomo.ne.jp": '"a..b"@docomo.ne.jp',
    ".c@ezweb.ne.jp": '".c"@ezweb.ne.jp',
}
COMPLIANT = ["taro@example.com", "Taro.Yamada+news@Example.CO.JP", "o'brien@mail.xn--p1ai"]
REFUSED = [
    "hanako@example.com\n",
    "hanako@example.com\r",
    "a\r\nb@x.jp",
    "taro\t@example.com",
    "taro@example.com\t",
    "taro\x00@example.com",
    "taro@example.com\u2028",
    " taro@example.com",
    "taro@example.com ",
    "taro @example.com",
    "ユーザー@example.com",
    "taro@例え.jp",
    "a@example.com, b@example.com",
    "Taro <taro@example.com>",
    "taro",
    "@example.com",
    "taro@",
    "taro@localhost",
    "taro@-x.jp",
    '"a b"@example.com',
    '"a"b"@example.com',
    '""@example.com',
    "a" * 65 + "@example.com",
    # 63 characters and a trailing dot: 65 once quoted, over SMTP's 64.
    "a" * 63 + ".@docomo.ne.jp",
]

# -- the rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("given_address", "wire"), LEGACY.items())
def test_legacy_carrier_addresses_are_sent_quoted(given_address: str, wire: str) -> None:
    assert check_address(given_address) == given_address
    assert wire_address(given_address) == wire
    # The quoted spelling names the same mailbox and is sent the same way.
    assert wire_address(wire) == wire


@pytest.mark.parametrize("address", COMPLIANT)
def test_compliant_addresses_are_never_quoted(address: str) -> None:
    assert wire_address(address) == address
    assert wire_address(f'"{address.split("@")[0]}"@{address.split("@")[1]}') == address


@pytest.mark.parametrize("address", REFUSED)
def test_addresses_that_cannot_be_sent_are_refused(address: str) -> None:
    with pytest.raises(AddressError):
        check_address(address)


def test_control_characters_are_named_in_the_refusal() -> None:
    with pytest.raises(AddressError, match="control characters or line breaks"):
        check_address("hanako@example.com\n")


def test_every_spelling_of_one_mailbox_hashes_alike() -> None:
    spellings = [
        '"taro."@docomo.ne.jp',
        "taro.@docomo.ne.jp",
        " Taro.@DOCOMO.ne.jp ",
        '"TARO."@docomo.ne.jp',
    ]
    assert {normalize_address(s) for s in spellings} == {"taro.@docomo.ne.jp"}
    assert len({address_hash(s, secret="k" * 16) for s in spellings}) == 1
    assert address_hash("taro@docomo.ne.jp", secret="k" * 16) != address_hash(
        "taro.@docomo.ne.jp", secret="k" * 16
    )


def test_mask_hides_the_local_part_of_either_spelling() -> None:
    assert mask_address("taro@example.com") == "t***@example.com"
    assert mask_address('"taro."@docomo.ne.jp') == "t***@docomo.ne.jp"
    assert mask_address("nonsense") == "***"


_ATEXT = "abcxyzABCXYZ0189!#$%&'*+/=?^_`{|}~-"
_locals = st.text(alphabet=_ATEXT + ".", min_size=1, max_size=64)
_labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_domains = st.builds(
    lambda labels, top: ".".join([*labels, top]),
    st.lists(_labels, min_size=1, max_size=3),
    st.from_regex(r"[a-z]{2,6}", fullmatch=True),
)
_addresses = st.builds(lambda local, domain: f"{local}@{domain}", _locals, _domains)
_anything = st.one_of(
    _addresses,
    st.text(max_size=80),
    st.builds(
        lambda a, junk, at: a[:at] + junk + a[at:],
        _addresses,
        st.text(max_size=3),
        st.integers(0, 80),
    ),
)


def _render(to: str) -> bytes:
    return render_email(
        kind=EMAIL_KINDS["matching-notification"],
        params={"job_url": "https://proworks.jp/jobs/1"},
        to=to,
        from_address="PRO WORKS <noreply@proworks.jp>",
        unsubscribe_url="https://mail.proworks.jp/unsubscribe/t",
        sender=SenderInfo(name="PRO WORKS", postal_address="東京都", contact="support@proworks.jp"),
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )


@given(_anything)
def test_anything_accepted_renders_to_the_same_mailbox(address: str) -> None:
    try:
        check_address(address)
    except AddressError:
        return
    raw = _render(address)
    message = email.message_from_bytes(raw, policy=email.policy.default)
    (parsed,) = message["To"].addresses
    # What a mail system reads back from the To: line is the mailbox the app named.
    assert normalize_address(parsed.addr_spec) == normalize_address(address)
    assert f"To: {wire_address(address)}\r\n".encode() in raw
    assert len(wire_address(address)) <= 254


@given(_anything)
def test_nothing_with_a_control_character_or_non_ascii_is_accepted(address: str) -> None:
    if address.isascii() and address.isprintable():
        return
    with pytest.raises(AddressError):
        check_address(address)
    with pytest.raises(ValueError):
        _render(address)


@given(_addresses)
def test_wire_form_is_accepted_and_names_the_same_mailbox(address: str) -> None:
    try:
        wire = wire_address(address)
    except AddressError:
        return
    assert wire_address(wire) == wire
    assert normalize_address(wire) == normalize_address(address)
    assert parse_address(wire) == parse_address(address)


# -- through the API, the worker and SES -----------------------------------------------------

_PARAMS = {"verification_url": "https://proworks.jp/verify?token=v1"}


async def _post(client: httpx.AsyncClient, auth: dict[str, str], to: str) -> httpx.Response:
    return await client.post(
        "/emails/verify-email", json={"to": to, "params": _PARAMS}, headers=auth
    )


async def _drain(client: httpx.AsyncClient) -> None:
    await client.app.state.worker.drain()  # type: ignore[attr-defined]


async def test_legacy_carrier_addresses_reach_ses_quoted(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes
) -> None:
    ids: dict[str, str] = {}
    for address in [*LEGACY, "taro@example.com"]:
        answer = await _post(client, auth, address)
        assert answer.status_code == 202, answer.text
        ids[address] = answer.json()["id"]

    await _drain(client)

    received = {mail.destinations[0]: mail for mail in ses.sent()}
    assert sorted(received) == sorted([*LEGACY.values(), "taro@example.com"])
    for address, wire in LEGACY.items():
        assert f"\r\nTo: {wire}\r\n" in received[wire].raw
        shown = (await client.get(f"/emails/{ids[address]}", headers=auth)).json()
        assert shown["status"] == "sent"
        assert shown["to"] == address  # as the app gave it
    assert "\r\nTo: taro@example.com\r\n" in received["taro@example.com"].raw


@pytest.mark.parametrize(
    "address", ["hanako@example.com\n", "a\r\nb@x.jp", "taro\t@example.com", "taro\x00@example.com"]
)
async def test_control_characters_in_an_address_are_a_422(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes, address: str
) -> None:
    answer = await _post(client, auth, address)
    assert answer.status_code == 422, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert "control characters or line breaks" in str(error)
    await _drain(client)
    assert ses.sent() == []


async def test_bounce_reported_for_the_quoted_spelling_suppresses_the_address(
    sns: Sns, auth: dict[str, str], ses: MotoSes
) -> None:
    answer = await _post(sns.client, auth, "taro.@docomo.ne.jp")
    assert answer.status_code == 202, answer.text
    await _drain(sns.client)
    (mail,) = ses.sent()

    # SES names the recipient as it was given in Destination: quoted.
    event = ses_event("eventpub-bounce-permanent-general.json", ses_message_id=mail.ses_message_id)
    event["bounce"]["bouncedRecipients"][0]["emailAddress"] = '"taro."@docomo.ne.jp'
    event["bounce"]["bouncedRecipients"][0]["diagnosticCode"] = (
        'smtp; 550 5.1.1 <"taro."@docomo.ne.jp>: user unknown'
    )
    event["mail"]["destination"] = ['"taro."@docomo.ne.jp']
    await sns.deliver(event)

    shown = (await sns.client.get(f"/emails/{answer.json()['id']}", headers=auth)).json()
    assert shown["status"] == "bounced"
    for spelling in ("taro.@docomo.ne.jp", '"taro."@docomo.ne.jp', "TARO.@docomo.ne.jp"):
        refused = await _post(sns.client, auth, spelling)
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["reason"] == "hard_bounce"
    state = await sns.client.get("/recipients/taro.@docomo.ne.jp", headers=auth)
    assert state.status_code == 200, state.text
    assert state.json()["suppressed"]["reason"] == "hard_bounce"
    # A different mailbox on the same domain is untouched.
    assert (await _post(sns.client, auth, "taro@docomo.ne.jp")).status_code == 202

    # Erasing either spelling scrubs free text that quoted the other one.
    erased = await sns.client.delete("/recipients/taro.@docomo.ne.jp", headers=auth)
    assert erased.status_code == 200, erased.text
    state = await sns.client.get('/recipients/"taro."@docomo.ne.jp', headers=auth)
    assert state.json()["suppressed"]["reason"] == "hard_bounce"
    assert "taro" not in state.text.lower()
    shown = (await sns.client.get(f"/emails/{answer.json()['id']}", headers=auth)).json()
    details = [e["detail"] for e in shown["events"]]
    assert "bounce Permanent/General: smtp; 550 5.1.1 <[erased]>: user unknown" in details
    assert "taro" not in str(shown).lower()


# -- the erasure's match: that address, and no other ----------------------------------------


ERASURE_MATCHES = [
    ("taro@example.com", "smtp; 550 5.1.1 <taro@example.com>... User unknown", True),
    ("taro@example.com", "mail to Taro@Example.COM.", True),  # case; a sentence's dot
    ("taro@example.com", "<kotaro@example.com>", False),  # a neighbour holding it
    ("taro@example.com", "x.taro@example.com", False),
    ("taro@example.com", "taro@example.com.au", False),  # another domain
    ("taro@example.com", "taro@example.community", False),
    ("aro@example.com", "kotaro@example.com, taro@example.com", False),
    ("taro.@docomo.ne.jp", 'RCPT TO:<"taro."@docomo.ne.jp> refused', True),  # the wire form
    ("taro.@docomo.ne.jp", "taro.@docomo.ne.jp", True),
    ('"taro."@docomo.ne.jp', "taro.@docomo.ne.jp", True),
    ("taro.@docomo.ne.jp", '"kotaro."@docomo.ne.jp', False),
    ("t.aro@example.com", "txaro@example.com", False),  # its dot is a dot, not any char
    ("a+b$c@example.com", "<a+b$c@example.com>", True),  # metacharacters are literals
    ("a+b$c@example.com", "aab$c@example.com aaab@example.com", False),
    ("a|b@example.com", "b@example.com", False),
]


@pytest.mark.parametrize(("erased", "text", "found"), ERASURE_MATCHES)
def test_the_erasure_pattern_matches_that_address_only(erased: str, text: str, found: bool) -> None:
    assert bool(re.search(quoted_address_pattern(erased), text, re.IGNORECASE)) is found


async def test_postgresql_reads_the_erasure_pattern_as_python_does(engine: AsyncEngine) -> None:
    # The erasure and SES feedback match and scrub in SQL; the same text must mean the same.
    async with engine.connect() as conn:
        for erased, text_, found in ERASURE_MATCHES:
            pattern = quoted_address_pattern(erased)
            matched, scrubbed = (
                await conn.execute(
                    sql("SELECT :t ~* :p, regexp_replace(:t, :p, '[erased]', 'gi')"),
                    {"t": text_, "p": pattern},
                )
            ).one()
            assert matched is found, (erased, text_)
            assert scrubbed == re.sub(pattern, "[erased]", text_, flags=re.IGNORECASE)


@given(st.from_regex(r"[a-z0-9._+-]{1,12}", fullmatch=True))
def test_no_address_matches_inside_a_longer_one(local: str) -> None:
    pattern = quoted_address_pattern(f"{local}@example.com")
    assert re.search(pattern, f"<{local}@example.com>", re.IGNORECASE)
    assert not re.search(pattern, f"<k{local}@example.com>", re.IGNORECASE)
    assert not re.search(pattern, f"<{local}@example.co.jp>", re.IGNORECASE)
