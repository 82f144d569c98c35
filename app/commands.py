"""What a `tegami` command is, and how a command opens the database.

Each command is declared where it lives (its arguments and its handler, a `Command`); app/cli.py
only builds the parser from them and runs the one the user named.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.config import DatabaseSettings
from app.db import create_engine, create_sessionmaker


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    """A command that takes no arguments."""


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    # Runs the command; returns its exit code. Bad input is one line on stderr, never a
    # traceback.
    run: Callable[[argparse.Namespace], int]
    # Adds the command's arguments and subcommands to its parser.
    arguments: Callable[[argparse.ArgumentParser], None] = field(default=_no_arguments)
    # Run from the directory of `tegami dev`, with no database of its own, the command uses the
    # settings dev runs with; commands that start a server or need none do not.
    uses_dev_settings: bool = True


@asynccontextmanager
async def command_engine(settings: DatabaseSettings) -> AsyncIterator[AsyncEngine]:
    """A command's engine: one connection, disposed when the command is done."""
    engine = create_engine(settings.sqlalchemy_url, pool_size=1, max_overflow=0)
    try:
        yield engine
    finally:
        await engine.dispose()


@asynccontextmanager
async def command_session(settings: DatabaseSettings) -> AsyncIterator[AsyncSession]:
    """A command's session, committed when its block ends without error (rolled back if not)."""
    async with command_engine(settings) as engine, create_sessionmaker(engine)() as session:
        yield session
        await session.commit()


def first_line(exc: BaseException) -> str:
    """What a failed command says of its error: the driver's reason, never the statement."""
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]
