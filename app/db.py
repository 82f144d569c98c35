"""Declarative base with a naming convention, the engine, and the request session."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import asyncpg
from fastapi import Depends
from sqlalchemy import MetaData, event, text
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from app.deps import get_sessionmaker

log = logging.getLogger(__name__)

# Stable constraint names, so Alembic migrations can name what they drop.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def create_engine(url: str, *, pool_size: int = 20, max_overflow: int = 10) -> AsyncEngine:
    engine = create_async_engine(
        url,
        # Kept open: as many as the requests and sends a busy process has in flight. Overflow
        # connections are opened and closed per use, and each open costs a PostgreSQL backend
        # fork, a TLS attempt and authentication, more than the statement itself.
        pool_size=pool_size,
        max_overflow=max_overflow,
        # Fail fast when the database is away, so /readyz and the API answer 503 quickly.
        connect_args={"timeout": 5, "command_timeout": 30},
    )
    event.listen(engine.sync_engine, "checkout", _discard_closed)
    return engine


def _discard_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Hand out no connection the server has closed (a restart, a failover, an idle kill).

    This stands in for ``pool_pre_ping``, which costs three round trips (BEGIN, ping,
    ROLLBACK) per checkout, a third of the send path's work. asyncpg learns of the server's
    close as it happens, so asking it costs nothing; the pool then opens a new connection.
    A connection that dies silently later fails its query, SQLAlchemy invalidates the pool,
    and the request answers 503.
    """
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("the server closed this connection")


# What the server keeps for administrators: PostgreSQL's superuser and (16+) reserved slots,
# and RDS's own for its agents. A missing setting counts 0.
_CONNECTION_LIMIT = text(
    "SELECT current_setting('max_connections')::int"
    " - current_setting('superuser_reserved_connections')::int"
    " - coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0)"
    " - coalesce(nullif(current_setting('rds.rds_superuser_reserved_connections', true), '')"
    "::int, 0)"
)


async def warn_if_over_budget(
    engine: AsyncEngine, *, pool_size: int, max_overflow: int, processes: int | None
) -> None:
    """Log whether every process's pool at its fullest fits in the database's connections.

    ``processes``: how many may run at once (TEGAMI_DB_MAX_PROCESSES; unset counts this one).
    Past the limit PostgreSQL refuses new connections, and the requests that needed them
    answer 503 at the worst moment, under load, so this is said at start-up instead.
    """
    try:
        async with engine.connect() as connection:
            allowed = int((await connection.execute(_CONNECTION_LIMIT)).scalar_one())
    except Exception as exc:  # the database may be away; /readyz says so
        log.info(
            "connection budget not checked",
            extra={"event": "db_connection_budget_unchecked", "error": repr(exc)},
        )
        return
    per_process = pool_size + max_overflow
    budget = per_process * (processes or 1)
    fields = {
        "per_process": per_process,
        "processes": processes or 1,
        "budget": budget,
        "allowed": allowed,
    }
    if budget > allowed:
        log.warning(
            "up to %d processes × %d connections (TEGAMI_DB_POOL_SIZE + TEGAMI_DB_MAX_OVERFLOW) "
            "= %d, but the database allows %d: lower the pool, the processes, or raise "
            "max_connections",
            processes or 1,
            per_process,
            budget,
            allowed,
            extra={"event": "db_connection_budget_exceeded", **fields},
        )
    else:
        log.info("connection budget fits", extra={"event": "db_connection_budget", **fields})


# What means the connection (or the server) is gone, rather than a fault in the statement.
_CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash, cannot connect now
    # "cannot switch to state …; another operation is in progress": a connection left
    # mid-protocol by a drop; unusable, so it is thrown away like a lost one.
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


@contextlib.asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """asyncpg's own connection, from the engine's pool, outside any transaction.

    For the hot paths that are one statement (a transaction of its own): they skip the ORM
    session, SQLAlchemy's per-statement work and the BEGIN/COMMIT round trips, which together
    cost several times the statement. A lost connection is dropped from the pool and
    surfaces as SQLAlchemy's OperationalError, so it answers 503 like any other.
    """
    async with engine.connect() as connection:
        pooled = await connection.get_raw_connection()
        raw = pooled.driver_connection
        try:
            yield raw
        except _CONNECTION_LOST as exc:
            pooled.invalidate(exc)
            raise OperationalError("(asyncpg)", None, exc) from exc
        finally:
            # A transaction a caller opened and could not end (cancelled mid-statement) must
            # not reach the next user of this connection: SQLAlchemy's reset on return only
            # rolls back transactions it began itself. Closing it rolls it back.
            if raw is not None and not raw.is_closed() and raw.is_in_transaction():
                pooled.invalidate()


@contextlib.asynccontextmanager
async def generic_plan_transaction(connection: asyncpg.Connection) -> AsyncIterator[None]:
    """A transaction on asyncpg's connection whose prepared statements run on their generic
    plans.

    Left to choose, PostgreSQL re-plans statements with arrays and CTEs on every execution
    (it estimates their generic plan dearer), which costs more than running them: on the SNS
    path, 1.9 ms of PostgreSQL CPU per event instead of 1.0 (bench/NOTES.md). For statements
    that look rows up by key. Set with BEGIN in one round trip, and for this transaction
    only: the accept statement runs three times slower on its generic plan.
    """
    await connection.execute("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan")
    try:
        yield
    except Exception:
        # When this fails too, driver_connection discards the connection.
        with contextlib.suppress(Exception):
            await connection.execute("ROLLBACK")
        raise
    await connection.execute("COMMIT")


_NAMED = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


@dataclass(frozen=True)
class NamedStatement:
    """SQL written with ``:name`` parameters, for asyncpg, which numbers them (``$1``)."""

    sql: str
    names: tuple[str, ...]
    # As written (``:name``), for SQLAlchemy's ``text()`` on the ORM's connection.
    source: str = ""

    @classmethod
    def of(cls, sql: str) -> NamedStatement:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        return cls(_NAMED.sub(number, sql), tuple(names), sql)

    def args(self, values: Mapping[str, Any]) -> Sequence[Any]:
        return [values[name] for name in self.names]


_CTE_NAME = re.compile(r"\s*([a-z_][a-z0-9_]*)\s+AS\s+\(", re.IGNORECASE)


def _top_level_ctes(sql: str) -> list[str]:
    """The names of the CTEs in ``sql`` (``a AS (...), b AS (...)``), at parenthesis depth 0."""
    names: list[str] = []
    depth, start = 0, 0
    for index, char in enumerate(sql):
        if char == "(":
            if depth == 0:
                match = _CTE_NAME.fullmatch(sql[start : index + 1].lstrip(","))
                if match is None:
                    raise ValueError(f"not a CTE list near {sql[start : index + 1]!r}")
                names.append(match.group(1))
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                start = index + 1
    return names


@dataclass(frozen=True)
class Fragment:
    """One owner's part of a statement that writes several owners' tables in one round trip:
    its CTEs (``a AS (...), b AS (...)``), the CTE names it provides and needs from the
    fragments before it, and its parameters: its own start with ``prefix`` (``r_`` for the
    recipients, ``m_`` for the outbox, ``w_`` for the app's events); any other it uses is
    another fragment's own, named in ``needs_params``. ``compose`` checks the agreement."""

    sql: str
    prefix: str
    needs: frozenset[str] = frozenset()
    needs_params: frozenset[str] = frozenset()

    @property
    def provides(self) -> tuple[str, ...]:
        return tuple(_top_level_ctes(self.sql))

    @property
    def params(self) -> set[str]:
        return set(_NAMED.findall(self.sql))

    @property
    def own_params(self) -> set[str]:
        return {name for name in self.params if name.startswith(self.prefix)}


class CompositionError(ValueError):
    """Fragments that do not fit: a statement that would fail at run time, refused at import."""


def compose(*fragments: Fragment, select: str) -> NamedStatement:
    """``WITH`` the fragments, in order, then ``select``: refused when a fragment needs a CTE
    no fragment before it provides, reads another's CTE without declaring it, uses a
    parameter neither its own nor declared and provided, or when two provide one name."""
    provided: dict[str, int] = {}
    own: set[str] = set()
    for position, fragment in enumerate(fragments):
        names = fragment.provides
        for name in names:
            if name in provided:
                raise CompositionError(f"two fragments provide the CTE {name!r}")
            provided[name] = position
        for name in fragment.needs:
            if provided.get(name, position) >= position:
                raise CompositionError(f"the CTE {name!r} is needed but not provided before")
        own |= fragment.own_params
    for fragment in fragments:
        theirs = set(provided) - set(fragment.provides) - fragment.needs
        for name in theirs:
            if re.search(rf"\b(?:FROM|JOIN)\s+{name}\b", fragment.sql, re.IGNORECASE):
                raise CompositionError(f"a fragment reads the CTE {name!r} without needing it")
        foreign = fragment.params - fragment.own_params
        for name in foreign - fragment.needs_params:
            raise CompositionError(f"the parameter :{name} is neither own nor declared")
        for name in fragment.needs_params - own:
            raise CompositionError(f"the parameter :{name} is needed but no fragment owns it")
    return NamedStatement.of("WITH" + ",".join(f.sql for f in fragments) + "\n" + select)


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def get_session(
    sessionmaker: Annotated[async_sessionmaker[AsyncSession], Depends(get_sessionmaker)],
) -> AsyncIterator[AsyncSession]:
    """One session per request. Routers commit what they change; anything else rolls back."""
    async with sessionmaker() as session:
        try:
            yield session
        finally:
            if session.in_transaction():
                await session.rollback()


SessionDep = Annotated[AsyncSession, Depends(get_session)]


# PostgreSQL text holds any character but NUL (a JSON Schema pattern for the OpenAPI document).
NO_NUL = "^[^\\u0000]*$"


def check_storable(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL: refused here (422), not at the INSERT (500)."""
    if value is not None and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


PROJECT_ROOT = Path(__file__).resolve().parent.parent


def alembic_ini() -> Path:
    for candidate in (PROJECT_ROOT / "alembic.ini", Path.cwd() / "alembic.ini"):
        if candidate.is_file():
            return candidate
    raise SystemExit("tegami: alembic.ini not found (run from the project directory)")


def _alembic_config(database_url: str) -> Any:
    from alembic.config import Config

    config = Config(str(alembic_ini()))
    config.attributes["configure_logger"] = False
    # configparser treats % as interpolation; URLs may hold percent-escapes.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def migrate(database_url: str) -> None:
    from alembic import command

    command.upgrade(_alembic_config(database_url), "head")


def unmigrate(database_url: str) -> None:
    """Every migration undone: no table left (`tegami dev --reset`, never production)."""
    from alembic import command

    command.downgrade(_alembic_config(database_url), "base")
