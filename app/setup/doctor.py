"""`tegami doctor` and GET /status/setup: is this deployment ready to send, and if not, why.

Each check is a small async function that returns :class:`Check` values (never raises for
what it checks: an AWS or DNS error becomes a failed check that says so). ``run_checks`` runs
them in order; `tegami doctor` prints them (app/admin_commands.py), GET /status/setup as JSON.
SES and SNS are asked through their own APIs with the app's clients (app.aws, which honours
``AWS_ENDPOINT_URL`` and its per-service forms); DNS through ``app.setup.domain``'s own check.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from email.utils import parseaddr
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import httpx
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import column, select, table
from sqlalchemy.ext.asyncio import AsyncEngine

from app import aws
from app.config import MailBackend, Settings
from app.setup import domain

if TYPE_CHECKING:
    from types_aiobotocore_sesv2 import SESV2Client
    from types_aiobotocore_sns import SNSClient

SNS_PATH = "/sns/ses-events"
# Without these, tegami cannot keep its promise: bounces and complaints suppress, deliveries
# reset the soft-bounce count.
REQUIRED_EVENTS = ("BOUNCE", "COMPLAINT", "DELIVERY")
# Without these, mail still goes out, but a rejected or unrenderable mail stays `sent` and the
# history shows neither SES's acceptance nor delays.
RECOMMENDED_EVENTS = ("SEND", "REJECT", "DELIVERY_DELAY", "RENDERING_FAILURE")
PUBLIC_URL_TIMEOUT = 5.0
# Alembic's own table: the schema revision the database is at.
_ALEMBIC_VERSION = table("alembic_version", column("version_num"))


class Status(StrEnum):
    OK = "ok"
    FAIL = "fail"
    WARN = "warn"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    summary: str
    fix: str | None = None


def ok(name: str, summary: str) -> Check:
    return Check(name, Status.OK, summary)


def fail(name: str, summary: str, fix: str) -> Check:
    return Check(name, Status.FAIL, summary, fix)


def warn(name: str, summary: str, fix: str) -> Check:
    return Check(name, Status.WARN, summary, fix)


def ready(checks: Sequence[Check]) -> bool:
    return not any(check.status is Status.FAIL for check in checks)


def sending_domain(settings: Settings) -> str:
    address = parseaddr(settings.from_address)[1]
    return domain.normalise_domain(address.rpartition("@")[2])


def _aws_error(what: str, exc: Exception) -> str:
    if (refused := aws.refusal(exc)) is not None:
        return f"{what} refused: {refused.code}: {refused.message}".strip()
    return f"could not reach {what}: {exc}"


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, int | float) else "?"


# --- SES -----------------------------------------------------------------------------------


async def check_account(ses: SESV2Client) -> Check:
    name = "account"
    try:
        account = await ses.get_account()
    except (ClientError, BotoCoreError, OSError) as exc:
        return fail(name, _aws_error("SES GetAccount", exc), "check AWS credentials and region")
    quota = account.get("SendQuota", {})
    enforcement = str(account.get("EnforcementStatus", "unknown"))
    production = bool(account.get("ProductionAccessEnabled"))
    summary = (
        f"{'production' if production else 'sandbox'}, {enforcement}, sending "
        f"{'enabled' if account.get('SendingEnabled') else 'DISABLED'}, "
        f"{_number(quota.get('MaxSendRate'))}/s, {_number(quota.get('SentLast24Hours'))} of "
        f"{_number(quota.get('Max24HourSend'))} sent in 24 h"
    )
    if not account.get("SendingEnabled"):
        return fail(name, summary, "SES paused sending for the account: see the SES console")
    if enforcement.upper() == "SHUTDOWN":
        return fail(name, summary, "SES shut the account down: open a case with AWS Support")
    if enforcement.upper() == "PROBATION":
        return warn(
            name,
            summary,
            "SES put the account on probation: fix the bounce or "
            "complaint rate before the review ends (GET /status/reputation)",
        )
    if not production:
        return warn(
            name,
            summary,
            "sandbox: mail reaches verified addresses only; request "
            "production access in the SES console",
        )
    return ok(name, summary)


@dataclass(frozen=True)
class Identity:
    checks: list[Check]
    dkim_tokens: list[str] = field(default_factory=list)
    mail_from: str | None = None


async def check_identity(ses: SESV2Client, *, name: str) -> Identity:
    """Verified for sending, Easy DKIM and custom MAIL FROM: three checks from one call."""
    try:
        identity = await ses.get_email_identity(EmailIdentity=name)
    except (ClientError, BotoCoreError, OSError) as exc:
        if (refused := aws.refusal(exc)) is not None and refused.code == "NotFoundException":
            return Identity(
                [
                    fail(
                        "identity",
                        f"SES has no identity {name}",
                        f"run `tegami domain setup {name}`",
                    )
                ]
            )
        return Identity(
            [
                fail(
                    "identity",
                    _aws_error("SES GetEmailIdentity", exc),
                    "check AWS credentials and region",
                )
            ]
        )
    checks = []
    if identity.get("VerifiedForSendingStatus"):
        checks.append(ok("identity", f"{name} verified for sending"))
    else:
        checks.append(
            fail(
                "identity",
                f"{name} not verified for sending "
                f"({identity.get('VerificationStatus', 'unknown')})",
                f"publish the DKIM records (`tegami domain setup {name}`); SES "
                "verifies the domain once it sees them",
            )
        )
    dkim = identity.get("DkimAttributes", {})
    status = str(dkim.get("Status", "NOT_STARTED"))
    if status == "SUCCESS" and dkim.get("SigningEnabled", True):
        checks.append(ok("dkim", "Easy DKIM SUCCESS, signing enabled"))
    else:
        checks.append(
            fail(
                "dkim",
                f"Easy DKIM {status}"
                + ("" if dkim.get("SigningEnabled", True) else ", signing disabled"),
                f"publish the three DKIM CNAMEs (`tegami domain check {name}`); "
                "SES looks for them for up to 72 hours",
            )
        )
    attributes = identity.get("MailFromAttributes", {})
    mail_from = attributes.get("MailFromDomain")
    mail_status = str(attributes.get("MailFromDomainStatus", ""))
    if not mail_from:
        checks.append(
            fail(
                "mail_from",
                "no custom MAIL FROM domain",
                f"run `tegami domain setup {name}` (sets bounce.{name})",
            )
        )
    elif mail_status == "SUCCESS":
        checks.append(ok("mail_from", f"{mail_from} SUCCESS"))
    else:
        checks.append(
            fail(
                "mail_from",
                f"{mail_from} {mail_status}",
                f"publish the MAIL FROM MX and SPF records for {mail_from}",
            )
        )
    return Identity(checks, [str(t) for t in dkim.get("Tokens", [])], mail_from)


async def check_configuration_set(
    ses: SESV2Client, *, name: str | None, topics: Sequence[str]
) -> tuple[Check, list[str]]:
    """The configuration set publishes the events tegami needs to an allowed topic.

    Returns the check and the allowed topics the set publishes to (for the subscription check).
    """
    check = "configuration_set"
    if not name:
        return fail(
            check,
            "TEGAMI_SES_CONFIGURATION_SET is not set",
            "set it to the configuration set whose event destination publishes to SNS",
        ), []
    try:
        answer = await ses.get_configuration_set_event_destinations(ConfigurationSetName=name)
    except (ClientError, BotoCoreError, OSError) as exc:
        if (refused := aws.refusal(exc)) is not None and refused.code == "NotFoundException":
            return fail(
                check,
                f"SES has no configuration set {name}",
                "create it with an SNS event destination, or fix TEGAMI_SES_CONFIGURATION_SET",
            ), []
        return fail(
            check,
            _aws_error("SES GetConfigurationSetEventDestinations", exc),
            "check AWS credentials and region",
        ), []
    published: set[str] = set()
    destinations: list[str] = []
    for destination in answer.get("EventDestinations", []):
        topic = destination.get("SnsDestination", {}).get("TopicArn")
        if destination.get("Enabled") and topic is not None and topic in topics:
            published.update(destination.get("MatchingEventTypes", []))
            destinations.append(topic)
    if not destinations:
        return fail(
            check,
            f"{name} has no enabled event destination to a topic in TEGAMI_SNS_TOPIC_ARNS",
            "add an SNS event destination to the topic, and "
            "the topic's ARN to TEGAMI_SNS_TOPIC_ARNS",
        ), []
    missing = [event for event in REQUIRED_EVENTS if event not in published]
    optional = [event for event in RECOMMENDED_EVENTS if event not in published]
    if missing:
        return fail(
            check,
            f"{name} does not publish {', '.join(missing)} (required)",
            f"add {', '.join(missing + optional)} to the event destination's event types",
        ), destinations
    if optional:
        return warn(
            check,
            f"{name} does not publish {', '.join(optional)}",
            f"add {', '.join(optional)} to the event destination's event types, or "
            "rejected and unrenderable mail stays `sent`",
        ), destinations
    return ok(check, f"{name} publishes every event type to {', '.join(destinations)}"), (
        destinations
    )


# --- SNS -----------------------------------------------------------------------------------


def topic_region(arn: str) -> str | None:
    parts = arn.split(":")
    return parts[3] if len(parts) >= 6 and parts[2] == "sns" and parts[3] else None


async def _subscriptions(sns: SNSClient, topic: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = await (
            sns.list_subscriptions_by_topic(TopicArn=topic, NextToken=token)
            if token
            else sns.list_subscriptions_by_topic(TopicArn=topic)
        )
        found += [dict(s) for s in page.get("Subscriptions", [])]
        token = page.get("NextToken")
        if not token:
            return found


async def _raw_delivery(sns: SNSClient, arn: str) -> bool | None:
    """Whether SNS posts the bare message to this subscription (None: it would not say)."""
    try:
        answer = await sns.get_subscription_attributes(SubscriptionArn=arn)
    except (ClientError, BotoCoreError, OSError):
        return None
    return str(answer.get("Attributes", {}).get("RawMessageDelivery", "false")).lower() == "true"


async def check_subscription(open_sns: Any, *, topics: Sequence[str], endpoint: str) -> Check:
    """A confirmed https subscription of ``endpoint`` to one of ``topics``, delivering SNS's
    signed envelope (not the raw message, which tegami cannot verify and refuses)."""
    name = "subscription"
    if not topics:
        return fail(
            name,
            "TEGAMI_SNS_TOPIC_ARNS is empty",
            "set it to the ARN of the topic the configuration set publishes to",
        )
    pending = []
    confirmed: list[str] = []
    raw: list[str] = []
    unread: list[str] = []
    for topic in topics:
        try:
            async with open_sns(topic_region(topic)) as sns:
                for subscription in await _subscriptions(sns, topic):
                    if (
                        subscription.get("Protocol") != "https"
                        or subscription.get("Endpoint") != endpoint
                    ):
                        continue
                    arn = str(subscription.get("SubscriptionArn"))
                    if arn == "PendingConfirmation":
                        pending.append(topic)
                        continue
                    confirmed.append(topic)
                    found = await _raw_delivery(sns, arn)
                    if found is None:
                        unread.append(arn)
                    elif found:
                        raw.append(arn)
        except (ClientError, BotoCoreError, OSError) as exc:
            return fail(
                name,
                _aws_error(f"SNS ListSubscriptionsByTopic ({topic})", exc),
                "check the topic ARN and the credentials' sns:ListSubscriptionsByTopic",
            )
    if raw:
        # SNS then posts the bare SES event: no signature, so tegami answers 400, and SNS
        # does not retry a 4xx: every bounce and complaint is lost.
        return fail(
            name,
            f"raw message delivery is on for {', '.join(raw)}: SNS posts unsigned bare JSON, "
            "tegami refuses it (400) and SNS drops every bounce and complaint",
            "turn it off: aws sns set-subscription-attributes --subscription-arn "
            f"{raw[0]} --attribute-name RawMessageDelivery --attribute-value false",
        )
    if confirmed and unread:
        return warn(
            name,
            f"{endpoint} confirmed on {', '.join(confirmed)}, but SNS would not say whether "
            "raw message delivery is on",
            "grant sns:GetSubscriptionAttributes so it can be checked; raw message delivery "
            "must be off",
        )
    if confirmed:
        return ok(name, f"{endpoint} confirmed on {', '.join(confirmed)}")
    if pending:
        return fail(
            name,
            f"{endpoint} is PendingConfirmation on {', '.join(pending)}",
            "tegami confirms when SNS reaches it: make sure the URL is reachable and "
            "the topic is in TEGAMI_SNS_TOPIC_ARNS, then request confirmation again "
            "(SNS console, or unsubscribe and subscribe again)",
        )
    return fail(
        name,
        f"no https subscription of {endpoint} to {', '.join(topics)}",
        f"subscribe {endpoint} (protocol https) to the topic; tegami confirms it",
    )


# --- DNS, database, public URL ---------------------------------------------------------------


async def check_dns(
    name: str,
    *,
    tokens: Sequence[str],
    mail_from: str | None,
    region: str,
    nameserver: str | None,
) -> Check:
    check = "dns"
    if len(tokens) != 3:
        return fail(
            check,
            f"SES gave {len(tokens)} DKIM tokens for {name}, so the records cannot be checked",
            f"run `tegami domain setup {name}`",
        )
    records = domain.expected_records(
        name,
        dkim_tokens=tokens,
        mail_from=mail_from or domain.mail_from_domain(name, None),
        region=region,
    )
    try:
        resolver = await domain.make_resolver(nameserver)
        observed = await domain.observe(resolver, domain.questions(name, records))
    except domain.DomainError as exc:
        return fail(check, f"could not ask DNS: {exc}", "check the resolver (--nameserver)")
    rows = [row for row in domain.judge(name, records, observed) if row.failed]
    if not rows:
        return ok(check, f"every required record for {name} is in place")
    return fail(
        check,
        "; ".join(f"{r.label} {r.verdict}: {r.name} {r.rtype}" for r in rows),
        "; ".join(r.note for r in rows) + f" (details: `tegami domain check {name}`)",
    )


def alembic_heads() -> set[str]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from app.db import alembic_ini

    return set(ScriptDirectory.from_config(Config(str(alembic_ini()))).get_heads())


async def check_database(engine: AsyncEngine) -> Check:
    name = "database"
    heads = alembic_heads()
    try:
        async with engine.connect() as conn:
            current = set((await conn.execute(select(_ALEMBIC_VERSION.c.version_num))).scalars())
    except Exception as exc:  # unreachable, or never migrated: both are the operator's to fix
        return fail(
            name,
            f"cannot read the schema version: {type(exc).__name__}",
            "check TEGAMI_DATABASE_URL, then run `tegami migrate`",
        )
    if current == heads:
        return ok(name, f"schema at {', '.join(sorted(heads))} (current)")
    return fail(
        name,
        f"schema at {', '.join(sorted(current)) or 'nothing'}, this release "
        f"needs {', '.join(sorted(heads))}",
        "run `tegami migrate`",
    )


async def check_public_url(base_url: str, *, http: httpx.AsyncClient) -> Check:
    name = "public_url"
    if not base_url.startswith("https://"):
        return fail(
            name,
            f"{base_url} is not https",
            "set TEGAMI_PUBLIC_BASE_URL to the "
            "service's https URL: SNS delivers to https only, unsubscribe links need it",
        )
    url = f"{base_url}/healthz"
    try:
        answer = await http.get(url, timeout=PUBLIC_URL_TIMEOUT, follow_redirects=False)
    except httpx.HTTPError as exc:
        return fail(
            name,
            f"{url} unreachable: {type(exc).__name__}: {exc}",
            "check TEGAMI_PUBLIC_BASE_URL, DNS and the load balancer",
        )
    if answer.status_code != 200:
        return fail(
            name,
            f"{url} answered {answer.status_code}",
            "TEGAMI_PUBLIC_BASE_URL must lead to this service",
        )
    return ok(name, f"{url} answered 200")


# --- running them ---------------------------------------------------------------------------


async def run_checks(
    settings: Settings,
    *,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    nameserver: str | None = None,
) -> list[Check]:
    region = aws.region_from_environment()
    name = sending_domain(settings)
    checks: list[Check] = []
    if settings.mail_backend is MailBackend.MAILBOX:
        checks.append(
            warn(
                "ses",
                "mailbox backend: SES, SNS and DNS are not checked",
                "set TEGAMI_MAIL_BACKEND=ses in production",
            )
        )
    else:
        async with aws.client("sesv2", region=region) as ses:
            checks.append(await check_account(ses))
            identity = await check_identity(ses, name=name)
            checks += identity.checks
            configuration, topics = await check_configuration_set(
                ses, name=settings.ses_configuration_set, topics=settings.sns_topic_arns
            )
            checks.append(configuration)

        @contextlib.asynccontextmanager
        async def open_sns(topic_region: str | None) -> AsyncIterator[SNSClient]:
            async with aws.client("sns", region=topic_region or region) as sns:
                yield sns

        checks.append(
            await check_subscription(
                open_sns,
                topics=topics or settings.sns_topic_arns,
                endpoint=settings.public_base_url + SNS_PATH,
            )
        )
        checks.append(
            await check_dns(
                name,
                tokens=identity.dkim_tokens,
                mail_from=identity.mail_from,
                region=region,
                nameserver=nameserver,
            )
        )
    checks.append(await check_database(engine))
    checks.append(await check_public_url(settings.public_base_url, http=http))
    return checks


def report(checks: Sequence[Check]) -> str:
    """One line per check, and what to do under each one that is not ok."""
    width = max(len(check.name) for check in checks)
    lines = []
    for check in checks:
        label = {Status.OK: "ok  ", Status.FAIL: "FAIL", Status.WARN: "warn"}[check.status]
        lines.append(f"{label}  {check.name.ljust(width)}  {check.summary}")
        if check.fix and check.status is not Status.OK:
            lines.append(f"      {' ' * width}  → {check.fix}")
    failed = sum(check.status is Status.FAIL for check in checks)
    lines.append("")
    lines.append(f"{failed} check(s) failed: not ready to send" if failed else "ready to send")
    return "\n".join(lines) + "\n"
