"""The `tegami` command: serve, worker, migrate, dev, api-key, simulate, domain, openapi."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from app.config import DatabaseSettings, Settings, SettingsError, load_settings
from app.emails.held import add_held_commands
from app.setup.domain import add_domain_commands, run_domain_command
from app.support.commands import add_support_commands, run_support_command
from app.webhooks.commands import add_webhook_commands, run_webhook_command

if TYPE_CHECKING:
    import httpx

    from app.setup.doctor import Check

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# How long a rotated key's predecessor is still accepted unless `--grace` says otherwise:
# time for the app to be redeployed with the new key, short enough that a replaced key
# does not linger.
DEFAULT_ROTATION_GRACE = timedelta(hours=24)


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"tegami: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def serve(settings: Settings, *, host: str, port: int) -> None:
    import uvicorn

    from app.main import create_app
    from app.ops.logging import configure_logging

    configure_logging()
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=30,
    )


async def _run_worker(settings: Settings) -> None:
    from app.main import create_app

    app = create_app(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The lifespan starts the worker; leaving it finishes the sends in flight.
    async with app.router.lifespan_context(app):
        await stop.wait()


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


async def _api_key_command(settings: DatabaseSettings, args: argparse.Namespace) -> str:
    """Run one `tegami api-key` command; returns what to print."""
    from app import api_keys
    from app.db import create_engine, create_sessionmaker
    from app.models import ApiKeyScope

    engine = create_engine(settings.sqlalchemy_url, pool_size=1, max_overflow=0)
    try:
        async with create_sessionmaker(engine)() as session:
            if args.api_key_command == "create":
                out = await api_keys.create_key(
                    session, name=args.name, scope=ApiKeyScope(args.scope)
                )
            elif args.api_key_command == "rotate":
                out = await api_keys.rotate_key(session, name=args.name, grace=args.grace)
            elif args.api_key_command == "revoke":
                revoked_at = await api_keys.revoke_key(session, name=args.name)
                out = (
                    f"revoked {args.name} at {_when(revoked_at)} (refused everywhere within "
                    f"{api_keys.KEY_CACHE_SECONDS:g} s)"
                )
            else:
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
                out = "\n".join(
                    "  ".join(
                        cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                    ).rstrip()
                    for row in rows
                )
            await session.commit()
            return out
    finally:
        await engine.dispose()


def api_key(args: argparse.Namespace) -> None:
    from sqlalchemy.exc import DBAPIError

    from app.api_keys import ApiKeyError
    from app.config import load_database_settings

    try:
        settings = load_database_settings()
    except SettingsError as exc:
        print(f"tegami: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        print(asyncio.run(_api_key_command(settings, args)))
    except ApiKeyError as exc:
        print(f"tegami: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except ValueError as exc:  # a URL that is not postgresql://
        print(f"tegami: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (DBAPIError, OSError) as exc:
        # One line, never the statement (it may hold a key's hash) nor a traceback.
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        print(f"tegami: the database at TEGAMI_DATABASE_URL failed: {reason}", file=sys.stderr)
        raise SystemExit(1) from None
    if args.api_key_command == "rotate":
        print(
            f"tegami: the old key of {args.name} is accepted until "
            f"{_when(datetime.now(UTC) + args.grace)} ({_format_duration(args.grace)})",
            file=sys.stderr,
        )


DEV_KEY_NAME = "dev"


async def _ensure_dev_key(settings: Settings, stored: str | None) -> str:
    from app import api_keys
    from app.db import create_engine, create_sessionmaker
    from app.models import ApiKeyScope

    engine = create_engine(settings.sqlalchemy_url, pool_size=1, max_overflow=0)
    try:
        async with create_sessionmaker(engine)() as session:
            if stored and await api_keys.key_is_valid(session, key=stored):
                return stored
            try:
                key = await api_keys.create_key(session, name=DEV_KEY_NAME, scope=ApiKeyScope.ADMIN)
            except api_keys.ApiKeyError:  # the file was lost: a new key for the same name
                try:
                    key = await api_keys.rotate_key(session, name=DEV_KEY_NAME, grace=timedelta(0))
                except api_keys.ApiKeyError:  # someone revoked it: respect that
                    key = await api_keys.create_key(
                        session, name=f"dev-{secrets.token_hex(3)}", scope=ApiKeyScope.ADMIN
                    )
            await session.commit()
            return key
    finally:
        await engine.dispose()


def dev_api_key(settings: Settings, key_file: Path) -> str:
    """The dev key kept in `.tegami/` (0600), made (or remade) only when it no longer works."""
    stored = key_file.read_text().strip() if key_file.exists() else None
    key = asyncio.run(_ensure_dev_key(settings, stored))
    if key != stored:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key + "\n")
    key_file.chmod(0o600)
    return key


async def _doctor_checks(
    settings: Settings, *, nameserver: str | None, http: httpx.AsyncClient | None
) -> list[Check]:
    import httpx

    from app.db import create_engine
    from app.setup.doctor import run_checks

    engine = create_engine(settings.sqlalchemy_url, pool_size=1)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if http is None:
                http = await stack.enter_async_context(httpx.AsyncClient())
            return await run_checks(settings, engine=engine, http=http, nameserver=nameserver)
    finally:
        await engine.dispose()


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


async def _import_from_ses(settings: Settings) -> tuple[int, int]:
    from app import aws
    from app.db import create_engine, create_sessionmaker
    from app.recipients.ses_list import SesSuppressionList, import_from_ses

    engine = create_engine(settings.sqlalchemy_url, pool_size=1)
    try:
        async with (
            aws.client("sesv2") as client,
            create_sessionmaker(engine)() as session,
        ):
            result = await import_from_ses(
                session,
                SesSuppressionList(client),
                secret=settings.address_hash_secret.get_secret_value(),
            )
            await session.commit()
            return result.imported, result.known
    finally:
        await engine.dispose()


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


def export_openapi() -> str:
    from app.main import create_app

    return json.dumps(create_app().openapi(), indent=2, ensure_ascii=False) + "\n"


def dev_environment(state_dir: Path, *, host: str, port: int) -> dict[str, str]:
    """Start (or reuse) the embedded PostgreSQL and return settings for a local run."""
    import warnings

    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    import pgserver

    from app.sns.simulate import dev_sns_environment

    state_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(state_dir / "pgdata", cleanup_mode="stop")  # type: ignore[attr-defined]
    secrets_file = state_dir / "secrets.json"
    if secrets_file.exists():
        stored = json.loads(secrets_file.read_text())
    else:
        stored = {
            "unsubscribe_secret": secrets.token_urlsafe(32),
            "address_hash_secret": secrets.token_urlsafe(32),
        }
        secrets_file.write_text(json.dumps(stored))
        secrets_file.chmod(0o600)
    return {
        "TEGAMI_DATABASE_URL": server.get_uri(),
        "TEGAMI_PUBLIC_BASE_URL": f"http://{host}:{port}",
        "TEGAMI_UNSUBSCRIBE_SECRET": stored["unsubscribe_secret"],
        "TEGAMI_ADDRESS_HASH_SECRET": stored["address_hash_secret"],
        "TEGAMI_LINK_HOSTS": "proworks.jp,localhost",
        "TEGAMI_MAIL_BACKEND": "mailbox",
        "TEGAMI_MAILBOX_DIR": str(state_dir / "mailbox"),
        "TEGAMI_SENDER_POSTAL_ADDRESS": "〒000-0000 (開発用の住所)",
        "TEGAMI_SENDER_CONTACT": "support@proworks.jp",
        # Rates count after 10 sends (200 in production), so the guard can be tried locally.
        "TEGAMI_REPUTATION_MIN_SENDS": "10",
        # Trust the local signing certificate of `tegami simulate`, for a dev topic only.
        **dev_sns_environment(state_dir),
    }


def dev_webhook_secret(state_dir: Path) -> str:
    """A Standard Webhooks secret for local runs, kept beside the other dev secrets."""
    secret_file = state_dir / "webhook-secret"
    if not secret_file.exists():
        key = base64.b64encode(secrets.token_bytes(32)).decode()
        secret_file.write_text(f"whsec_{key}")
        secret_file.chmod(0o600)
    return secret_file.read_text().strip()


DEV_STATE = Path(".tegami")
# What `tegami dev` runs with, for the other commands started from the same directory.
DEV_ENV_FILE = DEV_STATE / "dev-env.json"


def use_dev_settings() -> bool:
    """From the directory where `tegami dev` runs, with no TEGAMI_DATABASE_URL of its own, a
    command (api-key, held, webhooks test, simulate, ...) uses the settings dev runs with."""
    if os.environ.get("TEGAMI_DATABASE_URL") or not DEV_ENV_FILE.is_file():
        return False
    for key, value in json.loads(DEV_ENV_FILE.read_text()).items():
        os.environ.setdefault(key, value)
    return True


def _remember_dev_environment() -> None:
    values = {k: v for k, v in os.environ.items() if k.startswith("TEGAMI_")}
    DEV_ENV_FILE.write_text(json.dumps(values, indent=2))
    DEV_ENV_FILE.chmod(0o600)  # it holds the dev secrets


def dev(*, host: str, port: int, webhook_url: str | None = None, reset: bool = False) -> None:
    # Explicit TEGAMI_* variables win over the development defaults.
    for key, value in dev_environment(DEV_STATE.resolve(), host=host, port=port).items():
        os.environ.setdefault(key, value)
    from app.db import migrate, unmigrate

    if webhook_url is not None:
        os.environ["TEGAMI_WEBHOOK_URL"] = webhook_url
        os.environ.setdefault("TEGAMI_WEBHOOK_SECRET", dev_webhook_secret(DEV_STATE))
    settings = _settings_or_exit()
    if reset:
        # A clean slate after the simulate tour (bounce and complaint rates included): every
        # table emptied by going down and up the migrations; the secrets are kept.
        unmigrate(settings.database_url)
        for mail in settings.mailbox_dir.glob("*.eml"):
            mail.unlink()
    migrate(settings.database_url)
    _remember_dev_environment()
    key = dev_api_key(settings, DEV_STATE.resolve() / "dev-api-key")
    base = settings.public_base_url
    print(
        f"\ntegami dev is starting on {base}\n"
        f"  API key:  {key}\n"
        f"  mailbox:  {base}/dev/mailbox\n"
        f"  API docs: {base}/docs\n"
        f"  database: {settings.database_url}\n"
        "            (tegami api-key, held, webhooks, simulate ... run from this directory use\n"
        "            it and the settings above by themselves)\n"
        + (
            f"  webhooks: {settings.webhook_url}\n"
            f"            secret {settings.webhook_secret[0].get_secret_value()}\n"
            if settings.webhook_url
            else ""
        )
        + f"  try:      curl -X POST {base}/emails/verify-email -H 'Authorization: Bearer {key}' "
        "-H 'Content-Type: application/json' "
        """-d '{"to":"taro@example.com","params":{"verification_url":"https://proworks.jp/verify?t=1"}}'\n""",
        flush=True,
    )
    serve(settings, host=host, port=port)


def run_simulate(event: str, email: str, *, soft: bool, url: str | None) -> None:
    import httpx

    from app.sns.simulate import SimulatedEvent, simulate

    # Where `tegami dev` of this directory runs (its port), unless --url says otherwise.
    url = url or os.environ.get("TEGAMI_PUBLIC_BASE_URL") or "http://127.0.0.1:8000"

    kind = SimulatedEvent(event)
    if soft and kind is not SimulatedEvent.BOUNCE:
        print("tegami: --soft goes with bounce only", file=sys.stderr)
        raise SystemExit(2)
    try:
        answer = asyncio.run(
            simulate(kind, email, soft=soft, url=url, state_dir=Path(".tegami").resolve())
        )
    except httpx.HTTPError as exc:
        print(f"tegami: could not reach {url} ({exc}); is `tegami dev` running?", file=sys.stderr)
        raise SystemExit(1) from None
    what = f"{'soft ' if soft else ''}{kind.value}"
    if answer.status_code == 200:
        print(f"{what} for {email}: {answer.json().get('outcome', 'applied')}")
        return
    print(f"tegami: {url} answered {answer.status_code}: {answer.text}", file=sys.stderr)
    if answer.status_code == 403:
        print(
            "tegami: run simulate from the directory where `tegami dev` runs (it trusts "
            ".tegami/sns/ there), and leave TEGAMI_SNS_TOPIC_ARNS unset for dev",
            file=sys.stderr,
        )
    raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import version

    from app.models import ApiKeyScope

    parser = argparse.ArgumentParser(prog="tegami", description=__doc__)
    parser.add_argument(
        "--version",
        action="version",
        version=f"tegami {version('tegami')}",
        help="print the version and exit",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    for name, text in (
        ("serve", "run the API and the worker"),
        ("dev", "run locally: embedded PostgreSQL, mails kept in a local mailbox"),
    ):
        command = commands.add_parser(name, help=text)
        host = "127.0.0.1" if name == "dev" else "0.0.0.0"  # noqa: S104
        command.add_argument("--host", default=host, help=f"address to listen on (default: {host})")
        command.add_argument(
            "--port", type=int, default=8000, help="port to listen on (default: 8000)"
        )
    commands.choices["dev"].add_argument(
        "--webhook-url",
        metavar="URL",
        help="post the events (signed, Standard Webhooks) to URL, e.g. http://127.0.0.1:9000/hook",
    )
    commands.choices["dev"].add_argument(
        "--reset",
        action="store_true",
        help="start from an empty database and mailbox (mails, suppressions, keys, bounce and "
        "complaint rates); the secrets are kept, a new API key is printed",
    )

    commands.add_parser("worker", help="run the worker alone")
    commands.add_parser("migrate", help="bring the database schema up to date")

    keys = commands.add_parser("api-key", help="manage API keys (needs only TEGAMI_DATABASE_URL)")
    api_key_commands = keys.add_subparsers(dest="api_key_command", required=True)
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

    simulate = commands.add_parser(
        "simulate",
        help="post a signed SES event to a running `tegami dev` (through /sns/ses-events)",
    )
    simulate.add_argument(
        "event", choices=["bounce", "complaint", "delivery"], help="the SES event to play"
    )
    simulate.add_argument("email", help="the recipient the event is about")
    simulate.add_argument(
        "--soft", action="store_true", help="a transient (soft) bounce instead of a hard one"
    )
    simulate.add_argument(
        "--url",
        help="where `tegami dev` runs (default: where the `tegami dev` of this directory "
        "runs, else http://127.0.0.1:8000)",
    )

    add_domain_commands(commands)
    add_held_commands(commands)
    add_webhook_commands(commands)
    add_support_commands(commands)

    suppressions = commands.add_parser("suppressions", help="tegami's and SES's suppressions")
    suppressions_commands = suppressions.add_subparsers(dest="suppressions_command", required=True)
    suppressions_commands.add_parser(
        "import-from-ses",
        help="suppress in tegami every address on SES's account suppression list (idempotent)",
    )

    doctor = commands.add_parser(
        "doctor", help="check SES, SNS, DNS, the database and the public URL: ready to send?"
    )
    doctor.add_argument(
        "--nameserver",
        metavar="HOST[:PORT]",
        help="ask this DNS server for the domain's records (default: TEGAMI_DNS_NAMESERVER, "
        "else the system resolver)",
    )

    openapi = commands.add_parser("openapi", help="print the OpenAPI document")
    openapi.add_argument(
        "--output", type=Path, metavar="FILE", help="write it to FILE instead of stdout"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command not in ("dev", "serve", "worker", "openapi") and use_dev_settings():
        print(f"tegami: with the settings of `tegami dev` ({DEV_ENV_FILE})", file=sys.stderr)
    if args.command == "serve":
        serve(_settings_or_exit(), host=args.host, port=args.port)
    elif args.command == "dev":
        dev(host=args.host, port=args.port, webhook_url=args.webhook_url, reset=args.reset)
    elif args.command == "worker":
        from app.ops.logging import configure_logging

        configure_logging()
        asyncio.run(_run_worker(_settings_or_exit()))
    elif args.command == "migrate":
        url = os.environ.get("TEGAMI_DATABASE_URL")
        if not url:
            print("tegami: TEGAMI_DATABASE_URL is required", file=sys.stderr)
            raise SystemExit(2)
        from app.db import migrate

        migrate(url)
    elif args.command == "api-key":
        api_key(args)
    elif args.command == "webhooks":
        raise SystemExit(run_webhook_command(args))
    elif args.command == "domain":
        raise SystemExit(run_domain_command(args))
    elif args.command == "held":
        from app.emails.held import run_held_command
        from app.reputation.watch import guard_outlook

        raise SystemExit(run_held_command(args, outlook=guard_outlook))
    elif args.command in ("emails", "why"):
        raise SystemExit(run_support_command(args))
    elif args.command == "suppressions":
        raise SystemExit(run_import_from_ses(_settings_or_exit()))
    elif args.command == "doctor":
        raise SystemExit(run_doctor(_settings_or_exit(), nameserver=args.nameserver))
    elif args.command == "simulate":
        run_simulate(args.event, args.email, soft=args.soft, url=args.url)
    elif args.command == "openapi":
        document = export_openapi()
        if args.output:
            args.output.write_text(document)
        else:
            sys.stdout.write(document)


if __name__ == "__main__":
    main()
