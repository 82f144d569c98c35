"""Figure 1, accept throughput: `tegami serve` against the bare ceiling under wrk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import runner
from report import Row
from runner import (
    CEILING_PORT,
    TEGAMI_PORT,
    Profile,
    Series,
    base_env,
    cpu_meter,
    log,
    reset_tables,
    run_wrk,
    start_ceiling,
    start_tegami,
    wait_quiet,
)

NUMBER = 1


def measure(profile: Profile, logs: Path, first: int = 0) -> dict[str, Any]:
    api_key = runner.ACTIVE.api_key
    tegami, ceiling = Series(), Series()
    details: list[dict[str, Any]] = []
    for run in range(first, first + profile.runs):
        reset_tables()
        order = ("ceiling", "tegami") if run % 2 == 0 else ("tegami", "ceiling")
        for which in order:
            proc = start_ceiling(logs) if which == "ceiling" else start_tegami(logs, worker=False)
            port = CEILING_PORT if which == "ceiling" else TEGAMI_PORT
            url = f"http://127.0.0.1:{port}/emails/verify-email"
            env = base_env()
            env.update(BENCH_API_KEY=api_key, BENCH_PREFIX=f"warm{run}{which}")
            wait_quiet()
            run_wrk(url, "accept.lua", 2, env)  # warm-up: pools, prepared statements
            env["BENCH_PREFIX"] = f"r{run}{which}"
            with cpu_meter({"server": proc}) as cpu:
                result = run_wrk(url, "accept.lua", profile.accept_seconds, env)
            proc.stop()
            result.update({"run": run, "which": which, **{f"cpu_{k}": v for k, v in cpu.items()}})
            details.append(result)
            (ceiling if which == "ceiling" else tegami).add(result["rps"])
            log(f"accept run {run} {which}: {result['rps']:.0f} req/s {result}")
    return {"tegami": tegami, "ceiling": ceiling, "details": details}


def report_rows(accept: dict[str, Any], profile: Profile) -> list[Row]:
    """Its lines of the figures table."""
    rows: list[Row] = []
    ratio = accept["tegami"].median / accept["ceiling"].median
    rows.append(
        Row(
            "1",
            "accept throughput, req/s (20 connections, one process)",
            "ratio ≥ 0.5",
            accept["tegami"].show(),
            accept["ceiling"].show(),
            f"{ratio:.2f}",
            ratio >= 0.5,
            accept["tegami"].median,
        )
    )
    return rows


def how(profile: Profile) -> str:
    return (
        "1. **Accept throughput.** `tegami serve` (one process, `TEGAMI_RUN_WORKER=false`) and "
        "the ceiling (`uvicorn bench.ceiling:app`, one process: pydantic body, one INSERT "
        "through an asyncpg pool of the same size) each get `wrk -t1 -c20` for "
        f"{profile.accept_seconds} s after a 2-s warm-up, `POST /emails/verify-email`, every "
        "request to a new address (bench/wrk/accept.lua). Non-2xx answers are counted and "
        "must be zero."
    )
