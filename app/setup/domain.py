"""`tegami domain setup|check`: the sending domain's SES identity and the DNS records it needs.

``expected_records`` is the one source of truth for those records: ``setup`` prints them (table
and zone-file snippet) and ``check`` judges what DNS answers against them (``judge``, pure).
The I/O around them is thin: SES v2 through aioboto3, DNS through dnspython's async resolver.

``DOMAIN`` is the command as the ``tegami`` parser registers it.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TextIO

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from app.commands import Command

if TYPE_CHECKING:
    from app.aws import Refusal

DEFAULT_MAIL_FROM = "bounce"
SPF_VALUE = "v=spf1 include:amazonses.com ~all"
ZONE_TTL = 3600
# Per try and per question; a check asks about nine names, so a dead server fails fast.
DNS_TIMEOUT = 2.0
DNS_LIFETIME = 3.0

OK, MISSING, WRONG, INFO = "ok", "missing", "wrong", "info"


class Kind(StrEnum):
    DKIM = "dkim"
    SPF = "spf"
    DMARC = "dmarc"
    MAIL_FROM_MX = "mail-from-mx"
    MAIL_FROM_SPF = "mail-from-spf"
    LEGACY_VERIFICATION = "legacy-verification"


@dataclass(frozen=True)
class DnsRecord:
    """One record to publish. ``value`` is what a DNS provider's form wants (no quotes, no dot)."""

    label: str
    kind: Kind
    rtype: str
    name: str
    value: str
    why: str

    @property
    def zone_line(self) -> str:
        if self.rtype == "TXT":
            escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
            rdata = f'"{escaped}"'
        else:  # CNAME target or "preference exchange": make the host absolute
            rdata = self.value + "."
        return f"{self.name}. {ZONE_TTL} IN {self.rtype} {rdata}"


@dataclass(frozen=True)
class Row:
    label: str
    name: str
    rtype: str
    expected: str
    found: str
    verdict: str
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict in (MISSING, WRONG)


# --- pure: the records -------------------------------------------------------------------------


def normalise_domain(domain: str) -> str:
    return domain.strip().rstrip(".").lower()


def mail_from_domain(domain: str, sub: str | None) -> str:
    """``--mail-from bounce`` and ``--mail-from bounce.proworks.jp`` mean the same."""
    sub = normalise_domain(sub or DEFAULT_MAIL_FROM)
    return sub if sub.endswith("." + domain) else f"{sub}.{domain}"


def feedback_host(region: str) -> str:
    return f"feedback-smtp.{region}.amazonses.com"


def expected_records(
    domain: str, *, dkim_tokens: Sequence[str], mail_from: str, region: str
) -> list[DnsRecord]:
    """Every record SES needs for ``domain`` (DKIM only for the tokens given)."""
    records = [
        DnsRecord(
            f"DKIM {i}",
            Kind.DKIM,
            "CNAME",
            f"{token}._domainkey.{domain}",
            f"{token}.dkim.amazonses.com",
            f"Easy DKIM key {i} of 3: SES signs as d={domain} and verifies the domain with these",
        )
        for i, token in enumerate(dkim_tokens, start=1)
    ]
    records += [
        DnsRecord(
            "SPF",
            Kind.SPF,
            "TXT",
            domain,
            SPF_VALUE,
            "SPF for the From domain; one v=spf1 record only: merge into an existing one",
        ),
        DnsRecord(
            "DMARC",
            Kind.DMARC,
            "TXT",
            f"_dmarc.{domain}",
            f"v=DMARC1; p=none; rua=mailto:dmarc@{domain}",
            "p=none is a start (reports only); move to p=quarantine once the reports show "
            "SES mail passing",
        ),
        DnsRecord(
            "MAIL FROM MX",
            Kind.MAIL_FROM_MX,
            "MX",
            mail_from,
            f"10 {feedback_host(region)}",
            f"custom MAIL FROM: SES takes bounces here; without it SES falls back to "
            f"amazonses.com and SPF no longer aligns with {domain}",
        ),
        DnsRecord(
            "MAIL FROM SPF",
            Kind.MAIL_FROM_SPF,
            "TXT",
            mail_from,
            SPF_VALUE,
            "SPF for the MAIL FROM domain: lets SES send as it (aligned SPF for DMARC)",
        ),
    ]
    return records


def zone_snippet(domain: str, records: Sequence[DnsRecord], *, region: str) -> str:
    lines = [f"; tegami domain setup {domain} (Amazon SES, region {region})"]
    lines += [record.zone_line for record in records]
    return "\n".join(lines) + "\n"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    return "\n".join(lines) + "\n"


def records_table(records: Sequence[DnsRecord]) -> str:
    return format_table(
        ("type", "name", "value", "why"), [(r.rtype, r.name, r.value, r.why) for r in records]
    )


# --- pure: the verdicts ------------------------------------------------------------------------

# What DNS answered, by (name, type): CNAME targets and MX "preference host" lower-case without
# the final dot, TXT records with their strings joined. No entry or [] means no such record.
Observed = Mapping[tuple[str, str], Sequence[str]]


def legacy_verification_name(domain: str) -> str:
    return f"_amazonses.{domain}"


def questions(domain: str, records: Sequence[DnsRecord]) -> list[tuple[str, str]]:
    """The (name, type) pairs ``judge`` needs answered."""
    pairs = [(r.name, r.rtype) for r in records]
    pairs.append((legacy_verification_name(domain), "TXT"))
    return list(dict.fromkeys(pairs))


def _spf_records(texts: Sequence[str]) -> list[str]:
    return [t for t in texts if t.strip().lower().split(" ")[0] == "v=spf1"]


def _spf_includes_ses(spf: str) -> bool:
    terms = [term.lower().lstrip("+") for term in spf.split()[1:]]
    return "include:amazonses.com" in terms


def dmarc_tags(record: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            tags[key.strip().lower()] = value.strip()
    return tags


def _judge_spf(record: DnsRecord, texts: Sequence[str]) -> tuple[str, str, str]:
    spf = _spf_records(texts)
    if not spf:
        return MISSING, "", f"add TXT {record.name} {record.value!r}"
    if len(spf) > 1:
        return (
            WRONG,
            " | ".join(spf),
            f"{len(spf)} v=spf1 records: receivers fail SPF (permerror); merge them into one",
        )
    if not _spf_includes_ses(spf[0]):
        return WRONG, spf[0], "add include:amazonses.com to it"
    return OK, spf[0], ""


def _judge_dmarc(record: DnsRecord, texts: Sequence[str]) -> tuple[str, str, str]:
    dmarc = [t for t in texts if dmarc_tags(t).get("v", "").upper() == "DMARC1"]
    if not dmarc:
        return MISSING, "", f"add TXT {record.name} {record.value!r}"
    if len(dmarc) > 1:
        return WRONG, " | ".join(dmarc), "more than one DMARC record: receivers ignore all"
    tags = dmarc_tags(dmarc[0])
    policy = tags.get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        return WRONG, dmarc[0], "p= must be none, quarantine or reject"
    # "Aligned": DMARC passes when SPF or DKIM passes *for the From domain*. SES signs with
    # d=<domain> (Easy DKIM), so DKIM aligns even with adkim=s. SPF is checked on the MAIL FROM
    # domain, bounce.<domain>: a subdomain, which only relaxed SPF alignment (aspf=r, the
    # default) accepts; aspf=s throws SPF's half of DMARC away.
    if tags.get("aspf", "r").lower() == "s":
        return WRONG, dmarc[0], "aspf=s: MAIL FROM is a subdomain, so SPF cannot align; use aspf=r"
    if tags.get("adkim", "r").lower() not in ("r", "s"):
        return WRONG, dmarc[0], "adkim= must be r or s"
    note = "p=none only reports; move to p=quarantine once reports are clean"
    return OK, dmarc[0], note if policy == "none" else ""


def _judge_mx(record: DnsRecord, answers: Sequence[str]) -> tuple[str, str, str]:
    if not answers:
        return MISSING, "", f"add MX {record.name} {record.value}"
    wanted = record.value.split()[-1]
    hosts = {answer.split()[-1] for answer in answers}
    if hosts == {wanted}:
        return OK, " | ".join(answers), ""
    return (
        WRONG,
        " | ".join(answers),
        f"must point only at {wanted} (SES's feedback endpoint in the identity's region)",
    )


def judge(domain: str, records: Sequence[DnsRecord], observed: Observed) -> list[Row]:
    """A row per record, plus the legacy ``_amazonses`` TXT as information."""
    rows: list[Row] = []
    for record in records:
        answers = list(observed.get((record.name, record.rtype), ()))
        if record.kind is Kind.DKIM:
            if not answers:
                verdict, found, note = MISSING, "", f"add CNAME {record.name} → {record.value}"
            elif [a.lower() for a in answers] == [record.value.lower()]:
                verdict, found, note = OK, answers[0], ""
            else:
                verdict, found, note = WRONG, " | ".join(answers), f"must be {record.value}"
        elif record.kind in (Kind.SPF, Kind.MAIL_FROM_SPF):
            verdict, found, note = _judge_spf(record, answers)
        elif record.kind is Kind.DMARC:
            verdict, found, note = _judge_dmarc(record, answers)
        else:
            verdict, found, note = _judge_mx(record, answers)
        rows.append(
            Row(record.label, record.name, record.rtype, record.value, found, verdict, note)
        )
    legacy_name = legacy_verification_name(domain)
    legacy = list(observed.get((legacy_name, "TXT"), ()))
    rows.append(
        Row(
            "SES verification (legacy)",
            legacy_name,
            "TXT",
            "(optional)",
            " | ".join(legacy),
            INFO,
            "SES v1 verification token; Easy DKIM verifies the domain without it",
        )
    )
    return rows


def check_report(domain: str, rows: Sequence[Row]) -> str:
    table = format_table(
        ("record", "name", "expected", "found", "verdict"),
        [(r.label, r.name, r.expected, r.found or "—", r.verdict) for r in rows],
    )
    failed = [r for r in rows if r.failed]
    notes = [f"{r.label} {r.verdict}: {r.name} ({r.rtype}): {r.note}" for r in failed]
    notes += [f"{r.label}: {r.note}" for r in rows if not r.failed and r.note]
    summary = (
        f"{len(failed)} required record(s) missing or wrong for {domain}"
        if failed
        else f"every required record for {domain} is in place"
    )
    return table + ("\n" + "\n".join(notes) + "\n" if notes else "") + "\n" + summary + "\n"


def parse_nameserver(text: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or a bare IPv6 address."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, 53


# --- I/O: SES ----------------------------------------------------------------------------------


class DomainError(Exception):
    """Something outside tegami (SES, the nameserver) could not be asked: exit 2."""


@dataclass(frozen=True)
class SetupResult:
    created: bool
    dkim_tokens: list[str]
    dkim_status: str
    mail_from_error: str | None


def _error_text(refused: Refusal) -> str:
    """Code, HTTP status and SES's message (an endpoint without the operation answers HTML)."""
    message = refused.message.strip()
    if message.startswith("<"):
        message = "the endpoint does not implement this operation"
    return f"{refused.code}, HTTP {refused.http_status}: {message[:200]}"


async def create_identity(domain: str, *, mail_from: str, region: str) -> SetupResult:
    """Create (or find) the Easy DKIM identity and set its MAIL FROM domain. Idempotent."""
    from botocore.exceptions import BotoCoreError, ClientError

    from app import aws

    try:
        async with aws.client("sesv2", region=region) as ses:
            created = True
            try:
                # No DkimSigningAttributes: Easy DKIM, SES makes the three keys.
                identity: Mapping[str, Any] = await ses.create_email_identity(EmailIdentity=domain)
            except ClientError as exc:
                if aws.refusal(exc).code != "AlreadyExistsException":
                    raise
                created = False
                identity = await ses.get_email_identity(EmailIdentity=domain)
            mail_from_error = None
            try:
                await ses.put_email_identity_mail_from_attributes(
                    EmailIdentity=domain,
                    MailFromDomain=mail_from,
                    BehaviorOnMxFailure="USE_DEFAULT_VALUE",
                )
            except ClientError as exc:
                mail_from_error = _error_text(aws.refusal(exc))
    except ClientError as exc:
        raise DomainError(f"SES refused ({aws.refusal(exc).code}): {exc}") from exc
    except BotoCoreError as exc:
        raise DomainError(f"could not reach SES in {region}: {exc}") from exc
    dkim = identity.get("DkimAttributes", {})
    return SetupResult(
        created=created,
        dkim_tokens=list(dkim.get("Tokens", [])),
        dkim_status=str(dkim.get("Status", "unknown")),
        mail_from_error=mail_from_error,
    )


async def identity_dkim_tokens(domain: str, *, region: str) -> list[str]:
    from botocore.exceptions import BotoCoreError, ClientError

    from app import aws

    try:
        async with aws.client("sesv2", region=region) as ses:
            identity = await ses.get_email_identity(EmailIdentity=domain)
    except ClientError as exc:
        code = aws.refusal(exc).code
        if code == "NotFoundException":
            raise DomainError(
                f"SES ({region}) has no identity {domain}: run `tegami domain setup {domain}`, "
                "or pass --dkim-token three times"
            ) from exc
        raise DomainError(f"SES refused ({code}): {exc}") from exc
    except BotoCoreError as exc:
        raise DomainError(
            f"could not reach SES in {region} ({exc}); pass --dkim-token three times to check "
            "without SES"
        ) from exc
    return list(identity.get("DkimAttributes", {}).get("Tokens", []))


# --- I/O: DNS ----------------------------------------------------------------------------------


async def make_resolver(nameserver: str | None) -> dns.asyncresolver.Resolver:
    if nameserver is None:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration as exc:
            raise DomainError("no system resolver configured: pass --nameserver") from exc
    else:
        host, port = parse_nameserver(nameserver)
        try:
            address = str(ipaddress.ip_address(host))
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port)
            except OSError as exc:
                raise DomainError(f"cannot resolve nameserver {host}: {exc}") from exc
            address = str(infos[0][4][0])
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [address]
        resolver.port = port
    resolver.timeout = DNS_TIMEOUT
    resolver.lifetime = DNS_LIFETIME
    resolver.cache = None
    return resolver


def _plain(rdata: Any) -> str:
    if rdata.rdtype == dns.rdatatype.TXT:
        return b"".join(rdata.strings).decode("utf-8", "replace")
    if rdata.rdtype == dns.rdatatype.MX:
        return f"{rdata.preference} {rdata.exchange.to_text(omit_final_dot=True).lower()}"
    if rdata.rdtype == dns.rdatatype.CNAME:
        return str(rdata.target.to_text(omit_final_dot=True).lower())
    return str(rdata.to_text())


async def lookup(resolver: dns.asyncresolver.Resolver, name: str, rtype: str) -> list[str]:
    where = ", ".join(f"{ns}:{resolver.port}" for ns in resolver.nameservers)
    try:
        answer = await resolver.resolve(dns.name.from_text(name), rtype, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return []
    except dns.resolver.NoNameservers as exc:
        raise DomainError(f"nameserver {where} gave no usable answer for {name}: {exc}") from exc
    except dns.exception.Timeout as exc:
        raise DomainError(f"nameserver {where} cannot be reached (no answer in time)") from exc
    if answer.rrset is None:
        return []
    return [_plain(rdata) for rdata in answer.rrset]


async def observe(
    resolver: dns.asyncresolver.Resolver, pairs: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], list[str]]:
    answers = await asyncio.gather(
        *(lookup(resolver, name, rtype) for name, rtype in pairs), return_exceptions=True
    )
    observed: dict[tuple[str, str], list[str]] = {}
    for pair, answer in zip(pairs, answers, strict=True):
        if isinstance(answer, BaseException):
            raise answer
        observed[pair] = answer
    return observed


# --- commands ----------------------------------------------------------------------------------


def domain_arguments(domain: argparse.ArgumentParser) -> None:
    commands = domain.add_subparsers(dest="domain_command", required=True)
    for name, text in (
        ("setup", "create the SES identity (Easy DKIM, MAIL FROM) and print the DNS records"),
        ("check", "look the DNS records up and say what is missing or wrong (exit 1)"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("domain", help="the sending domain, e.g. proworks.jp")
        command.add_argument(
            "--mail-from",
            default=DEFAULT_MAIL_FROM,
            metavar="SUB",
            help="MAIL FROM subdomain (default: bounce, i.e. bounce.DOMAIN)",
        )
        command.add_argument(
            "--region", help="SES region (default: AWS_REGION, AWS_DEFAULT_REGION, ap-northeast-1)"
        )
    check = commands.choices["check"]
    check.add_argument(
        "--nameserver",
        metavar="HOST[:PORT]",
        help="ask this server (e.g. the domain's authoritative one) instead of the system resolver",
    )
    check.add_argument(
        "--dkim-token",
        action="append",
        metavar="TOKEN",
        help="a DKIM token, given three times; otherwise the tokens come from SES",
    )


def _setup(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from app.aws import region_from_environment

    domain = normalise_domain(args.domain)
    region = args.region or region_from_environment()
    mail_from = mail_from_domain(domain, args.mail_from)
    result = asyncio.run(create_identity(domain, mail_from=mail_from, region=region))
    records = expected_records(
        domain, dkim_tokens=result.dkim_tokens, mail_from=mail_from, region=region
    )
    state = "created" if result.created else "already existed"
    print(
        f"SES identity {domain} ({region}): {state}; Easy DKIM status {result.dkim_status}\n"
        f"MAIL FROM: {mail_from} "
        + ("(set)" if result.mail_from_error is None else "(NOT set, see below)")
        + "\n\nAdd these DNS records:\n\n"
        + records_table(records)
        + "\nAs a zone-file snippet:\n\n"
        + zone_snippet(domain, records, region=region)
        + f"\nThen run `tegami domain check {domain}` until every row says ok.",
        file=out,
    )
    problems = []
    if len(result.dkim_tokens) != 3:
        problems.append(
            f"SES returned {len(result.dkim_tokens)} DKIM tokens instead of 3, so the DKIM "
            "records are not listed; see the identity in the SES console and run setup again"
        )
    if result.mail_from_error is not None:
        problems.append(
            f"SES did not set the MAIL FROM domain {mail_from} ({result.mail_from_error}); "
            "the records above are still right: set MAIL FROM in the SES console or run again"
        )
    for problem in problems:
        print(f"tegami: {problem}", file=err)
    return 1 if problems else 0


def _check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from app.aws import region_from_environment

    domain = normalise_domain(args.domain)
    region = args.region or region_from_environment()
    mail_from = mail_from_domain(domain, args.mail_from)
    tokens = [normalise_domain(t) for t in args.dkim_token or []]
    if tokens and len(tokens) != 3:
        print(f"tegami: give --dkim-token three times (got {len(tokens)})", file=err)
        return 2

    async def run() -> list[Row]:
        found = tokens or await identity_dkim_tokens(domain, region=region)
        if len(found) != 3:
            raise DomainError(
                f"SES returned {len(found)} DKIM tokens for {domain} instead of 3; "
                "pass --dkim-token three times"
            )
        records = expected_records(domain, dkim_tokens=found, mail_from=mail_from, region=region)
        resolver = await make_resolver(args.nameserver)
        return judge(domain, records, await observe(resolver, questions(domain, records)))

    rows = asyncio.run(run())
    print(check_report(domain, rows), end="", file=out)
    return 1 if any(row.failed for row in rows) else 0


def run_domain_command(
    args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run ``tegami domain setup|check``; returns the exit code (2: SES or DNS unreachable)."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        if args.domain_command == "setup":
            return _setup(args, out, err)
        return _check(args, out, err)
    except DomainError as exc:
        print(f"tegami: {exc}", file=err)
        return 2


DOMAIN = Command(
    "domain", "set up and check the sending domain in SES/DNS", run_domain_command, domain_arguments
)
