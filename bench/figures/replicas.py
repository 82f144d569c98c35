"""Figure 7, duplicates at 1/s: several `tegami worker` whose leases run out."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import runner
from report import Row, count_row
from runner import (
    FULL,
    REPLICAS,
    REPLICAS_LEASE_SECONDS,
    Proc,
    Profile,
    Series,
    db,
    fake,
    load_messages,
    log,
    reset_tables,
    start_fake,
    start_worker,
    wait_for,
    wait_quiet,
)

NUMBER = 7


def measure(profile: Profile, logs: Path, first: int = 0) -> dict[str, Any]:
    fake_ses = start_fake(logs, rate=1)
    series = {name: Series() for name in ("twice", "throttled", "per_second")}
    details: list[dict[str, Any]] = []
    count = profile.replicas_messages
    try:
        for run in range(first, first + profile.runs):
            reset_tables()
            load_messages(count, key_id=runner.ACTIVE.key_id, prefix="replicas")
            fake("/_bench/reset")
            wait_quiet()
            workers = [
                start_worker(
                    logs,
                    f"tegami-worker-{i}",
                    TEGAMI_MAX_SEND_RATE="1",
                    TEGAMI_SEND_LEASE_SECONDS=str(REPLICAS_LEASE_SECONDS),
                    TEGAMI_SEND_CONCURRENCY="32",
                )
                for i in range(REPLICAS)
            ]
            try:

                def unfinished() -> int:
                    return int(
                        db(
                            lambda c: c.fetchval(
                                "SELECT count(*) FROM message WHERE status IN ('queued', 'sending')"
                            )
                        )
                    )

                def settled_or_dead(workers: list[Proc] = workers) -> bool:
                    return unfinished() == 0 or not all(w.alive() for w in workers)

                settled = wait_for(
                    settled_or_dead,
                    timeout=3 * count + 60,
                    every=1.0,
                )

                # A worker whose lease ran out may still send what another one already sent:
                # done when SES has heard nothing for three of its slots.
                def quiet() -> bool:
                    last = fake("/_bench/stats")["last_arrival"]
                    return last is not None and time.time() - last > 3.0

                wait_for(quiet, timeout=60, every=0.5)
                stats = fake("/_bench/stats")
                answer = fake("/_bench/arrivals")
                arrived = answer["arrivals"]
            finally:
                for worker in workers:
                    worker.stop()
            if not settled:
                raise RuntimeError(f"replicas did not finish: {stats}\n{workers[0].tail()}")
            sends: dict[str, int] = {}
            for _at, tag, _to in arrived:
                sends[tag] = sends.get(tag, 0) + 1
            times = sorted(at for at, _tag, _to in arrived)
            logs_text = "".join(w.log_path.read_text(errors="replace") for w in workers)
            detail = {
                "run": run,
                "version": runner.ACTIVE.label,
                "messages": count,
                "sent": stats["sent"],
                "mails_at_ses": len(sends),
                "sent_twice_or_more": sum(1 for n in sends.values() if n > 1),
                "extra_sends": sum(n - 1 for n in sends.values()),
                "throttled": stats["throttled"],
                "failed": stats["failed"],
                "per_second": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0,
                "closest_arrivals_s": min(
                    (b - a for a, b in itertools.pairwise(times)), default=None
                ),
                # When SES said 429, in seconds after the first send that got through.
                "throttled_after_s": [round(t - times[0], 2) for t in answer["throttled_at"]],
                "claims_lost": logs_text.count("email_claim_lost"),
                "statuses": {
                    r["status"]: r["count"]
                    for r in db(
                        lambda c: c.fetch("SELECT status, count(*) FROM message GROUP BY status")
                    )
                },
            }
            series["twice"].add(detail["sent_twice_or_more"])
            series["throttled"].add(detail["throttled"])
            series["per_second"].add(detail["per_second"])
            details.append(detail)
            log(f"replicas run {run} {runner.ACTIVE.label}: {detail}")
    finally:
        fake_ses.stop()
    return {**series, "details": details}


def report_rows(replicas: dict[str, Any], profile: Profile) -> list[Row]:
    """Its lines of the figures table."""
    if not (replicas["twice"].values):
        return []
    rows: list[Row] = []
    fixed = f"{REPLICAS} `tegami worker`, {profile.replicas_messages} queued"
    rows.append(
        Row(
            "7",
            f"mails sent twice or more at 1/s ({fixed}, lease {REPLICAS_LEASE_SECONDS} s)",
            "0",
            replicas["twice"].show(),
            "0",
            "",
            max(replicas["twice"].values) == 0,
            replicas["twice"].median,
            "",
        )
    )
    rows.append(count_row("7", "throttled by SES (MaxSendRate 1)", replicas))
    per_second = replicas["per_second"]
    rows.append(
        Row(
            "7",
            "achieved rate, sends/s (first to last arrival)",
            "≤ 1",
            per_second.show(3),
            "1 (MaxSendRate)",
            f"{per_second.median:.2f}",
            max(per_second.values) <= 1.0,
            per_second.median,
        )
    )
    return rows


def how(profile: Profile) -> str:
    return (
        f"7. **Duplicates at 1/s.** {REPLICAS} `tegami worker` processes with "
        "`TEGAMI_MAX_SEND_RATE=1`, `TEGAMI_SEND_LEASE_SECONDS="
        f"{REPLICAS_LEASE_SECONDS}` and `TEGAMI_SEND_CONCURRENCY=32`, against the fake "
        f"enforcing 1/s (bucket of 1), {profile.replicas_messages} mails queued (as in 3): "
        "the backlog outlasts the lease. Done when no mail is queued or sending and SES "
        "has heard nothing for 3 s. Mails whose `tegami_id` reached SES more than once; "
        "the fake's 429s; sends / (last − first arrival). Code from before "
        "`TEGAMI_SEND_LEASE_SECONDS` ignores it and holds a fixed 60-s lease, which the "
        f"full profile's {FULL.replicas_messages} mails outlast too."
    )
