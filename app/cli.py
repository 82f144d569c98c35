"""The `tegami` command: serve, worker, migrate, dev, api-key, simulate, domain, openapi."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from app.config import Settings, SettingsError, load_settings, to_asyncpg_url
from app.ops.domain import add_domain_commands, run_domain_command

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"tegami: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _database_url_or_exit() -> str:
    url = os.environ.get("TEGAMI_DATABASE_URL")
    if not url:
        print("tegami: TEGAMI_DATABASE_URL is required", file=sys.stderr)
        raise SystemExit(2)
    try:
        to_asyncpg_url(url)
    except ValueError as exc:
        print(f"tegami: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return url


def alembic_ini() -> Path:
    for candidate in (PROJECT_ROOT / "alembic.ini", Path.cwd() / "alembic.ini"):
        if candidate.is_file():
            return candidate
    raise SystemExit("tegami: alembic.ini not found (run from the project directory)")


def migrate(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config(str(alembic_ini()))
    config.attributes["configure_logger"] = False
    # configparser treats % as interpolation; URLs may hold percent-escapes.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    command.upgrade(config, "head")


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


async def _create_api_key(database_url: str, name: str) -> str:
    from app.api_keys import create_key
    from app.db import create_engine, create_sessionmaker

    engine = create_engine(to_asyncpg_url(database_url), pool_size=1)
    try:
        async with create_sessionmaker(engine)() as session:
            key = await create_key(session, name=name)
            await session.commit()
            return key
    finally:
        await engine.dispose()


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


def dev(*, host: str, port: int) -> None:
    # Explicit TEGAMI_* variables win over the development defaults.
    for key, value in dev_environment(Path(".tegami").resolve(), host=host, port=port).items():
        os.environ.setdefault(key, value)
    settings = _settings_or_exit()
    migrate(settings.database_url)
    key = asyncio.run(_create_api_key(settings.database_url, f"dev-{secrets.token_hex(3)}"))
    base = settings.public_base_url
    print(
        f"\ntegami dev is starting on {base}\n"
        f"  API key:  {key}\n"
        f"  mailbox:  {base}/dev/mailbox\n"
        f"  API docs: {base}/docs\n"
        f"  try:      curl -X POST {base}/emails/verify-email -H 'Authorization: Bearer {key}' "
        "-H 'Content-Type: application/json' "
        """-d '{"to":"taro@example.com","params":{"verification_url":"https://proworks.jp/verify?t=1"}}'\n""",
        flush=True,
    )
    serve(settings, host=host, port=port)


def run_simulate(event: str, email: str, *, soft: bool, url: str) -> None:
    import httpx

    from app.sns.simulate import SimulatedEvent, simulate

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
    parser = argparse.ArgumentParser(prog="tegami", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    for name, text in (
        ("serve", "run the API and the worker"),
        ("dev", "run locally: embedded PostgreSQL, mails kept in a local mailbox"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--host", default="127.0.0.1" if name == "dev" else "0.0.0.0")  # noqa: S104
        command.add_argument("--port", type=int, default=8000)

    commands.add_parser("worker", help="run the worker alone")
    commands.add_parser("migrate", help="bring the database schema up to date")

    api_key = commands.add_parser("api-key", help="manage API keys")
    api_key_commands = api_key.add_subparsers(dest="api_key_command", required=True)
    create = api_key_commands.add_parser("create", help="create a key and print it")
    create.add_argument("name")

    simulate = commands.add_parser(
        "simulate",
        help="post a signed SES event to a running `tegami dev` (through /sns/ses-events)",
    )
    simulate.add_argument("event", choices=["bounce", "complaint", "delivery"])
    simulate.add_argument("email")
    simulate.add_argument(
        "--soft", action="store_true", help="a transient (soft) bounce instead of a hard one"
    )
    simulate.add_argument("--url", default="http://127.0.0.1:8000", help="where `tegami dev` runs")

    add_domain_commands(commands)

    openapi = commands.add_parser("openapi", help="print the OpenAPI document")
    openapi.add_argument("--output", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        serve(_settings_or_exit(), host=args.host, port=args.port)
    elif args.command == "dev":
        dev(host=args.host, port=args.port)
    elif args.command == "worker":
        from app.ops.logging import configure_logging

        configure_logging()
        asyncio.run(_run_worker(_settings_or_exit()))
    elif args.command == "migrate":
        migrate(_database_url_or_exit())
    elif args.command == "api-key":
        # Only the database: the first key is made before the service has its settings.
        key = asyncio.run(_create_api_key(_database_url_or_exit(), args.name))
        print(key)
    elif args.command == "domain":
        raise SystemExit(run_domain_command(args))
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
