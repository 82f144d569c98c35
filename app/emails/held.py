"""`tegami held list|release|discard`: the operator's hand on mail the reputation guard holds.

The guard holds optional mail while the bounce or complaint rate is over SES's review level and
releases it by itself when the rate falls. An operator may discard held mail so that it is never
sent (a notification gone stale), or release it: while the rate is still over the level, the
guard holds released mail again at its next look (15 s), so release after the rate fell, or with
TEGAMI_REPUTATION_GUARD off.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import TextIO

from sqlalchemy.ext.asyncio import AsyncEngine

from app.commands import Command, command_engine, first_line
from app.config import DatabaseSettings, load_database_settings
from app.emails import outbox
from app.recipients.addresses import mask_address

# What the guard will do next, in a sentence (the caller reads the rates: app/reputation).
GuardOutlook = Callable[[AsyncEngine], Awaitable[str]]


def _arguments(held: argparse.ArgumentParser) -> None:
    actions = held.add_subparsers(dest="held_command", required=True)
    actions.add_parser(
        "list", help="every held mail: id, type, masked recipient, held since, and why"
    )
    for name, what in (
        ("release", "back to the queue now, sent at the shared rate"),
        ("discard", "never sent: failed, with the operator's cause on its history"),
    ):
        action = actions.add_parser(name, help=f"held mail {what}")
        action.add_argument("ids", nargs="*", type=uuid.UUID, metavar="ID", help="email ids")
        action.add_argument("--all", action="store_true", help="every held mail")


def run_held_command(
    args: argparse.Namespace, out: TextIO = sys.stdout, *, outlook: GuardOutlook | None = None
) -> int:
    if args.held_command != "list" and bool(args.ids) == bool(args.all):
        print("tegami: name the email ids, or --all (not both)", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(load_database_settings(), args, out, outlook))
    except Exception as exc:  # one line, never a traceback
        print(f"tegami: {first_line(exc)}", file=sys.stderr)
        return 1


async def _run(
    settings: DatabaseSettings, args: argparse.Namespace, out: TextIO, outlook: GuardOutlook | None
) -> int:
    cause = "cli:held"
    async with command_engine(settings) as engine:
        async with engine.begin() as conn:
            if args.held_command == "list":
                held = await outbox.held_mail(conn)
                for mail in held:
                    to = mask_address(mail.to_address) if mail.to_address else "(erased)"
                    since = (mail.held_at or mail.created_at).strftime("%Y-%m-%d %H:%M UTC")
                    print(
                        f"{mail.id}  {mail.kind:<22} {to:<26} held since {since}: {mail.why}",
                        file=out,
                    )
                print(f"{len(held)} held", file=out)
            else:
                ids = None if args.all else list(args.ids)
                if args.held_command == "release":
                    count = await outbox.release_held(conn, ids=ids, cause=cause)
                else:
                    count = await outbox.discard_held(conn, ids=ids, cause=cause)
        if args.held_command == "list":
            if held and outlook is not None:
                print(await outlook(engine), file=out)
            return 0
        verb = "released" if args.held_command == "release" else "discarded"
        print(f"{count} {verb}", file=out)
        if args.held_command == "release" and count and outlook is not None:
            print(await outlook(engine), file=out)
        return 0


def held_command(*, outlook: GuardOutlook) -> Command:
    """`tegami held`, saying what the guard will do next as ``outlook`` reads it."""
    return Command(
        "held",
        "mail held by the reputation guard (needs only TEGAMI_DATABASE_URL)",
        lambda args: run_held_command(args, outlook=outlook),
        _arguments,
    )
