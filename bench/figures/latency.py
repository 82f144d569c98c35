"""Figure 2, accept-to-SES latency: open-loop sends at 100/s, timed to their arrival at
the fake SES."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import runner
from report import Row
from runner import (
    BENCH,
    CEILING_PORT,
    FAKE_URL,
    PYTHON,
    ROOT,
    TEGAMI_PORT,
    Proc,
    Profile,
    Series,
    base_env,
    cpu_meter,
    fake,
    log,
    percentile,
    reset_tables,
    start_ceiling,
    start_fake,
    start_tegami,
    wait_for,
    wait_quiet,
)

NUMBER = 2


def _latency_run(
    url: str, seconds: int, prefix: str, api_key: str, logs: Path, server: Proc
) -> dict[str, Any]:
    fake("/_bench/reset")
    wait_quiet()
    out = logs / f"latency-{prefix}.json"
    env = base_env()
    env["BENCH_API_KEY"] = api_key
    with cpu_meter({"server": server}) as cpu:
        _open_loop(url, seconds, prefix, env, out)
    requests = json.loads(out.read_text())["requests"]

    accepted = {r["id"]: r for r in requests if r["status"] == 202}
    wait_for(lambda: fake("/_bench/stats")["sent"] >= len(accepted), timeout=30)
    arrivals = {tag: at for at, tag, _to in fake("/_bench/arrivals")["arrivals"]}
    measured = [r for r in accepted.values() if not r["warmup"]]
    latencies = [(arrivals[r["id"]] - r["sent"]) * 1000 for r in measured if r["id"] in arrivals]
    rtts = [r["rtt"] * 1000 for r in measured]
    lateness = [r["lateness"] * 1000 for r in requests]
    return {
        "requests": len(requests),
        "accepted": len(accepted),
        "measured": len(measured),
        "missing_at_ses": len(measured) - len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies) if latencies else float("nan"),
        "accept_p50_ms": percentile(rtts, 50),
        "accept_p99_ms": percentile(rtts, 99),
        "generator_lateness_p99_ms": percentile(lateness, 99),
        **{f"cpu_{name}": value for name, value in cpu.items()},
    }


def _open_loop(url: str, seconds: int, prefix: str, env: dict[str, str], out: Path) -> None:
    subprocess.run(  # noqa: S603
        [
            PYTHON,
            str(BENCH / "loadgen.py"),
            "open",
            "--url",
            url,
            "--rate",
            "100",
            "--seconds",
            str(seconds),
            "--warmup",
            "2",
            "--prefix",
            prefix,
            "--out",
            str(out),
        ],
        env=env,
        check=True,
        cwd=ROOT,
    )


def measure(profile: Profile, logs: Path, first: int = 0) -> dict[str, Any]:
    api_key = runner.ACTIVE.api_key
    fake_ses = start_fake(logs, rate=1000)
    series = {name: Series() for name in ("p50", "p99", "floor_p50", "floor_p99")}
    details: list[dict[str, Any]] = []
    try:
        # Each run: tegami, then the floor (the ceiling app forwarding to the same fake SES).
        sides = (
            ("tegami", "", "t", lambda: start_tegami(logs, worker=True),
             f"http://127.0.0.1:{TEGAMI_PORT}/emails/verify-email"),
            ("floor", "floor_", "c", lambda: start_ceiling(logs, CEILING_SES_URL=FAKE_URL),
             f"http://127.0.0.1:{CEILING_PORT}/forward/emails/verify-email"),
        )  # fmt: skip
        for run in range(first, first + profile.runs):
            reset_tables()
            for which, series_prefix, tag, start, url in sides:
                proc = start()
                result = _latency_run(
                    url, profile.latency_seconds, f"{tag}{run}", api_key, logs, proc
                )
                proc.stop()
                series[f"{series_prefix}p50"].add(result["p50_ms"])
                series[f"{series_prefix}p99"].add(result["p99_ms"])
                details.append({"run": run, "which": which, **result})
                log(f"latency run {run} {which}: {result}")
    finally:
        fake_ses.stop()
    return {**series, "details": details}


def report_rows(latency: dict[str, Any], profile: Profile) -> list[Row]:
    """Its lines of the figures table."""
    rows: list[Row] = []
    for q, target in (("p50", 10), ("p99", 50)):
        figure, floor = latency[q].median, latency[f"floor_{q}"].median
        rows.append(
            Row(
                "2",
                f"accept-to-SES latency {q}, ms (100 req/s)",
                f"≤ {target}",
                latency[q].show(1),
                latency[f"floor_{q}"].show(1),
                f"{floor / figure:.2f}",
                figure <= target,
                figure,
                "lower",
            )
        )
    return rows


def how(profile: Profile) -> str:
    return (
        "2. **Accept-to-SES latency.** `tegami serve` with its worker, fake SES at 0 ms "
        "(MaxSendRate 1,000), load from bench/loadgen.py open loop at exactly 100 req/s "
        f"for {profile.latency_seconds} s after 2 s of warm-up: from the moment the request is "
        "sent to the moment the fake SES parsed the SendEmail carrying that mail's "
        "`tegami_id` tag (both clocks are the same machine's). The floor is bench/ceiling.py "
        "answering after one INSERT and then posting a SendEmail straight to the fake."
    )
