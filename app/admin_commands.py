"""`tegami api-key`, `suppressions import-from-ses` and `doctor`: an operator's commands on the
keys, the suppressions and the deployment."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TextIO

from app.commands import Command, command_engine, command_session, first_line
from app.config import DatabaseSettings, Settings, SettingsError
from app.serve import settings_or_exit

if TYPE_CHECKING:
    import httpx

    from app.setup.doctor import Check

# How long a rotated key's predecessor is still accepted unless `--grace` says otherwise:
# time for the app to be redeployed with the new key, short enough that a replaced key
# does not linger.
DEFAULT_ROTATION_GRACE = timedelta(hours=24)


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `24h`, `7d`, `1h30m`, or `0` (no grace)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    if text == "0":
        return timedelta(0)
    parts = re.findall(r"(\d+)([smhd])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m, 24h or 7d")
    return timedelta(seconds=sum(int(n) * units[u] for n, u in parts))


def _format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _api_key_arguments(parser: argparse.ArgumentParser) -> None:
    from app.models import ApiKeyScope

    api_key_commands = parser.add_subparsers(dest="api_key_command", required=True)
    create = api_key_commands.add_parser("create", help="create a key and print it, alone")
    create.add_argument("name", help="a name of your choice; the audit trail records it")
    create.add_argument(
        "--scope",
        choices=[scope.value for scope in ApiKeyScope],
        default=ApiKeyScope.APP.value,
        help="app (default): send, read its own mails, read recipients, opt-outs, erase; "
        "admin: everything (suppressions, /status, webhooks); support: read every mail and "
        "recipient and /status, change nothing; test: send (never to SES) and read the mails "
        "it sent, nothing else",
    )
    api_key_commands.add_parser(
        "list", help="every key: name, scope, created, last used (to the minute), revoked"
    )
    revoke = api_key_commands.add_parser(
        "revoke", help="refuse the key from now on (within 5 s in every running process)"
    )
    revoke.add_argument("name", help="the key's name, as `tegami api-key list` shows it")
    rotate = api_key_commands.add_parser(
        "rotate", help="print a new key for NAME; the old one keeps working for --grace"
    )
    rotate.add_argument("name", help="the key's name, as `tegami api-key list` shows it")
    rotate.add_argument(
        "--grace",
        type=parse_duration,
        default=DEFAULT_ROTATION_GRACE,
        metavar="DURATION",
        help="how long the old key is still accepted: 90s, 30m, 24h, 7d, or 0 for not at all "
        f"(default: {DEFAULT_ROTATION_GRACE.total_seconds() / 3600:g}h)",
    )


async def _api_key_command(settings: DatabaseSettings, args: argparse.Namespace) -> str:
    """Run one `tegami api-key` command; returns what to print."""
    from app import api_keys
    from app.models import ApiKeyScope

    async with command_session(settings) as session:
        if args.api_key_command == "create":
            return await api_keys.create_key(session, name=args.name, scope=ApiKeyScope(args.scope))
        if args.api_key_command == "rotate":
            return await api_keys.rotate_key(session, name=args.name, grace=args.grace)
        if args.api_key_command == "revoke":
            revoked_at = await api_keys.revoke_key(session, name=args.name)
            return (
                f"revoked {args.name} at {_when(revoked_at)} (refused everywhere within "
                f"{api_keys.KEY_CACHE_SECONDS:g} s)"
            )
        now = datetime.now(UTC)
        rows = [("NAME", "SCOPE", "CREATED", "LAST USED", "REVOKED", "OLD KEY UNTIL")]
        for key in await api_keys.list_keys(session):
            grace = key.previous_key_expires_at
            rows.append(
                (
                    key.name,
                    key.scope.value,
                    _when(key.created_at),
                    _when(key.last_used_at),
                    _when(key.revoked_at),
                    _when(grace if grace and grace > now and not key.revoked_at else None),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows
        )


def _api_key(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import DBAPIError

    from app.api_keys import ApiKeyError
    from app.config import load_database_settings

    try:
        settings = load_database_settings()
    except SettingsError as exc:
        print(f"tegami: {exc}", file=sys.stderr)
        return 2
    try:
        print(asyncio.run(_api_key_command(settings, args)))
    except ApiKeyError as exc:
        print(f"tegami: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a URL that is not postgresql://
        print(f"tegami: {exc}", file=sys.stderr)
        return 2
    except (DBAPIError, OSError) as exc:
        # One line, never the statement (it may hold a key's hash) nor a traceback.
        print(
            f"tegami: the database at TEGAMI_DATABASE_URL failed: {first_line(exc)}",
            file=sys.stderr,
        )
        return 1
    if args.api_key_command == "rotate":
        print(
            f"tegami: the old key of {args.name} is accepted until "
            f"{_when(datetime.now(UTC) + args.grace)} ({_format_duration(args.grace)})",
            file=sys.stderr,
        )
    return 0


async def _import_from_ses(settings: Settings) -> tuple[int, int]:
    from app import aws
    from app.recipients.ses_list import SesSuppressionList, import_from_ses

    async with (
        aws.client("sesv2") as client,
        command_session(settings) as session,
    ):
        result = await import_from_ses(
            session,
            SesSuppressionList(client),
            secret=settings.address_hash_secret.get_secret_value(),
        )
        return result.imported, result.known


def run_import_from_ses(settings: Settings, *, out: TextIO | None = None) -> int:
    """`tegami suppressions import-from-ses`: SES's account suppression list into tegami."""
    from app.config import MailBackend
    from app.recipients.ses_list import SesUnavailable

    if settings.mail_backend == MailBackend.MAILBOX:
        print("tegami: the mailbox backend has no SES suppression list", file=sys.stderr)
        return 2
    try:
        imported, known = asyncio.run(_import_from_ses(settings))
    except SesUnavailable as exc:
        print(f"tegami: {exc.message}; nothing imported", file=sys.stderr)
        return 1
    print(
        f"imported {imported} suppression(s) from SES's list; {known} already known",
        file=out or sys.stdout,
    )
    return 0


def _suppressions_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="suppressions_command", required=True)
    actions.add_parser(
        "import-from-ses",
        help="suppress in tegami every address on SES's account suppression list (idempotent)",
    )


async def _doctor_checks(
    settings: Settings, *, nameserver: str | None, http: httpx.AsyncClient | None
) -> list[Check]:
    import httpx

    from app.setup.doctor import run_checks

    async with command_engine(settings) as engine, contextlib.AsyncExitStack() as stack:
        if http is None:
            http = await stack.enter_async_context(httpx.AsyncClient())
        return await run_checks(settings, engine=engine, http=http, nameserver=nameserver)


def run_doctor(
    settings: Settings,
    *,
    nameserver: str | None = None,
    out: TextIO | None = None,
    http: httpx.AsyncClient | None = None,
) -> int:
    """`tegami doctor`: one line per check; exit 1 when any failed."""
    from app.setup.doctor import ready, report

    checks = asyncio.run(
        _doctor_checks(settings, nameserver=nameserver or settings.dns_nameserver, http=http)
    )
    print(report(checks), end="", file=out or sys.stdout)
    return 0 if ready(checks) else 1


def _doctor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nameserver",
        metavar="HOST[:PORT]",
        help="ask this DNS server for the domain's records (default: TEGAMI_DNS_NAMESERVER, "
        "else the system resolver)",
    )


API_KEY = Command(
    "api-key",
    "manage API keys (needs only TEGAMI_DATABASE_URL)",
    _api_key,
    _api_key_arguments,
)
SUPPRESSIONS = Command(
    "suppressions",
    "tegami's and SES's suppressions",
    lambda args: run_import_from_ses(settings_or_exit()),
    _suppressions_arguments,
)
DOCTOR = Command(
    "doctor",
    "check SES, SNS, DNS, the database and the public URL: ready to send?",
    lambda args: run_doctor(settings_or_exit(), nameserver=args.nameserver),
    _doctor_arguments,
)
