"""The `tegami` command: each command is declared where it lives (a `Command`); this builds the
parser from them and runs the one named."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from app.admin_commands import API_KEY, DOCTOR, SUPPRESSIONS
from app.commands import Command
from app.emails.held import held_command
from app.reputation.watch import guard_outlook
from app.serve import DEV, DEV_ENV_FILE, MIGRATE, OPENAPI, SERVE, SIMULATE, WORKER, use_dev_settings
from app.setup.domain import DOMAIN
from app.support.commands import EMAILS, WHY
from app.webhooks.commands import WEBHOOKS

DESCRIPTION = (
    "tegami, the transactional-mail service: run it, set it up, and answer for its mail. "
    "`tegami <command> --help` tells more."
)

# In the order `tegami --help` lists them.
COMMANDS: tuple[Command, ...] = (
    SERVE,
    DEV,
    WORKER,
    MIGRATE,
    API_KEY,
    SIMULATE,
    DOMAIN,
    held_command(outlook=guard_outlook),
    WEBHOOKS,
    EMAILS,
    WHY,
    SUPPRESSIONS,
    DOCTOR,
    OPENAPI,
)


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import version

    parser = argparse.ArgumentParser(prog="tegami", description=DESCRIPTION)
    parser.add_argument(
        "--version",
        action="version",
        version=f"tegami {version('tegami')}",
        help="print the version and exit",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help)
        command.arguments(sub)
        sub.set_defaults(tegami_command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    command: Command = args.tegami_command
    if command.uses_dev_settings and use_dev_settings():
        print(f"tegami: with the settings of `tegami dev` ({DEV_ENV_FILE})", file=sys.stderr)
    code = command.run(args)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
