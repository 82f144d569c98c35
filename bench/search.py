"""Support's search at PRO WORKS's scale: find one person's mail among 10 million.

    .venv/bin/python bench/search.py                 # 10,000,000 mails (a few minutes to load)
    .venv/bin/python bench/search.py --rows 1000000  # a quicker look

Loads ``--rows`` mails (each with one history line) for ``--rows / 10`` recipients into its
own database ``tegami_bench_search`` (created afresh, migrated with Alembic, so the indexes
are the migration's), in SQL with generate_series; then times ``app.support.search.find_emails``
itself, the function behind GET /emails and /why, through an ORM session as the route does:
by address (the keyed hash, every spelling), by user id, and by tag; a first page of 50 for
each of 200 people, five times each. Prints p50/p99/max in milliseconds.

Needs a PostgreSQL where it may create and drop that database (``BENCH_ADMIN_URL``, default
``postgresql://postgres@127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable

import asyncpg

from app.db import create_engine, create_sessionmaker, migrate
from app.recipients.addresses import address_hash
from app.support import search

ADMIN = os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
NAME = "tegami_bench_search"
SECRET = "bench-address-hash-secret-0123456789"  # noqa: S105 (a throwaway database's)
PEOPLE = 200
REPEAT = 5


def url_of(database: str) -> str:
    return ADMIN.rsplit("/", 1)[0] + "/" + database


async def create() -> None:
    admin = await asyncpg.connect(ADMIN)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {NAME} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {NAME}")
    finally:
        await admin.close()


async def load(rows: int) -> float:
    """The mails, their recipients and one history line each; indexes built after the rows,
    as a restore would (the same definitions: read back from the migrated schema)."""
    started = time.monotonic()
    people = max(rows // 10, 1)
    conn = await asyncpg.connect(url_of(NAME))
    try:
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN "
            "('message', 'message_event') AND indexname NOT LIKE 'pk_%'"
            " AND indexname NOT LIKE 'uq_%'"
        )
        for index in indexes:
            await conn.execute(f'DROP INDEX "{index["indexname"]}"')
        await conn.execute("SET maintenance_work_mem = '1GB'")
        await conn.execute(
            """
            INSERT INTO recipient (address_hash, address, user_id)
            SELECT decode(md5('r' || i), 'hex'), 'person' || i || '@example.com', 'u' || i
            FROM generate_series(1, $1) AS i
            """,
            people,
        )
        # Ten mails a person, spread over 400 days, newest last; a tag on one in ten.
        await conn.execute(
            """
            INSERT INTO message (id, kind, category, recipient_id, to_address, user_id, params,
                tags, status, attempts, next_attempt_at, api_key_id, test, created_at,
                updated_at, sent_at)
            SELECT md5('m' || i)::uuid,
                (ARRAY['verify-email', 'password-reset', 'email-change',
                       'matching-notification'])[1 + i % 4],
                CASE WHEN i % 4 = 3 THEN 'matching' ELSE 'account' END,
                1 + i % $2, 'person' || (1 + i % $2) || '@example.com', 'u' || (1 + i % $2),
                NULL,
                CASE WHEN i % 10 = 0 THEN jsonb_build_object('job_id', 'J-' || (i / 10) % 100000)
                    ELSE '{}'::jsonb END,
                'delivered', 1, now(), NULL, false,
                now() - make_interval(secs => ($1 - i) * (400 * 86400.0 / $1)),
                now(), now() - make_interval(secs => ($1 - i) * (400 * 86400.0 / $1))
            FROM generate_series(1, $1) AS i
            """,
            rows,
            people,
        )
        await conn.execute(
            """
            INSERT INTO message_event (message_id, kind, detail, cause, feedback, created_at)
            SELECT id, 'delivery', 'smtp; 250 2.0.0 OK', 'sns:bench', 'delivery', created_at
            FROM message
            """
        )
        for index in indexes:
            await conn.execute(index["indexdef"])
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return time.monotonic() - started


async def sample(rows: int) -> list[tuple[int, str]]:
    """PEOPLE recipients, given addresses whose keyed hash the search can find."""
    people = max(rows // 10, 1)
    chosen = random.Random(7).sample(range(1, people + 1), min(PEOPLE, people))  # noqa: S311
    conn = await asyncpg.connect(url_of(NAME))
    try:
        out = []
        for number in chosen:
            address = f"Person{number}@Example.com"  # any case finds them
            await conn.execute(
                "UPDATE recipient SET address_hash = $1 WHERE id = $2",
                address_hash(address, secret=SECRET),
                number,
            )
            out.append((number, address))
        await conn.execute("ANALYZE recipient")
        return out
    finally:
        await conn.close()


async def timed(
    label: str, calls: list[Callable[[], Awaitable[int]]], results: dict[str, list[float]]
) -> None:
    times: list[float] = []
    found = 0
    for call in calls:
        started = time.perf_counter()
        found += await call()
        times.append((time.perf_counter() - started) * 1000)
    results[label] = times
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(
        f"{label:<26} n={len(times):>5}  p50 {statistics.median(times):6.2f} ms  "
        f"p99 {p99:6.2f} ms  max {times[-1]:6.2f} ms  ({found / len(times):.1f} mails a page)"
    )


async def measure(rows: int, people: list[tuple[int, str]]) -> None:
    engine = create_engine("postgresql+asyncpg://" + url_of(NAME).split("://", 1)[1], pool_size=1)
    maker = create_sessionmaker(engine)
    results: dict[str, list[float]] = {}

    def by(filters: search.Filters) -> Callable[[], Awaitable[int]]:
        async def call() -> int:
            async with maker() as session:
                page = await search.find_emails(session, filters=filters, limit=50)
                return len(page.emails)

        return call

    try:
        # Warm the pool and the caches a little, as a running service has them.
        for _, address in people[:20]:
            await by(search.Filters(address_hash=address_hash(address, secret=SECRET)))()
        await timed(
            "to (address, any case)",
            [
                by(search.Filters(address_hash=address_hash(a.upper(), secret=SECRET)))
                for _, a in people
            ]
            * REPEAT,
            results,
        )
        await timed(
            "user_id",
            [by(search.Filters(user_id=f"u{n}")) for n, _ in people] * REPEAT,
            results,
        )
        await timed(
            "tag job_id",
            [by(search.Filters(tags={"job_id": f"J-{n % 100000}"})) for n, _ in people] * REPEAT,
            results,
        )
        await timed(
            "to + type password-reset",
            [
                by(
                    search.Filters(
                        address_hash=address_hash(a, secret=SECRET), type="password-reset"
                    )
                )
                for _, a in people
            ]
            * REPEAT,
            results,
        )
    finally:
        await engine.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--keep", action="store_true", help="reuse a database already loaded")
    args = parser.parse_args()
    if not args.keep:
        await create()
        # Alembic's env runs its own event loop: in a thread, beside this one.
        await asyncio.to_thread(migrate, url_of(NAME))
        print(f"loading {args.rows:,} mails ...", flush=True)
        seconds = await load(args.rows)
        print(f"loaded in {seconds:.0f} s", flush=True)
    people = await sample(args.rows)
    await measure(args.rows, people)


if __name__ == "__main__":
    asyncio.run(main())
