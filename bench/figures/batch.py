"""Figure 8, accepted mails per second: batches against single sends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import runner
from report import Row
from runner import (
    BATCH_SIZE,
    TEGAMI_PORT,
    Profile,
    Series,
    base_env,
    cpu_meter,
    db,
    log,
    reset_tables,
    run_wrk,
    start_tegami,
    wait_quiet,
)

NUMBER = 8


def _message_rows() -> int:
    return int(db(lambda c: c.fetchval("SELECT count(*) FROM message")))


def measure(profile: Profile, logs: Path, first: int = 0) -> dict[str, Any]:
    """One `tegami serve`, the same wrk load, single sends then batches (in turns): accepted
    mails per second, counted in the database."""
    single, batch = Series(), Series()
    details: list[dict[str, Any]] = []
    url = f"http://127.0.0.1:{TEGAMI_PORT}/emails/verify-email"
    for run in range(first, first + profile.runs):
        reset_tables()
        proc = start_tegami(logs, worker=False)
        order = ("single", "batch") if run % 2 == 0 else ("batch", "single")
        for which in order:
            target, script = (
                (url, "accept.lua") if which == "single" else (url + "/batch", "batch.lua")
            )
            env = base_env()
            env.update(
                BENCH_API_KEY=runner.ACTIVE.api_key,
                BENCH_PREFIX=f"bwarm{run}{which}",
                BENCH_BATCH=str(BATCH_SIZE),
            )
            wait_quiet()
            run_wrk(target, script, 2, env)  # warm-up
            env["BENCH_PREFIX"] = f"b{run}{which}"
            before = _message_rows()
            with cpu_meter({"server": proc}) as cpu:
                result = run_wrk(target, script, profile.accept_seconds, env)
            mails = _message_rows() - before
            per_second = mails / profile.accept_seconds
            result.update(
                {
                    "run": run,
                    "which": which,
                    "mails": mails,
                    "mails_per_second": per_second,
                    **{f"cpu_{k}": v for k, v in cpu.items()},
                }
            )
            details.append(result)
            (single if which == "single" else batch).add(per_second)
            log(f"batch run {run} {which}: {per_second:.0f} mails/s {result}")
        proc.stop()
    return {"single": single, "batch": batch, "details": details}


def report_rows(batched: dict[str, Any], profile: Profile) -> list[Row]:
    """Its lines of the figures table."""
    if not (batched["batch"].values):
        return []
    rows: list[Row] = []
    ratio = batched["batch"].median / batched["single"].median
    rows.append(
        Row(
            "8",
            f"accepted mails/s through batches of {BATCH_SIZE} (20 connections, one process)",
            "> single sends",
            batched["batch"].show(),
            f"{batched['single'].show()} single sends",
            f"{ratio:.2f}",
            ratio > 1.0,
            batched["batch"].median,
        )
    )
    return rows


def how(profile: Profile) -> str:
    return (
        f"8. **Batches.** One `tegami serve` (`TEGAMI_RUN_WORKER=false`); `wrk -t1 -c20` for "
        f"{profile.accept_seconds} s after a 2-s warm-up, once with single sends (as in 1) "
        f"and once with `POST /emails/verify-email/batch` of {BATCH_SIZE} mails "
        "(bench/wrk/batch.lua), in turns, every mail to a new address. The figure is the "
        "rows `message` gained, per second; the ceiling column holds the single sends of the "
        "same run, and the ratio is batch / single. Code without batches answers 404 (n/a)."
    )
