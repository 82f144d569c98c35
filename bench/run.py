"""Run every benchmark, several times each, and write bench/README.md.

    .venv/bin/python bench/run.py            # the full set (about 40 minutes)
    .venv/bin/python bench/run.py --quick    # a small version (about 10 minutes)
    .venv/bin/python bench/run.py --only accept,sns --output /tmp/partial.md
    .venv/bin/python bench/run.py --only priority,replicas --baseline ../tegami-old --runs 2

Figures (``--only``): accept, latency, drain, rate, sns, priority (password resets behind a
matching backlog at 14/s), replicas (four workers at 1/s: mails sent twice), batch, year (the
send path and retention with a year of mail kept: bench/year.py, once, whatever ``--runs``;
``BENCH_YEAR_ROWS`` makes it smaller). ``--baseline DIR``
also measures the checkout in DIR (a ``git worktree`` of an older commit, run from this
virtual environment with ``PYTHONPATH=DIR``, in its own database ``tegami_bench_base``), in
turns with this one, and reports it as "before" beside "now".

Run it with the Python of tegami's virtual environment (it imports the app to shape rows and
sign SNS messages, and starts ``tegami`` from the same environment). Needs ``wrk`` (Debian
package) and a PostgreSQL where it may create and drop its own database ``tegami_bench``
(``BENCH_ADMIN_URL``, default ``postgresql://postgres@127.0.0.1:5432/postgres``; and
``tegami_bench_base`` with ``--baseline``). Only loopback traffic; ports 18101-18103 and
19101.

The figures are bench/figures/, a module each (a new figure is a new module there); what they
share is bench/runner.py, the report bench/report.py.

Each figure is reported beside its ceiling, measured in the same run on the same machine: a
bare FastAPI + asyncpg endpoint (bench/ceiling.py) for the HTTP paths, a bare aiohttp sender
for the fake SES (tests/fake_ses.py, the tests' own), and SES's MaxSendRate for the rate test.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from figures import discover
from report import write_report
from runner import (
    BENCH,
    DB_NAME,
    FULL,
    NOW,
    QUICK,
    ROOT,
    Profile,
    Version,
    create_database,
    log,
    measure_generators,
    measure_versions,
    stop_all,
)

FIGURES = discover()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small version, a few minutes")
    parser.add_argument("--runs", type=int, help="runs per benchmark (default 3, quick 2)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(FIGURES)}")
    parser.add_argument("--output", type=Path, help="report file (default bench/README.md)")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also measure the checkout in DIR (a git worktree of an older commit), in "
        "turns with this one, and report it as 'before'",
    )
    args = parser.parse_args()
    profile = QUICK if args.quick else FULL
    if args.runs:
        if args.runs < 1:
            parser.error("--runs must be at least 1")
        profile = Profile(**{**profile.__dict__, "runs": args.runs})
    only = tuple(args.only.split(",")) if args.only else tuple(FIGURES)
    unknown = [name for name in only if name not in FIGURES]
    if unknown:
        parser.error(f"unknown figure {', '.join(unknown)}; choose from {','.join(FIGURES)}")
    versions = [NOW]
    baseline = None
    if args.baseline:
        root = args.baseline.resolve()
        if not (root / "app" / "cli.py").is_file():
            parser.error(f"--baseline {args.baseline}: not a tegami checkout (no app/cli.py)")
        if root == ROOT:
            parser.error("--baseline is this checkout; give an older one")
        baseline = Version("before", root, f"{DB_NAME}_base")
        versions.append(baseline)
    if shutil.which("wrk") is None:  # the load generators' ceiling uses it, every run
        parser.error("wrk not found: install it (Debian: apt-get install wrk)")
    output = args.output or BENCH / "README.md"
    started = time.monotonic()
    logs = Path(tempfile.mkdtemp(prefix="tegami-bench-"))
    log(f"logs in {logs}")
    results: dict[str, Any] = {version.label: {} for version in versions}
    try:
        for version in versions:
            create_database(version)
        results["generator"] = measure_generators(logs)
        log(f"generators: {results['generator']}")
        for name, figure in FIGURES.items():
            if name in only:
                runs = measure_versions(name, figure.measure, profile, logs, versions)
                for label, found in runs.items():
                    results[label][name] = found
    finally:
        stop_all()
    argv = ["bench/run.py", *sys.argv[1:]]
    took = time.monotonic() - started
    write_report(output, argv, profile, results, took, FIGURES, baseline)
    log(f"report written to {output}")
    print(output.read_text().split("## How each figure")[0])


if __name__ == "__main__":
    main()
