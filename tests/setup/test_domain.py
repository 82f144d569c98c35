"""`tegami domain setup|check`: against moto's SES over HTTP and a local authoritative DNS server.

The zones served here are built from the same snippet `setup` prints (``expected_records`` →
``zone_snippet``), then broken one record at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import re
import secrets
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dns.zone
import pytest
from moto.core import DEFAULT_ACCOUNT_ID  # type: ignore[attr-defined]
from moto.core.exceptions import JsonRESTError
from moto.ses import models as ses_models
from moto.ses.models import ses_backends
from moto.sesv2 import models as sesv2_models

from app.setup import domain
from app.setup.domain import (
    DnsRecord,
    Kind,
    dmarc_tags,
    domain_arguments,
    expected_records,
    mail_from_domain,
    parse_nameserver,
    run_domain_command,
    zone_snippet,
)
from tests.ses import REGION, MotoSes
from tests.setup.dns_server import DnsServer, serving, zone_from_text

DOMAIN = "proworks.jp"
CHECK_REGION = "ap-northeast-1"
TOKENS = [
    "4ha2bkxqjv7d3wsm2lr6cyzn5tpeuo7f",
    "dq3lz6mjhgq2w7kybrsn4pavx5ec3tfi",
    "x7eu2cfwkq5lnm3ta6vh4ryjsdgo2pbi",
]


def build_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tegami domain")
    domain_arguments(parser)
    return parser.parse_args(argv)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_domain_command(build_args(*argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def records(region: str = CHECK_REGION) -> list[DnsRecord]:
    return expected_records(DOMAIN, dkim_tokens=TOKENS, mail_from=f"bounce.{DOMAIN}", region=region)


def zone(published: Sequence[DnsRecord], extra: str = "") -> str:
    return zone_snippet(DOMAIN, published, region=CHECK_REGION) + extra


def replaced(kind: Kind, *, value: str) -> list[DnsRecord]:
    return [dataclasses.replace(r, value=value) if r.kind is kind else r for r in records()]


LEGACY = f'_amazonses.{DOMAIN}. 3600 IN TXT "pmBGN/7MjnfhTKUZ06Enqq1PeGUaOkw8lGhcfwefcHU="\n'


@pytest.fixture
def dns_zone() -> Iterator[Callable[[str], DnsServer]]:
    """Serve zone-file text on a local port; the server stops after the test."""
    servers: list[Any] = []

    def serve(text: str) -> DnsServer:
        context = serving(zone_from_text(text, DOMAIN))
        servers.append(context)
        return context.__enter__()

    yield serve
    for context in servers:
        context.__exit__(None, None, None)


def check(server: DnsServer, *extra: str) -> tuple[int, str, str]:
    tokens = [arg for token in TOKENS for arg in ("--dkim-token", token)]
    return run(
        "check", DOMAIN, "--nameserver", server.address, "--region", CHECK_REGION, *tokens, *extra
    )


def verdicts(output: str) -> dict[str, str]:
    """The verdict column of the check table, by record label."""
    table = output.split("\n\n")[0].splitlines()[1:]
    cells = [re.split(r" {2,}", line) for line in table]
    return {row[0]: row[-1] for row in cells}


# --- check against a local DNS server ------------------------------------------------------------


@pytest.mark.parametrize("legacy", [LEGACY, ""], ids=["with-amazonses-txt", "without"])
def test_complete_zone_passes_and_legacy_txt_is_only_information(
    dns_zone: Callable[[str], DnsServer], legacy: str
) -> None:
    code, out, err = check(dns_zone(zone(records(), legacy)))

    assert (code, err) == (0, "")
    assert verdicts(out) == {
        "DKIM 1": "ok",
        "DKIM 2": "ok",
        "DKIM 3": "ok",
        "SPF": "ok",
        "DMARC": "ok",
        "MAIL FROM MX": "ok",
        "MAIL FROM SPF": "ok",
        "SES verification (legacy)": "info",
    }
    assert f"every required record for {DOMAIN} is in place" in out
    assert "p=none only reports; move to p=quarantine" in out


def test_one_missing_dkim_record_is_named_and_nothing_else(
    dns_zone: Callable[[str], DnsServer],
) -> None:
    missing = f"{TOKENS[1]}._domainkey.{DOMAIN}"
    published = [r for r in records() if r.name != missing]

    code, out, _ = check(dns_zone(zone(published, LEGACY)))

    assert code == 1
    assert [label for label, v in verdicts(out).items() if v != "ok"] == [
        "DKIM 2",
        "SES verification (legacy)",
    ]
    flagged = [line for line in out.splitlines() if "missing" in line]
    assert len(flagged) == 3  # the table row, its note, the summary
    assert all(missing in line for line in flagged[:2])
    assert f"add CNAME {missing} → {TOKENS[1]}.dkim.amazonses.com" in out
    assert "1 required record(s) missing or wrong" in out


def test_spf_without_amazonses_is_wrong(dns_zone: Callable[[str], DnsServer]) -> None:
    published = replaced(Kind.SPF, value="v=spf1 include:_spf.google.com ~all")

    code, out, _ = check(dns_zone(zone(published)))

    assert code == 1
    assert verdicts(out)["SPF"] == "wrong"
    assert "add include:amazonses.com to it" in out


def test_two_spf_records_are_wrong_even_if_one_includes_amazonses(
    dns_zone: Callable[[str], DnsServer],
) -> None:
    second = f'{DOMAIN}. 3600 IN TXT "v=spf1 include:_spf.google.com ~all"\n'
    # Other TXT records beside SPF (site verifications) are fine.
    other = f'{DOMAIN}. 3600 IN TXT "google-site-verification=abc"\n'

    code, out, _ = check(dns_zone(zone(records(), second + other)))

    assert code == 1
    assert verdicts(out)["SPF"] == "wrong"
    assert "2 v=spf1 records" in out
    assert verdicts(out)["MAIL FROM SPF"] == "ok"


def test_missing_dmarc_is_missing(dns_zone: Callable[[str], DnsServer]) -> None:
    published = [r for r in records() if r.kind is not Kind.DMARC]

    code, out, _ = check(dns_zone(zone(published)))

    assert code == 1
    assert verdicts(out)["DMARC"] == "missing"
    assert f"_dmarc.{DOMAIN}" in out


def test_strict_spf_alignment_in_dmarc_is_wrong(dns_zone: Callable[[str], DnsServer]) -> None:
    published = replaced(Kind.DMARC, value="v=DMARC1; p=quarantine; adkim=s; aspf=s")

    code, out, _ = check(dns_zone(zone(published)))

    assert code == 1
    assert verdicts(out)["DMARC"] == "wrong"
    assert "aspf=s" in out


def test_mail_from_mx_in_another_region_is_wrong(dns_zone: Callable[[str], DnsServer]) -> None:
    published = [r for r in records() if r.kind is not Kind.MAIL_FROM_MX]
    published += [r for r in records(region="us-west-2") if r.kind is Kind.MAIL_FROM_MX]

    code, out, _ = check(dns_zone(zone(published)))

    assert code == 1
    assert verdicts(out)["MAIL FROM MX"] == "wrong"
    assert "10 feedback-smtp.us-west-2.amazonses.com" in out
    assert "must point only at feedback-smtp.ap-northeast-1.amazonses.com" in out


def test_custom_mail_from_subdomain_is_checked(dns_zone: Callable[[str], DnsServer]) -> None:
    published = expected_records(
        DOMAIN, dkim_tokens=TOKENS, mail_from=f"mail.{DOMAIN}", region=CHECK_REGION
    )
    server = dns_zone(zone(published))

    assert check(server, "--mail-from", "mail")[0] == 0
    code, out, _ = check(server)  # the default, bounce.proworks.jp, is not published
    assert code == 1
    assert verdicts(out)["MAIL FROM MX"] == "missing"


def test_unreachable_nameserver_exits_2_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(domain, "DNS_LIFETIME", 0.5)
    # A bound socket that never answers: queries time out.
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        tokens = [arg for token in TOKENS for arg in ("--dkim-token", token)]
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        code, out, err = run("check", DOMAIN, "--nameserver", address, *tokens)
    finally:
        silent.close()

    assert (code, out) == (2, "")
    assert f"nameserver {address} cannot be reached" in err


def test_dkim_token_must_be_given_three_times() -> None:
    code, _, err = run("check", DOMAIN, "--dkim-token", TOKENS[0], "--dkim-token", TOKENS[1])
    assert code == 2
    assert "three times" in err


# --- setup and check against moto's SES --------------------------------------------------------


@pytest.fixture
def ses_with_easy_dkim(ses: MotoSes, monkeypatch: pytest.MonkeyPatch) -> MotoSes:
    """moto's SES, empty, made to answer like SES where moto 5.2 does not.

    moto returns no DKIM tokens for an Easy DKIM identity and silently replaces an identity
    created twice; real SES returns three tokens and AlreadyExistsException.
    """
    init = ses_models.EmailIdentity.__init__
    create = sesv2_models.SESV2Backend.create_email_identity

    def init_with_tokens(self: Any, email_identity: str, *args: Any, **kwargs: Any) -> None:
        init(self, email_identity, *args, **kwargs)
        if self.identity_type == "DOMAIN" and not self.dkim_signing_attributes:
            self.dkim_attributes["Tokens"] = [secrets.token_hex(16) for _ in range(3)]
            self.dkim_attributes["Status"] = "PENDING"

    def create_once(self: Any, email_identity: str, *args: Any, **kwargs: Any) -> Any:
        if email_identity in self.core_backend.email_identities:
            raise JsonRESTError(
                "AlreadyExistsException", f"Email identity {email_identity} already exist."
            )
        return create(self, email_identity, *args, **kwargs)

    monkeypatch.setattr(ses_models.EmailIdentity, "__init__", init_with_tokens)
    monkeypatch.setattr(sesv2_models.SESV2Backend, "create_email_identity", create_once)
    ses.reset()
    return ses


def ses_tokens(domain: str) -> list[str]:
    identity = ses_backends[DEFAULT_ACCOUNT_ID][REGION].email_identities[domain]
    return list(identity.dkim_attributes["Tokens"])


def snippet(output: str) -> str:
    start = output.index("; tegami domain setup")
    return output[start : output.index("\n\n", start)] + "\n"


def test_setup_prints_the_records_for_the_tokens_ses_returned(
    ses_with_easy_dkim: MotoSes,
) -> None:
    code, out, err = run("setup", DOMAIN)

    tokens = ses_tokens(DOMAIN)
    table = [line.split()[:3] for line in out.splitlines() if line.startswith("CNAME ")]
    assert table == [
        ["CNAME", f"{token}._domainkey.{DOMAIN}", f"{token}.dkim.amazonses.com"] for token in tokens
    ]
    assert f"SES identity {DOMAIN} ({REGION}): created" in out
    parsed = dns.zone.from_text(snippet(out), origin=DOMAIN, check_origin=False)
    cnames = {name.to_text(): rdata.to_text() for name, _, rdata in parsed.iterate_rdatas("CNAME")}
    assert cnames == {f"{t}._domainkey": f"{t}.dkim.amazonses.com." for t in tokens}
    mx = [rdata.to_text() for _, _, rdata in parsed.iterate_rdatas("MX")]
    assert mx == [f"10 feedback-smtp.{REGION}.amazonses.com."]
    txt = {name.to_text(): rdata.to_text() for name, _, rdata in parsed.iterate_rdatas("TXT")}
    assert txt == {
        "@": '"v=spf1 include:amazonses.com ~all"',
        "bounce": '"v=spf1 include:amazonses.com ~all"',
        "_dmarc": f'"v=DMARC1; p=none; rua=mailto:dmarc@{DOMAIN}"',
    }
    assert "p=none is a start" in out
    # moto 5.2 has no PutEmailIdentityMailFromAttributes (HTTP 404): setup says so and fails.
    assert code == 1
    assert (
        f"SES did not set the MAIL FROM domain bounce.{DOMAIN} "
        "(404, HTTP 404: the endpoint does not implement this operation)"
    ) in err


def test_setup_twice_finds_the_identity_and_prints_the_same_records(
    ses_with_easy_dkim: MotoSes,
) -> None:
    first = run("setup", DOMAIN)
    second = run("setup", DOMAIN)

    assert f"SES identity {DOMAIN} ({REGION}): already existed" in second[1]
    assert snippet(second[1]) == snippet(first[1])
    assert first[0] == second[0]


def test_setup_never_invents_dkim_records_when_ses_returns_no_tokens(ses: MotoSes) -> None:
    code, out, err = run("setup", "example.jp")  # plain moto: no tokens

    assert code == 1
    assert "_domainkey" not in out
    assert "SES returned 0 DKIM tokens instead of 3" in err
    assert "_dmarc.example.jp" in out


def test_setup_zone_passes_check_with_tokens_from_ses(
    ses_with_easy_dkim: MotoSes, dns_zone: Callable[[str], DnsServer]
) -> None:
    _, out, _ = run("setup", DOMAIN)
    server = dns_zone(snippet(out))

    code, report, err = run("check", DOMAIN, "--nameserver", server.address)

    assert (code, err) == (0, "")
    assert all(token in report for token in ses_tokens(DOMAIN))


def test_check_without_tokens_for_an_unknown_identity_explains(ses: MotoSes) -> None:
    code, out, err = run("check", "unknown.example", "--nameserver", "127.0.0.1:9")

    assert (code, out) == (2, "")
    assert "has no identity unknown.example" in err
    assert "--dkim-token three times" in err


# --- pure parts --------------------------------------------------------------------------------


def test_mail_from_accepts_a_label_or_the_full_name() -> None:
    assert mail_from_domain(DOMAIN, None) == "bounce.proworks.jp"
    assert mail_from_domain(DOMAIN, "mail") == "mail.proworks.jp"
    assert mail_from_domain(DOMAIN, "mail.proworks.jp.") == "mail.proworks.jp"


def test_nameserver_forms() -> None:
    assert parse_nameserver("192.0.2.1") == ("192.0.2.1", 53)
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    assert parse_nameserver("::1") == ("::1", 53)
    assert parse_nameserver("ns1.example.net:53") == ("ns1.example.net", 53)


def test_dmarc_tags_are_read_loosely() -> None:
    assert dmarc_tags("v=DMARC1;p=reject; aspf = r ;") == {
        "v": "DMARC1",
        "p": "reject",
        "aspf": "r",
    }
