"""`tegami serve`, `worker`, `dev`, `simulate`, `migrate` and `openapi`: the commands that run
the assembled app (locally, with `dev`) or describe it."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import signal
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from app.commands import Command, command_session
from app.config import Settings, SettingsError, load_settings


def settings_or_exit() -> Settings:
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


def _listen_arguments(default_host: str) -> Callable[[argparse.ArgumentParser], None]:
    def arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--host", default=default_host, help=f"address to listen on (default: {default_host})"
        )
        parser.add_argument(
            "--port", type=int, default=8000, help="port to listen on (default: 8000)"
        )

    return arguments


def _serve(args: argparse.Namespace) -> int:
    serve(settings_or_exit(), host=args.host, port=args.port)
    return 0


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


def _worker(args: argparse.Namespace) -> int:
    from app.ops.logging import configure_logging

    configure_logging()
    asyncio.run(_run_worker(settings_or_exit()))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    url = os.environ.get("TEGAMI_DATABASE_URL")
    if not url:
        print("tegami: TEGAMI_DATABASE_URL is required", file=sys.stderr)
        return 2
    from app.db import migrate

    migrate(url)
    return 0


def export_openapi() -> str:
    from app.main import create_app

    return json.dumps(create_app().openapi(), indent=2, ensure_ascii=False) + "\n"


def _openapi_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", type=Path, metavar="FILE", help="write it to FILE instead of stdout"
    )


def _openapi(args: argparse.Namespace) -> int:
    document = export_openapi()
    if args.output:
        args.output.write_text(document)
    else:
        sys.stdout.write(document)
    return 0


DEV_KEY_NAME = "dev"


async def _ensure_dev_key(settings: Settings, stored: str | None) -> str:
    from app import api_keys
    from app.models import ApiKeyScope

    async with command_session(settings) as session:
        if stored and await api_keys.key_is_valid(session, key=stored):
            return stored
        try:
            return await api_keys.create_key(session, name=DEV_KEY_NAME, scope=ApiKeyScope.ADMIN)
        except api_keys.ApiKeyError:  # the file was lost: a new key for the same name
            try:
                return await api_keys.rotate_key(session, name=DEV_KEY_NAME, grace=timedelta(0))
            except api_keys.ApiKeyError:  # someone revoked it: respect that
                return await api_keys.create_key(
                    session, name=f"dev-{secrets.token_hex(3)}", scope=ApiKeyScope.ADMIN
                )


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
    # uvicorn raises the SIGTERM it caught again once it has shut down: as an exit, not the
    # default kill, so that pgserver's exit handler stops the embedded PostgreSQL (a `kill`
    # or a closed terminal otherwise left it running, holding the port and the data dir).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Explicit TEGAMI_* variables win over the development defaults.
    for key, value in dev_environment(DEV_STATE.resolve(), host=host, port=port).items():
        os.environ.setdefault(key, value)
    from app.db import migrate, unmigrate

    if webhook_url is not None:
        os.environ["TEGAMI_WEBHOOK_URL"] = webhook_url
        os.environ.setdefault("TEGAMI_WEBHOOK_SECRET", dev_webhook_secret(DEV_STATE))
    settings = settings_or_exit()
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


def _dev_arguments(parser: argparse.ArgumentParser) -> None:
    _listen_arguments("127.0.0.1")(parser)
    parser.add_argument(
        "--webhook-url",
        metavar="URL",
        help="post the events (signed, Standard Webhooks) to URL, e.g. http://127.0.0.1:9000/hook",
    )
    parser.add_argument(
        "--reset",
        action="store_true",
        help="start from an empty database and mailbox (mails, suppressions, keys, bounce and "
        "complaint rates); the secrets are kept, a new API key is printed",
    )


def _dev(args: argparse.Namespace) -> int:
    dev(host=args.host, port=args.port, webhook_url=args.webhook_url, reset=args.reset)
    return 0


def _simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "event", choices=["bounce", "complaint", "delivery"], help="the SES event to play"
    )
    parser.add_argument("email", help="the recipient the event is about")
    parser.add_argument(
        "--soft", action="store_true", help="a transient (soft) bounce instead of a hard one"
    )
    parser.add_argument(
        "--url",
        help="where `tegami dev` runs (default: where the `tegami dev` of this directory "
        "runs, else http://127.0.0.1:8000)",
    )


def _simulate(args: argparse.Namespace) -> int:
    import httpx

    from app.sns.simulate import SimulatedEvent, simulate

    # Where `tegami dev` of this directory runs (its port), unless --url says otherwise.
    url = args.url or os.environ.get("TEGAMI_PUBLIC_BASE_URL") or "http://127.0.0.1:8000"

    kind = SimulatedEvent(args.event)
    if args.soft and kind is not SimulatedEvent.BOUNCE:
        print("tegami: --soft goes with bounce only", file=sys.stderr)
        return 2
    try:
        answer = asyncio.run(
            simulate(kind, args.email, soft=args.soft, url=url, state_dir=DEV_STATE.resolve())
        )
    except httpx.HTTPError as exc:
        print(f"tegami: could not reach {url} ({exc}); is `tegami dev` running?", file=sys.stderr)
        return 1
    what = f"{'soft ' if args.soft else ''}{kind.value}"
    if answer.status_code == 200:
        print(f"{what} for {args.email}: {answer.json().get('outcome', 'applied')}")
        return 0
    print(f"tegami: {url} answered {answer.status_code}: {answer.text}", file=sys.stderr)
    if answer.status_code == 403:
        print(
            "tegami: run simulate from the directory where `tegami dev` runs (it trusts "
            ".tegami/sns/ there), and leave TEGAMI_SNS_TOPIC_ARNS unset for dev",
            file=sys.stderr,
        )
    return 1


SERVE = Command(
    "serve",
    "run the API and the worker",
    _serve,
    _listen_arguments("0.0.0.0"),  # noqa: S104
    uses_dev_settings=False,
)
DEV = Command(
    "dev",
    "run locally: embedded PostgreSQL, mails kept in a local mailbox",
    _dev,
    _dev_arguments,
    uses_dev_settings=False,
)
WORKER = Command("worker", "run the worker alone", _worker, uses_dev_settings=False)
MIGRATE = Command("migrate", "bring the database schema up to date", _migrate)
SIMULATE = Command(
    "simulate",
    "post a signed SES event to a running `tegami dev` (through /sns/ses-events)",
    _simulate,
    _simulate_arguments,
)
OPENAPI = Command(
    "openapi", "print the OpenAPI document", _openapi, _openapi_arguments, uses_dev_settings=False
)
