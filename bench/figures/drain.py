"""Figure 3, drain: a worker sending a COPYed backlog, beside raw HTTP and aioboto3 alone."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import runner
from report import Row
from runner import (
    BENCH,
    FAKE_URL,
    PYTHON,
    ROOT,
    SEND_CONCURRENCY,
    Profile,
    RssSampler,
    Series,
    base_env,
    cpu_meter,
    db,
    fake,
    fmt,
    load_messages,
    log,
    reset_tables,
    start_fake,
    start_worker,
    wait_for,
    wait_quiet,
)

NUMBER = 3


def _drain_once(
    profile: Profile, logs: Path, key_id: int, *, latency: int, workers: int, run: int
) -> dict[str, Any]:
    reset_tables()
    load_messages(profile.drain_messages, key_id=key_id)
    fake("/_bench/reset")
    wait_quiet()
    started = time.time()
    procs = [
        start_worker(logs, f"tegami-worker-{i}", TEGAMI_SEND_CONCURRENCY=str(SEND_CONCURRENCY))
        for i in range(workers)
    ]
    named = {f"worker_{i}": proc for i, proc in enumerate(procs)}
    with RssSampler(procs) as sampler, cpu_meter(named) as cpu:
        done = wait_for(
            lambda: (
                fake("/_bench/stats")["sent"] >= profile.drain_messages
                or not all(proc.alive() for proc in procs)
            ),
            timeout=profile.drain_messages / 100 + 60,
            every=0.5,
        )
    stats = fake("/_bench/stats")
    for proc in procs:
        proc.stop()
    if not done or stats["sent"] < profile.drain_messages:
        raise RuntimeError(f"drain did not finish: {stats}\n{procs[0].tail()}")
    arrivals = fake("/_bench/arrivals")["arrivals"]
    statuses = db(lambda c: c.fetch("SELECT status, count(*) FROM message GROUP BY status"))
    return {
        "latency_ms": latency,
        "workers": workers,
        "run": run,
        "messages": profile.drain_messages,
        "per_second": stats["sent"] / (stats["last_arrival"] - stats["first_arrival"]),
        "start_to_first_send_s": stats["first_arrival"] - started,
        "sent": stats["sent"],
        "unique": len({tag for _at, tag, _to in arrivals}),
        "throttled": stats["throttled"],
        "peak_rss_mb": sampler.peak_kb / 1024,
        **{f"cpu_{name}": value for name, value in cpu.items()},
        "statuses": {r["status"]: r["count"] for r in statuses},
    }


def measure(profile: Profile, logs: Path, first: int = 0) -> dict[str, Any]:
    key_id = runner.ACTIVE.key_id
    out: dict[str, Any] = {"details": []}
    fake_ses = start_fake(logs, rate=5000)
    try:
        for latency in (0, 50):
            fake("/_bench/config", {"latency_ms": latency, "rate": 5000, "burst": 5000})
            rates, blasts, botos, rss = Series(), Series(), Series(), Series()
            for run in range(first, first + profile.runs):
                detail = _drain_once(profile, logs, key_id, latency=latency, workers=1, run=run)
                rates.add(detail["per_second"])
                rss.add(detail["peak_rss_mb"])
                out["details"].append(detail)
                log(f"drain latency {latency} run {run}: {detail}")
                blast = _loadgen("blast", logs, connections=SEND_CONCURRENCY, seconds=5)
                boto = _loadgen("boto", logs, connections=SEND_CONCURRENCY, seconds=5)
                blasts.add(blast["per_second"])
                botos.add(boto["per_second"])
                out["details"].append({"latency_ms": latency, "run": run, "ceiling_http": blast})
                out["details"].append({"latency_ms": latency, "run": run, "ceiling_boto": boto})
                log(f"drain ceilings latency {latency} run {run}: http {blast}, aioboto3 {boto}")
            out[latency] = {"tegami": rates, "ceiling": blasts, "boto": botos, "rss_mb": rss}
        if first == 0:
            # Supplementary, once: two worker processes share the backlog (both cores).
            fake("/_bench/config", {"latency_ms": 0, "rate": 5000, "burst": 5000})
            detail = _drain_once(profile, logs, key_id, latency=0, workers=2, run=0)
            out["details"].append(detail)
            out["two_workers"] = detail
            log(f"drain with two workers: {detail}")
    finally:
        fake_ses.stop()
    return out


def _loadgen(mode: str, logs: Path, *, connections: int, seconds: int) -> dict[str, Any]:
    fake("/_bench/reset")
    target = logs / f"{mode}-{time.time()}.json"
    subprocess.run(  # noqa: S603
        [
            PYTHON,
            str(BENCH / "loadgen.py"),
            mode,
            "--url",
            FAKE_URL,
            "--connections",
            str(connections),
            "--seconds",
            str(seconds),
            "--out",
            str(target),
        ],
        env=base_env(),
        check=True,
        cwd=ROOT,
    )
    result: dict[str, Any] = json.loads(target.read_text())
    return result


def report_rows(drain: dict[str, Any], profile: Profile) -> list[Row]:
    """Its lines of the figures table."""
    rows: list[Row] = []
    for latency_ms, target in ((0, 1500), (50, 1000)):
        part = drain.get(latency_ms)
        if not part:
            continue
        figure = part["tegami"].median
        rows.append(
            Row(
                "3",
                f"drain, msg/s, one worker (SES latency {latency_ms} ms, "
                f"{profile.drain_messages:,} backlog)",
                f"≥ {target:,}",
                part["tegami"].show(),
                f"{part['ceiling'].show()} raw HTTP; {part['boto'].show()} aioboto3 alone",
                f"{figure / part['ceiling'].median:.2f}; {figure / part['boto'].median:.2f}",
                figure >= target,
                figure,
            )
        )
        rss = part["rss_mb"]
        rows.append(
            Row(
                "3",
                f"worker peak RSS, MB (SES latency {latency_ms} ms)",
                "< 200",
                rss.show(),
                "200",
                f"{max(rss.values) / 200:.2f} of it",
                max(rss.values) < 200,
                rss.median,
                "lower",
            )
        )
    two = drain.get("two_workers")
    if two:
        rows.append(
            Row(
                "3",
                "drain, msg/s, two workers, one run (SES latency 0 ms)",
                "≥ 1,500",
                fmt(two["per_second"]),
                "as above",
                "",
                two["per_second"] >= 1500,
                two["per_second"],
            )
        )
    return rows


def how(profile: Profile) -> str:
    return (
        f"3. **Drain.** {profile.drain_messages:,} messages COPYed into a migrated database "
        "exactly as the API writes them (recipient, message, `accepted` event; 70 % "
        "verify-email, 10 % each other type), then one `tegami worker` "
        f"(`TEGAMI_SEND_CONCURRENCY={SEND_CONCURRENCY}`) against the fake SES (MaxSendRate "
        "5,000, enforced). Rate = messages / (last arrival − first arrival) at the fake; "
        "RSS sampled every 0.25 s from /proc. The ceiling is bench/loadgen.py blasting "
        "SendEmail requests of the same size straight at the fake with the same number of "
        "connections (no database, no botocore) for 5 s."
    )
