"""The report (bench/README.md): the machine, the figures table (now, and before with
``--baseline``), how each figure is measured, every run's details and bench/NOTES.md."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from runner import BENCH, ROOT, Profile, Version, db, fmt


def machine_facts(baseline: Version | None = None) -> list[tuple[str, str]]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    pg = db(
        lambda c: c.fetch(
            "SELECT name, current_setting(name) AS setting FROM pg_settings WHERE name IN "
            "('server_version', 'shared_buffers', 'synchronous_commit', 'fsync', "
            "'max_connections', 'wal_level', 'work_mem') ORDER BY name"
        )
    )
    pg_text = ", ".join(f"{r['name']}={r['setting']}" for r in pg)
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in (
            "fastapi",
            "starlette",
            "uvicorn",
            "uvloop",
            "sqlalchemy",
            "asyncpg",
            "aioboto3",
            "aiobotocore",
            "botocore",
            "pydantic",
        )
    )
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0]  # noqa: S607
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "app"],  # noqa: S607
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.strip()
    return [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("code", f"{commit}{' + uncommitted changes in app/' if dirty else ''}"),
        *([("before", f"{baseline.commit()} ({baseline.root})")] if baseline else []),
        ("CPU", f"{cpu}, {os.cpu_count()} cores"),
        ("memory", f"{int(mem.group(1)) // 1024 // 1024 if mem else '?'} GiB"),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("PostgreSQL", pg_text + " (same machine, loopback TCP)"),
        ("packages", versions),
        ("load generators", f"{wrk.split(' Copyright')[0]}; bench/loadgen.py (aiohttp, uvloop)"),
    ]


def verdict(ok: bool) -> str:
    return "met" if ok else "**short**"


def _shown_python() -> str:
    """The Python that ran the bench, relative to the checkout when it is its .venv."""
    python = Path(sys.executable)
    return str(python.relative_to(ROOT)) if python.is_relative_to(ROOT) else str(python)


@dataclass(frozen=True)
class Row:
    """One line of the figures table. ``key`` is the median that "now vs before" compares;
    ``better`` says which way is better ("" for counts whose goal is zero: no ratio)."""

    number: str
    figure: str
    target: str
    value: str
    ceiling: str
    ratio: str
    ok: bool | None
    key: float = float("nan")
    better: str = "higher"


def count_row(number: str, figure: str, part: dict[str, Any]) -> Row:
    throttled = part["throttled"]
    return Row(
        number,
        figure,
        "0",
        throttled.show(),
        "0",
        "",
        max(throttled.values) == 0,
        throttled.median,
        "",
    )


def change(now: Row, before: Row | None) -> str:
    """now vs before, higher is better: now/before for throughput, before/now for latency."""
    if before is None or not now.better:
        return ""
    a, b = (now.key, before.key) if now.better == "higher" else (before.key, now.key)
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return "—"
    return f"{a / b:.2f}"


def figure_rows(
    results: dict[str, Any], profile: Profile, figures: dict[str, ModuleType]
) -> list[Row]:
    """The table's rows for one version's results (a figure that did not run has none)."""
    return [
        row
        for name, figure in figures.items()
        if results.get(name)
        for row in figure.report_rows(results[name], profile)
    ]


def figure_table(
    results: dict[str, Any], profile: Profile, figures: dict[str, ModuleType]
) -> list[str]:
    rows = figure_rows(results["now"], profile, figures)
    if "before" not in results:
        return [
            "| # | figure | target | tegami | ceiling | ratio | |",
            "|---|---|---|---|---|---|---|",
            *[
                f"| {r.number} | {r.figure} | {r.target} | {r.value} | {r.ceiling} | {r.ratio} "
                f"| {'' if r.ok is None else verdict(r.ok)} |"
                for r in rows
            ],
        ]
    # A figure whose every run failed on the older code has only its details (the errors).
    ran = {name: found for name, found in results["before"].items() if set(found) - {"details"}}
    before = {(r.number, r.figure): r for r in figure_rows(ran, profile, figures)}
    lines = [
        "| # | figure | target | now | before | now vs before | ceiling | ratio | |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        old = before.get((r.number, r.figure))
        lines.append(
            f"| {r.number} | {r.figure} | {r.target} | {r.value} | "
            f"{old.value if old else 'n/a'} | {change(r, old)} | {r.ceiling} | {r.ratio} | "
            f"{'' if r.ok is None else verdict(r.ok)} |"
        )
    return lines


def write_report(
    path: Path,
    argv: Sequence[str],
    profile: Profile,
    results: dict[str, Any],
    took: float,
    figures: dict[str, ModuleType],
    baseline: Version | None = None,
) -> None:
    compared = (
        [
            "",
            f"**now** is this checkout; **before** is {baseline.commit()} "
            f"(`{baseline.root}`), run from the same virtual environment with its own "
            "database. Each run measures both, one after the other, in turns (now first in "
            'even runs); the verdict is now\'s. "now vs before" is now / before for '
            "throughput and before / now for latency (higher is better; — when either is "
            "not a number). Code that predates a setting ignores it: see figures 6 and 7.",
        ]
        if baseline
        else []
    )
    lines = [
        "# tegami benchmarks",
        "",
        "Produced by:",
        "",
        "```sh",
        " ".join([_shown_python(), *map(shlex.quote, argv)]),
        "```",
        "",
        f"Took {took / 60:.1f} minutes. Every figure is the median of {profile.runs} runs, "
        "with the range (min–max) in parentheses; each ceiling was measured in the same "
        "run, on the same machine, with the same load generator. Ratio is figure / "
        "ceiling for throughput, ceiling / figure for latency (1.0 = as good as the bare "
        "minimum; higher is better).",
        *compared,
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in machine_facts(baseline)],
        "",
        "## Figures",
        "",
        *figure_table(results, profile, figures),
    ]
    generator = results.get("generator")
    lines += ["", "## How each figure is measured", ""]
    lines += [figure.how(profile) for figure in figures.values()]
    if generator:
        lines += [
            "",
            "Load generators' own ceilings on this machine (against the fake SES's "
            f"ping): wrk {fmt(generator['wrk_per_second'])} req/s, bench/loadgen.py "
            f"{fmt(generator['loadgen_per_second'])} req/s with 20 connections; the latency "
            "test asks the latter for 100 req/s.",
        ]
    lines += ["", "## Every run", "", "```json"]
    details = {
        label: {
            name: value["details"]
            for name, value in found.items()
            if isinstance(value, dict) and "details" in value
        }
        for label, found in results.items()
        if label in ("now", "before")
    }
    lines.append(json.dumps(details, indent=1, default=str))
    lines += ["```", ""]
    notes = BENCH / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text()]
    path.write_text("\n".join(lines))
