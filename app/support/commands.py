"""`tegami emails find --to ADDRESS` and `tegami why ADDRESS [--type T]`: support's two reads
as tables, for operators in a shell (the same answers as GET /emails and /why)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TextIO

from app.commands import Command, command_session, first_line
from app.config import Settings, SettingsError, load_settings
from app.models import MailType, MessageStatus
from app.recipients.addresses import AddressError, address_hash, check_address
from app.support import search, service


def _emails_arguments(emails: argparse.ArgumentParser) -> None:
    actions = emails.add_subparsers(dest="emails_command", required=True)
    find = actions.add_parser("find", help="a person's mail, newest first")
    find.add_argument("--to", metavar="ADDRESS", help="the recipient, in any case or spelling")
    find.add_argument("--user-id", metavar="ID", help="the app's user id")
    find.add_argument("--type", choices=[t.value for t in MailType], help="one type of mail")
    find.add_argument("--status", choices=[s.value for s in MessageStatus], help="one status")
    find.add_argument("--tag", action="append", metavar="KEY:VALUE", help="repeatable")
    find.add_argument("--limit", type=int, default=20, help="at most 100 (default: 20)")


def _why_arguments(why: argparse.ArgumentParser) -> None:
    why.add_argument("address", metavar="ADDRESS", help="the recipient, in any case or spelling")
    why.add_argument("--type", choices=[t.value for t in MailType], help="default: any type")


def run_support_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    try:
        settings = load_settings()
        if args.command == "why" or args.to:
            check_address((args.address if args.command == "why" else args.to).strip())
        return asyncio.run(_run(settings, args, out))
    except (SettingsError, AddressError) as exc:
        print(f"tegami: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # one line, never a traceback
        print(f"tegami: {first_line(exc)}", file=sys.stderr)
        return 1


def _hash(settings: Settings, address: str) -> bytes:
    return address_hash(address, secret=settings.address_hash_secret.get_secret_value())


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
            file=out,
        )


async def _run(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    async with command_session(settings) as session:
        if args.command == "why":
            verdict = await service.why(
                session,
                address=args.address,
                address_hash=_hash(settings, args.address),
                type=args.type,
            )
            _table(
                [
                    ["verdict", verdict.verdict.value],
                    ["email_id", str(verdict.email_id or "-")],
                    ["explanation", verdict.explanation],
                    ["next_step", verdict.next_step],
                ],
                out,
            )
            return 0
        page = await search.find_emails(
            session,
            filters=search.Filters(
                address_hash=_hash(settings, args.to) if args.to else None,
                user_id=args.user_id,
                type=args.type,
                status=args.status,
                tags=dict(search.parse_tag(t) for t in args.tag) if args.tag else None,
            ),
            limit=args.limit,
        )
    rows = [["created (UTC)", "id", "type", "status", "to", "last event"]]
    for e in page.emails:
        last = ""
        if e.last_event_kind is not None:
            last = e.last_event_kind + (f": {e.last_event_detail}" if e.last_event_detail else "")
        rows.append(
            [
                e.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                str(e.id),
                e.type,
                e.status,
                e.to or "(erased)",
                last[:80],
            ]
        )
    _table(rows, out)
    more = " (more: narrow the search or raise --limit)" if page.next_cursor else ""
    print(f"{len(page.emails)} found{more}", file=out)
    return 0


EMAILS = Command("emails", "find mail (as GET /emails)", run_support_command, _emails_arguments)
WHY = Command(
    "why",
    "why a person did or did not get a mail, in Japanese (as GET .../why)",
    run_support_command,
    _why_arguments,
)
