"""Figure 9, a year of mail: bench/year.py, once, in its own database."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import runner
from report import Row
from runner import (
    ADMIN_URL,
    BENCH,
    DB_NAME,
    PYTHON,
    Profile,
    Series,
    base_env,
    log,
    wait_quiet,
)

NUMBER = 9

# The send path is said to keep its latency when a year of mail at most doubles it (one run
# on this shared machine moves by a fifth or more); blocked, it would wait for seconds.
YEAR_SLOWER_AT_MOST = 2.0
YEAR_DURING_P99_MS = 100.0
YEAR_DELETE_SECONDS = 600.0  # a day's worth within one purge interval
YEAR_GROWTH_AT_MOST = 1.05  # a day deleted, vacuumed, a day added: the same size


def measure(profile: Profile, logs: Path, first: int = 0) -> dict[str, Any]:
    """bench/year.py in its own database, once (its load is most of the time): the send path
    on empty and on loaded tables, and retention's delete of a day's worth while sending."""
    rows = int(os.environ.get("BENCH_YEAR_ROWS", profile.year_rows))
    env = base_env()
    env.update(BENCH_ADMIN_URL=ADMIN_URL, BENCH_YEAR_ROWS=str(rows))
    env.setdefault("BENCH_YEAR_DB", f"{DB_NAME}_year")
    wait_quiet()
    with (logs / "year.log").open("w") as errors:
        done = subprocess.run(  # noqa: S603
            [PYTHON, str(BENCH / "year.py")],
            env=env,
            cwd=runner.ACTIVE.root,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            check=True,
        )
    found = json.loads(done.stdout.strip().splitlines()[-1])
    log(f"year: {json.dumps(found, default=str)}")
    return year_figures(found, run=first)


def year_figures(found: dict[str, Any], *, run: int = 0) -> dict[str, Any]:
    """Figure 9's series from bench/year.py's JSON (also for a saved run's JSON)."""
    out: dict[str, Any] = {"details": [{"run": run, **found}]}
    for phase in ("empty", "loaded", "during", "vacuum"):
        timings = found["vacuum"]["send_path"] if phase == "vacuum" else found[phase]
        for step, figures in timings.items():
            for q in ("p50", "p99"):
                out[f"{phase}_{step}_{q}"] = Series([figures[f"{q}_ms"]])
    out["purge_seconds"] = Series([found["purge_seconds"]])
    out["vacuum_seconds"] = Series([found["vacuum"]["seconds"]])
    out["params_seconds"] = Series([found["params_seconds"]])
    out["params_without_index_seconds"] = Series([found["params_without_index_seconds"]])
    for moment in ("before_delete", "after_delete", "after_next_day"):
        sizes = found[f"sizes_{moment}"]
        out[f"mb_{moment}"] = Series([sum(t["total_mb"] for t in sizes.values())])
    out["rows"] = found["rows"]
    out["deleted"] = found["purged"]["messages"]
    return out


def report_rows(year: dict[str, Any], profile: Profile) -> list[Row]:
    """Figure 9: the send path with a year of mail kept, against empty tables (the ceiling
    column; ratio loaded / empty, lower is better), and retention's delete."""
    if not year or "purge_seconds" not in year:
        return []
    kept = f"{year['rows']:,} mails kept"
    rows: list[Row] = []
    names = {"accept": "accept", "claim": "claim", "check": "pre-send check"}
    for step, name in names.items():
        for q in ("p50", "p99"):
            loaded, empty = year[f"loaded_{step}_{q}"], year[f"empty_{step}_{q}"]
            ratio = loaded.median / empty.median
            rows.append(
                Row(
                    "9",
                    f"{name} {q}, ms ({kept}; ceiling: empty tables)",
                    f"ratio ≤ {YEAR_SLOWER_AT_MOST:g}",
                    loaded.show(2),
                    f"{empty.show(2)} empty",
                    f"{ratio:.2f}",
                    ratio <= YEAR_SLOWER_AT_MOST,
                    loaded.median,
                    "lower",
                )
            )
    for step, name in names.items():
        during, loaded = year[f"during_{step}_p99"], year[f"loaded_{step}_p99"]
        rows.append(
            Row(
                "9",
                f"{name} p99 while retention deletes a day ({year['deleted']:,} mails), ms",
                f"≤ {YEAR_DURING_P99_MS:g}",
                during.show(2),
                f"{loaded.show(2)} loaded",
                f"{during.median / loaded.median:.2f}",
                during.median <= YEAR_DURING_P99_MS,
                during.median,
                "lower",
            )
        )
    purge = year["purge_seconds"]
    rows.append(
        Row(
            "9",
            f"retention pass deleting a day ({year['deleted']:,} mails and their events), s",
            f"≤ {YEAR_DELETE_SECONDS:g}",
            purge.show(1),
            "",
            "",
            purge.median <= YEAR_DELETE_SECONDS,
            purge.median,
            "lower",
        )
    )
    params, scan = year["params_seconds"], year["params_without_index_seconds"]
    rows.append(
        Row(
            "9",
            "retention's look for spent link params, s (ceiling: the same without its index)",
            "",
            params.show(3),
            f"{scan.show(2)} without",
            f"{params.median / scan.median:.3f}",
            None,
            params.median,
            "lower",
        )
    )
    before, after = year["mb_before_delete"], year["mb_after_next_day"]
    growth = after.median / before.median
    rows.append(
        Row(
            "9",
            "message + message_event, MB: a day deleted, vacuumed, the next day added "
            "(ceiling: before the delete)",
            f"ratio ≤ {YEAR_GROWTH_AT_MOST:g}",
            after.show(0),
            f"{before.show(0)} before",
            f"{growth:.3f}",
            growth <= YEAR_GROWTH_AT_MOST,
            after.median,
            "lower",
        )
    )
    return rows


def how(profile: Profile) -> str:
    return (
        f"9. **A year of mail.** bench/year.py, once, in its own database: {profile.year_rows:,} "
        "mails (`BENCH_YEAR_ROWS`) with three events each, a tenth of them a day past "
        "retention and the rest over 400 days, loaded by `INSERT … SELECT` from "
        "`generate_series` with every index in place, then `VACUUM ANALYZE`. The send path "
        "(`service.accept` for 14 mails, then `outbox.claim`, `outbox.check_before_send`, "
        "`outbox.finish`, four times a second, on one connection) for 30 s on the empty "
        "tables and 30 s on the loaded ones; then `app.retention.service.purge` with the send "
        "path going on its own connection; then autovacuum's pass (run by the bench, "
        "throttled as autovacuum is, where the server has autovacuum off) and the next "
        "day's mail (as many as were deleted). Sizes are `pg_total_relation_size`. The "
        "ratio is loaded / empty (lower is better)."
    )
