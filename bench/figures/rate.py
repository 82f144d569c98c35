"""Figure 4, rate accuracy: two workers against MaxSendRate 14, per 10-s window."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import runner
from report import Row
from runner import (
    Profile,
    Series,
    fake,
    load_messages,
    log,
    reset_tables,
    start_fake,
    start_worker,
    wait_for,
    wait_quiet,
)

NUMBER = 4


def measure(profile: Profile, logs: Path, first: int = 0) -> dict[str, Any]:
    key_id = runner.ACTIVE.key_id
    rate = 14.0
    window = 10.0
    fake_ses = start_fake(logs, rate=rate)
    lows, highs, throttled = Series(), Series(), Series()
    details: list[dict[str, Any]] = []
    try:
        for run in range(first, first + profile.runs):
            reset_tables()
            load_messages(int(rate * (profile.rate_seconds + 30)), key_id=key_id)
            fake("/_bench/reset")
            wait_quiet()
            workers = [start_worker(logs, f"tegami-worker-{i}") for i in (1, 2)]
            wait_for(lambda: fake("/_bench/stats")["first_arrival"] is not None, timeout=60)
            first = fake("/_bench/stats")["first_arrival"]
            time.sleep(max(0.0, first + profile.rate_seconds + 0.5 - time.time()))
            stats = fake("/_bench/stats")
            for worker in workers:
                worker.stop()
            times = sorted(at for at, _tag, _to in fake("/_bench/arrivals")["arrivals"])
            windows = [
                sum(1 for t in times if first + k * window <= t < first + (k + 1) * window) / window
                for k in range(int(profile.rate_seconds // window))
            ]
            lows.add(min(windows))
            highs.add(max(windows))
            throttled.add(stats["throttled"])
            detail = {
                "run": run,
                "windows_per_second": windows,
                "throttled": stats["throttled"],
                "failed": stats["failed"],
            }
            details.append(detail)
            log(f"rate run {run}: {detail}")
    finally:
        fake_ses.stop()
    return {
        "rate": rate,
        "low": lows,
        "high": highs,
        "throttled": throttled,
        "details": details,
    }


def report_rows(rate: dict[str, Any], profile: Profile) -> list[Row]:
    """Its lines of the figures table."""
    rows: list[Row] = []
    low, high = min(rate["low"].values), max(rate["high"].values)
    rows.append(
        Row(
            "4",
            f"rate, msg/s per 10-s window (2 workers, {profile.rate_seconds} s)",
            "13–14, 0 throttled",
            f"lowest {rate['low'].show(2)}, highest {rate['high'].show(2)}, "
            f"throttled {rate['throttled'].show()}",
            "14 (MaxSendRate)",
            f"{rate['low'].median / rate['rate']:.2f}",
            low >= 13 and high <= 14 and max(rate["throttled"].values) == 0,
            rate["low"].median,
        )
    )
    return rows


def how(profile: Profile) -> str:
    return (
        "4. **Rate accuracy.** The fake SES reports MaxSendRate 14 in GetAccount and "
        "enforces it (token bucket of 14, refilled at 14/s; over it: 429 "
        "TooManyRequestsException). Two `tegami worker` processes, no TEGAMI_MAX_SEND_RATE, "
        f"a backlog that outlasts the test; sends per second in each 10-s window over "
        f"{profile.rate_seconds} s from the first send."
    )
