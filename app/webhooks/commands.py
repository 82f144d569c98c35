"""`tegami webhooks replay --since TIME` and `tegami webhooks test`."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TextIO

import httpx

from app.commands import Command, command_session
from app.config import SettingsError, load_database_settings, load_settings
from app.webhooks import deliveries
from app.webhooks.dispatcher import send_test

_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC unless it says otherwise), or a duration back from now (`24h`)."""
    text = text.strip()
    parts = _DURATION.findall(text.lower())
    if parts and "".join(n + u for n, u in parts) == text.lower():
        back = timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))
        return (now or datetime.now(UTC)) - back
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time like 2026-12-01T09:00 or a duration like 24h"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _arguments(webhooks: argparse.ArgumentParser) -> None:
    commands = webhooks.add_subparsers(dest="webhooks_command", required=True)
    replay = commands.add_parser(
        "replay",
        help="send again every event since TIME that was delivered or given up on "
        "(same webhook-id, a new retry schedule)",
    )
    replay.add_argument(
        "--since",
        required=True,
        type=parse_since,
        metavar="TIME",
        help="ISO 8601 (2026-12-01T09:00, UTC unless an offset is given) or a duration (24h)",
    )
    commands.add_parser(
        "test", help="post a signed webhook.test event to TEGAMI_WEBHOOK_URL and print the answer"
    )


async def _replay(since: datetime) -> int:
    async with command_session(load_database_settings()) as session:
        return await deliveries.replay(await session.connection(), since=since)


async def _test(out: TextIO, err: TextIO) -> int:
    settings = load_settings()
    if settings.webhook_url is None:
        print("tegami: TEGAMI_WEBHOOK_URL is not set", file=err)
        return 2
    async with httpx.AsyncClient(follow_redirects=False) as http:
        answer = await send_test(settings, http=http)
    if answer.status is None:
        print(f"tegami: {settings.webhook_url}: {answer.detail}", file=err)
        return 1
    text = " ".join(answer.detail.split())[:200]
    print(f"{settings.webhook_url} answered {answer.status}" + (f": {text}" if text else ""))
    if not answer.ok:
        print("tegami: not a 2xx: tegami would retry this event", file=err)
        return 1
    return 0


def run_webhook_command(
    args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        if args.webhooks_command == "replay":
            count = asyncio.run(_replay(args.since))
            print(f"{count} event(s) since {args.since.isoformat()} will be sent again", file=out)
            return 0
        return asyncio.run(_test(out, err))
    except SettingsError as exc:
        print(f"tegami: {exc}", file=err)
        return 2
    except OSError as exc:
        print(f"tegami: the database cannot be reached ({exc})", file=err)
        return 2


WEBHOOKS = Command(
    "webhooks", "the events posted to TEGAMI_WEBHOOK_URL", run_webhook_command, _arguments
)
