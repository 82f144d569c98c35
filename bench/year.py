"""A year of mail: the send path against 10 million mails, and retention deleting a day's worth.

    .venv/bin/python bench/year.py                          # 10 million mails, once
    BENCH_YEAR_ROWS=200000 .venv/bin/python bench/year.py   # a quick look
    .venv/bin/python bench/run.py --only year               # the same, as figure 9

At SES's default 14/s PRO WORKS may send a million mails a day, and retention keeps 400 days.
In its own database (``tegami_bench_year``, dropped and made again), one run measures:

1. the send path on empty tables: the real accept (``service.accept``: the one statement the
   API runs), the claim (``outbox.claim``), the check right before SendEmail
   (``outbox.check_before_send``) and the record of the outcome (``outbox.finish``), paced
   as a worker and an API would run them;
2. the same after loading ``BENCH_YEAR_ROWS`` mails (default 10 million) with their history
   (accepted, sent, delivered or bounced: three events each): a tenth of them one day past
   retention (the day a purge deletes: a million mails at full size), the rest spread over
   400 days, with set-based SQL (``generate_series``, ``INSERT … SELECT``), every index and
   constraint in place, then ``VACUUM ANALYZE`` (what autovacuum does over a year);
3. the real retention pass (``app.retention.service.purge``, its batches of 1,000) while the send
   path keeps going: the send path's latencies during the delete, how long the delete took,
   and the tables' size before and after (``pg_total_relation_size``);
4. bloat: autovacuum's pass over the tables (with the send path going; on a server with
   autovacuum off, the bench runs the same VACUUM throttled as autovacuum would), the next
   day's mail loaded (as many as were deleted), and the tables' size again. Space the delete freed
   is reused only after a vacuum; at the default ``autovacuum_vacuum_scale_factor`` (0.2) a
   day's delete (a 400th of the table) would wait 80 days for one.

Writes a JSON of everything to stdout's last line (``run.py`` reads it) and logs as it goes.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ADMIN_URL = os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_NAME = os.environ.get("BENCH_YEAR_DB", "tegami_bench_year")
DB_URL = ADMIN_URL.rsplit("/", 1)[0] + "/" + DB_NAME
ROWS = int(os.environ.get("BENCH_YEAR_ROWS", "10000000"))
CHUNK = 200_000  # mails per INSERT … SELECT (each its own transaction)
PHASE_SECONDS = float(os.environ.get("BENCH_YEAR_PHASE_SECONDS", "30"))
VACUUM_WAIT = float(os.environ.get("BENCH_YEAR_VACUUM_WAIT", "600"))
RETENTION_DAYS = 400
# The send path's pace: 14 mails accepted, then one claim of them, its check and its finish,
# four times a second (56 mails/s, four times SES's default rate, for more samples).
MAILS_PER_ROUND = 14
ROUND_SECONDS = 0.25
ADDRESS_SECRET = "bench-address-hash-secret-0123456789"  # noqa: S105 (bench only)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] year: {message}", file=sys.stderr, flush=True)


def settings() -> Any:
    from app.config import Settings

    return Settings(
        database_url=DB_URL,
        public_base_url="https://mail.proworks.jp",
        unsubscribe_secret=["bench-unsubscribe-secret-0123456789"],
        address_hash_secret=ADDRESS_SECRET,
        link_hosts=["proworks.jp", "*.proworks.jp"],
        sender_postal_address="〒100-0001 東京都千代田区千代田1-1",
        sender_contact="support@proworks.jp",
    )


# -- the load ------------------------------------------------------------------------------

# Row $1..$2 of $3; the first $4 rows are the day past retention (401 to 400 days old plus an
# hour), the rest spread evenly over the span $6 up to a minute ago, oldest first, as they were
# accepted; $8 keeps idempotency keys of two loads apart. Mail of the last hour still holds
# its link params (retention drops them after).
# 70 % verify-email, 10 % each other kind; 3 % hard-bounced, 1 % failed, the rest delivered.
# Recipients: a fifth as many as mails ($5, ids after $9), each mailed about five times.
_LOAD = """
WITH src AS (
    SELECT i, gen_random_uuid() AS id,
        CAST($9 AS bigint) + 1 + (i * 7919) % CAST($5 AS bigint) AS r,
        CASE WHEN i < $4
            THEN now() - interval '401 days' + (i / CAST($4 AS float8)) * interval '23 hours'
            ELSE now() - interval '1 minute'
                - (1 - (i - $4) / CAST(GREATEST($3 - $4, 1) AS float8)) * CAST($6 AS interval)
        END AS created_at,
        CASE WHEN i % 10 < 7 THEN 'verify-email' WHEN i % 10 = 7 THEN 'password-reset'
            WHEN i % 10 = 8 THEN 'email-change' ELSE 'matching-notification' END AS kind,
        CASE WHEN i % 100 < 3 THEN 'bounced' WHEN i % 100 = 3 THEN 'failed'
            ELSE 'delivered' END AS status
    FROM generate_series(CAST($1 AS bigint), CAST($2 AS bigint) - 1) AS i
),
inserted AS (
    INSERT INTO message (id, kind, category, recipient_id, to_address, user_id, params,
        status, attempts, next_attempt_at, expires_at, ses_message_id, api_key_id,
        idempotency_key, request_hash, last_error, created_at, updated_at, sent_at)
    SELECT id, kind,
        CASE WHEN kind = 'matching-notification' THEN 'matching' ELSE 'account' END,
        r, 'year-r' || r || '@example.com', 'user-' || r,
        CASE WHEN created_at > now() - interval '1 hour' THEN jsonb_build_object(
            'url', 'https://proworks.jp/l?token=' || md5(id::text)) END,
        status, 1, created_at,
        CASE WHEN kind <> 'matching-notification' THEN created_at + interval '1 hour' END,
        CASE WHEN status <> 'failed'
            THEN md5(id::text) || '-' || id::text || '-000000' END,
        $7, CASE WHEN i % 2 = 0 THEN $8 || i END,
        sha256(CAST(id::text AS bytea)),
        CASE WHEN status = 'failed' THEN 'MessageRejected' END,
        created_at, created_at + interval '2 seconds',
        CASE WHEN status <> 'failed' THEN created_at + interval '1 second' END
    FROM src ORDER BY id
    RETURNING id, status, ses_message_id, created_at
)
INSERT INTO message_event (message_id, kind, detail, cause, feedback, created_at)
SELECT inserted.id, e.kind, e.detail, e.cause, e.feedback, inserted.created_at + e.after
FROM inserted CROSS JOIN LATERAL (VALUES
    ('accepted', NULL, 'api_key:bench', NULL, interval '0 seconds'),
    (CASE WHEN inserted.status = 'failed' THEN 'failed' ELSE 'sent' END,
        COALESCE(inserted.ses_message_id, 'MessageRejected'), 'worker', NULL,
        interval '1 second'),
    (inserted.status, NULL, 'sns', CASE WHEN inserted.status = 'bounced'
        THEN 'hard_bounce' END, interval '5 seconds')
) AS e(kind, detail, cause, feedback, after)
WHERE e.kind <> 'failed' OR inserted.status <> 'failed' OR e.after < interval '2 seconds'
ORDER BY inserted.id
"""

_RECIPIENTS = """
INSERT INTO recipient (id, address_hash, address, user_id, created_at, updated_at)
OVERRIDING SYSTEM VALUE
SELECT r, sha256(CAST('year-r' || r AS bytea)), 'year-r' || r || '@example.com', 'user-' || r,
    now() - interval '401 days', now() - interval '401 days'
FROM generate_series(CAST($1 AS bigint), CAST($2 AS bigint) - 1) AS r
"""


async def load(
    conn: asyncpg.Connection,
    *,
    rows: int,
    key_id: int,
    expired: int,
    span: timedelta,
    prefix: str,
    recipients: tuple[int, int] | None = None,
) -> tuple[float, tuple[int, int]]:
    """``rows`` mails (``expired`` of them a day past retention, the rest over ``span``) and
    their events; their recipients too, unless given (first id less one, how many)."""
    started = time.monotonic()
    if recipients is None:
        base = await conn.fetchval("SELECT COALESCE(max(id), 0) FROM recipient")
        recipients = (base, max(rows // 5, 1000))
        for lo in range(base + 1, base + recipients[1] + 1, CHUNK * 5):
            await conn.execute(_RECIPIENTS, lo, min(lo + CHUNK * 5, base + recipients[1] + 1))
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence('recipient', 'id'), $1)", base + recipients[1]
        )
    base, count = recipients
    for lo in range(0, rows, CHUNK):
        await conn.execute(
            _LOAD, lo, min(lo + CHUNK, rows), rows, expired, count, span, key_id, prefix, base
        )
        done = min(lo + CHUNK, rows)
        if done % (CHUNK * 5) == 0 or done == rows:
            elapsed = time.monotonic() - started
            log(f"loaded {done:,} of {rows:,} mails in {elapsed:.0f} s")
    return time.monotonic() - started, recipients


# -- the send path -------------------------------------------------------------------------


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


async def send_path(
    conn: asyncpg.Connection, *, until: asyncio.Event | None, seconds: float, label: str
) -> dict[str, list[float]]:
    """Accept, claim, check, finish, paced; until ``until`` is set (or ``seconds`` pass)."""
    from app.api_keys import Caller
    from app.emails import lifecycle, outbox
    from app.emails import service as emails
    from app.emails.catalog import EMAIL_KINDS
    from app.models import ApiKeyScope, MailType

    config = settings()
    caller = Caller(key_id=KEY_ID, name="bench", scope=ApiKeyScope.APP)
    kind = EMAIL_KINDS[MailType.VERIFY_EMAIL]
    times: dict[str, list[float]] = {"accept": [], "claim": [], "check": [], "finish": []}
    deadline = time.monotonic() + seconds
    rounds = 0
    while (until is None and time.monotonic() < deadline) or (until and not until.is_set()):
        round_started = time.monotonic()
        for n in range(MAILS_PER_ROUND):
            address = f"{label}-{rounds}-{n}@example.com"
            start = time.perf_counter()
            await emails.accept(
                conn,
                kind=kind,
                to=address,
                params={"verification_url": f"https://proworks.jp/verify?token={uuid.uuid4().hex}"},
                user_id=None,
                caller=caller,
                idempotency_key=f"{label}-{rounds}-{n}",
                settings=config,
            )
            times["accept"].append(_ms(start))
        start = time.perf_counter()
        claim = await outbox.claim(
            conn, limit=MAILS_PER_ROUND, rate=1_000_000.0, horizon=1.0, lease=60.0, probe=30.0
        )
        times["claim"].append(_ms(start))
        start = time.perf_counter()
        await outbox.check_before_send(conn, mails=claim.mails, max_age=lifecycle.MAX_RETRY_AGE)
        times["check"].append(_ms(start))
        results = [
            outbox.Change(m.id, lifecycle.sent(f"year-{m.id}"), m.attempt) for m in claim.mails
        ]
        start = time.perf_counter()
        await outbox.finish(conn, results=results)
        times["finish"].append(_ms(start))
        rounds += 1
        await asyncio.sleep(max(0.0, ROUND_SECONDS - (time.monotonic() - round_started)))
    return times


def summary(times: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, values in times.items():
        ordered = sorted(values)
        if not ordered:
            continue
        out[name] = {
            "n": len(ordered),
            "p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
            "max_ms": round(ordered[-1], 2),
        }
    return out


# -- sizes and vacuum ----------------------------------------------------------------------

_SIZES = """
SELECT c.relname, pg_total_relation_size(c.oid) AS total, pg_relation_size(c.oid) AS heap,
    pg_indexes_size(c.oid) AS indexes, s.n_live_tup, s.n_dead_tup,
    s.autovacuum_count, s.vacuum_count, s.last_autovacuum,
    -- the dead rows at which autovacuum takes the table (its threshold + scale x rows)
    COALESCE((SELECT CAST(split_part(o, '=', 2) AS float8) FROM unnest(c.reloptions) AS o
              WHERE o LIKE 'autovacuum_vacuum_threshold=%'),
             CAST(current_setting('autovacuum_vacuum_threshold') AS float8))
    + COALESCE((SELECT CAST(split_part(o, '=', 2) AS float8) FROM unnest(c.reloptions) AS o
                WHERE o LIKE 'autovacuum_vacuum_scale_factor=%'),
               CAST(current_setting('autovacuum_vacuum_scale_factor') AS float8))
      * GREATEST(c.reltuples, 0) AS vacuum_at_dead
FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.relname IN ('message', 'message_event') ORDER BY c.relname
"""


async def sizes(conn: asyncpg.Connection) -> dict[str, Any]:
    return {
        row["relname"]: {
            "total_mb": round(row["total"] / 2**20, 1),
            "heap_mb": round(row["heap"] / 2**20, 1),
            "indexes_mb": round(row["indexes"] / 2**20, 1),
            "live": row["n_live_tup"],
            "dead": row["n_dead_tup"],
            "autovacuums": row["autovacuum_count"],
            "vacuum_at_dead": round(row["vacuum_at_dead"]),
        }
        for row in await conn.fetch(_SIZES)
    }


async def vacuum_pass(conn: asyncpg.Connection, before: dict[str, Any]) -> dict[str, Any]:
    """Autovacuum's pass after the delete, with the send path going. A server with autovacuum
    off (the shared test server here) gets it from the bench: a plain VACUUM of each table
    whose dead rows are past autovacuum's threshold, throttled as autovacuum is (2 ms per 200
    cost units); otherwise the bench waits (up to VACUUM_WAIT s) for autovacuum to be through."""
    now = await sizes(conn)
    due = [table for table, found in now.items() if found["dead"] > found["vacuum_at_dead"]]
    out: dict[str, Any] = {
        "server_autovacuum": await conn.fetchval("SHOW autovacuum"),
        "due": due,
        # What PostgreSQL's default scale factor (0.2) would wait for, for comparison.
        "default_vacuum_at_dead": {
            table: round(50 + 0.2 * (found["live"] + found["dead"])) for table, found in now.items()
        },
    }
    done = asyncio.Event()
    sender = await asyncpg.connect(DB_URL)
    sending = asyncio.create_task(send_path(sender, until=done, seconds=0, label="vacuum"))
    started = time.monotonic()
    try:
        if out["server_autovacuum"] == "on":
            while time.monotonic() - started < VACUUM_WAIT:
                found = await sizes(conn)
                busy = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_progress_vacuum p JOIN pg_class c "
                    "ON c.oid = p.relid WHERE c.relname IN ('message', 'message_event')"
                )
                if not busy and all(
                    found[t]["autovacuums"] > before[t]["autovacuums"] for t in due
                ):
                    break
                await asyncio.sleep(2)
            else:
                out["timed_out"] = True
        else:
            await conn.execute("SET vacuum_cost_delay = '2ms'; SET vacuum_cost_limit = 200")
            for table in due:
                await conn.execute(f"VACUUM {table}")
    finally:
        out["seconds"] = round(time.monotonic() - started, 1)
        done.set()
        out["send_path"] = summary(await sending)
        await sender.close()
    return out


# -- the run -------------------------------------------------------------------------------

KEY_ID = 0


async def prepare() -> None:
    global KEY_ID  # the bench's one API key, made here once
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{DB_NAME}"')
    finally:
        await admin.close()
    from app.db import migrate

    await asyncio.to_thread(migrate, DB_URL)
    conn = await asyncpg.connect(DB_URL)
    try:
        KEY_ID = await conn.fetchval(
            "INSERT INTO api_key (name, key_hash, scope) VALUES ('bench', $1, 'app') RETURNING id",
            b"year-bench-key-hash",
        )
    finally:
        await conn.close()


async def main_async(rows: int) -> dict[str, Any]:
    from app.db import create_engine
    from app.emails import outbox
    from app.retention.service import purge

    await prepare()
    conn = await asyncpg.connect(DB_URL)
    result: dict[str, Any] = {"rows": rows, "phase_seconds": PHASE_SECONDS}
    try:
        result["reloptions"] = {
            r["relname"]: r["reloptions"]
            for r in await conn.fetch(
                "SELECT relname, reloptions FROM pg_class "
                "WHERE relname IN ('message', 'message_event')"
            )
        }
        log("send path on empty tables")
        result["empty"] = summary(
            await send_path(conn, until=None, seconds=PHASE_SECONDS, label="empty")
        )
        log(f"empty: {result['empty']}")
        result["load_seconds"], recipients = await load(
            conn,
            rows=rows,
            key_id=KEY_ID,
            expired=rows // 10,
            span=timedelta(days=400),
            prefix="y-",
        )
        started = time.monotonic()
        await conn.execute("VACUUM ANALYZE recipient, message, message_event")
        result["vacuum_analyze_seconds"] = time.monotonic() - started
        result["sizes_loaded"] = await sizes(conn)
        log(f"loaded: {result['sizes_loaded']}")
        log("send path on loaded tables")
        result["loaded"] = summary(
            await send_path(conn, until=None, seconds=PHASE_SECONDS, label="loaded")
        )
        log(f"loaded: {result['loaded']}")

        # Retention's first statement, alone: through ix_message_with_params, and as it ran
        # before that index (a scan of every mail kept), which is what the planner does when
        # it may use no index.
        engine = create_engine(DB_URL.replace("postgresql://", "postgresql+asyncpg://"))
        for name, setup in (
            ("params_without_index_seconds", "SET LOCAL enable_indexscan = off"),
            ("params_seconds", "SELECT 1"),
        ):
            async with engine.begin() as sa_conn:
                await sa_conn.exec_driver_sql(setup)
                await sa_conn.exec_driver_sql(
                    "SET LOCAL enable_bitmapscan = " + ("off" if "off" in setup else "on")
                )
                started = time.monotonic()
                await outbox.drop_spent_params(sa_conn)
                result[name] = time.monotonic() - started
        await engine.dispose()
        log(
            f"params: {result['params_without_index_seconds']:.1f} s without the index, "
            f"{result['params_seconds']:.2f} s with it"
        )

        result["sizes_before_delete"] = await sizes(conn)
        log("retention purge while sending")
        engine = create_engine(DB_URL.replace("postgresql://", "postgresql+asyncpg://"))
        done = asyncio.Event()
        sender = await asyncpg.connect(DB_URL)
        sending = asyncio.create_task(send_path(sender, until=done, seconds=0, label="during"))
        started = time.monotonic()
        try:
            purged = await purge(engine, retention_days=RETENTION_DAYS)
        finally:
            result["purge_seconds"] = time.monotonic() - started
            done.set()
            during = await sending
            await sender.close()
            await engine.dispose()
        result["purged"] = {"messages": purged.messages, "params": purged.params}
        result["during"] = summary(during)
        result["sizes_after_delete"] = await sizes(conn)
        log(f"purged {purged} in {result['purge_seconds']:.0f} s; during: {result['during']}")

        result["vacuum"] = await vacuum_pass(conn, result["sizes_before_delete"])
        result["sizes_after_vacuum"] = await sizes(conn)
        log(f"vacuum: {result['vacuum']}; the next day's mail loading")
        # The next day's mail: as many as were deleted, accepted in the last day.
        result["refill_seconds"], _ = await load(
            conn,
            rows=purged.messages,
            key_id=KEY_ID,
            expired=0,
            span=timedelta(days=1),
            prefix="n-",
            recipients=recipients,
        )
        result["sizes_after_next_day"] = await sizes(conn)
        log(f"after the next day: {result['sizes_after_next_day']}")
    finally:
        await conn.close()
    return result


def run(rows: int = ROWS) -> dict[str, Any]:
    return asyncio.run(main_async(rows))


if __name__ == "__main__":
    import uvloop

    uvloop.install()
    print(json.dumps(run(), default=str))
