"""Figure 6, account mail behind a matching backlog: password resets at 1/s while
matching notifications drain at MaxSendRate 14."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import runner
from report import Row, count_row
from runner import (
    MATCHING_BACKLOG,
    RESET_WAIT_SECONDS,
    TEGAMI_PORT,
    Profile,
    Series,
    fake,
    load_messages,
    log,
    percentile,
    reset_tables,
    start_fake,
    start_tegami,
    wait_for,
    wait_quiet,
)

NUMBER = 6


def _resets_at_one_per_second(seconds: int, run: int) -> list[dict[str, Any]]:
    """POST /emails/password-reset once a second for ``seconds`` s; each request's wall-clock
    send time (the fake SES stamps arrivals with the same clock), status and the id answered."""
    sent: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {runner.ACTIVE.api_key}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{TEGAMI_PORT}", headers=headers) as client:
        start = time.monotonic()
        for index in range(seconds):
            time.sleep(max(0.0, start + index - time.monotonic()))
            body = {
                "to": f"reset-{runner.ACTIVE.label}-{run}-{index}@example.com",
                "params": {"reset_url": f"https://proworks.jp/reset?token={uuid.uuid4().hex}"},
                "user_id": f"reset-user-{index}",
            }
            at = time.time()
            try:
                response = client.post("/emails/password-reset", json=body, timeout=10.0)
                answer, status = response.json(), response.status_code
            except (httpx.HTTPError, ValueError) as exc:
                answer, status = {"error": repr(exc)}, 0
            sent.append({"sent": at, "status": status, "id": answer.get("id"), "answer": answer})
    return sent


def measure(profile: Profile, logs: Path, first: int = 0) -> dict[str, Any]:
    rate = 14.0
    fake_ses = start_fake(logs, rate=rate)
    series = {name: Series() for name in ("p50", "p99", "matching_per_second", "throttled")}
    details: list[dict[str, Any]] = []
    try:
        for run in range(first, first + profile.runs):
            reset_tables()
            load_messages(
                MATCHING_BACKLOG,
                key_id=runner.ACTIVE.key_id,
                prefix="match",
                mix=(("matching-notification", 1),),
            )
            fake("/_bench/reset")
            wait_quiet()
            proc = start_tegami(logs, worker=True)
            try:
                # The backlog is draining (a couple of seconds' worth out) before the first reset.
                wait_for(lambda: fake("/_bench/stats")["sent"] >= 2 * rate, timeout=60)
                resets = _resets_at_one_per_second(profile.priority_seconds, run)
                ids = {r["id"] for r in resets if r["status"] == 202}

                def all_arrived(ids: set[str] = ids) -> bool:
                    return ids <= {tag for _at, tag, _to in fake("/_bench/arrivals")["arrivals"]}

                wait_for(all_arrived, RESET_WAIT_SECONDS, every=0.5)
                stats = fake("/_bench/stats")
                arrived = fake("/_bench/arrivals")["arrivals"]
            finally:
                proc.stop()
            at_ses = {tag: at for at, tag, _to in arrived}
            # A reset that never reached SES counts as infinitely late.
            latencies = [
                at_ses[r["id"]] - r["sent"] if r["id"] in at_ses else float("inf")
                for r in resets
                if r["status"] == 202
            ]
            begin, end = resets[0]["sent"], resets[-1]["sent"] + 1.0
            matching = sum(1 for at, tag, _to in arrived if tag not in ids and begin <= at < end)
            detail = {
                "run": run,
                "version": runner.ACTIVE.label,
                "resets": len(resets),
                "accepted": len(ids),
                "not_at_ses": sum(1 for value in latencies if value == float("inf")),
                "p50_s": percentile(latencies, 50),
                "p99_s": percentile(latencies, 99),
                "max_s": max(latencies, default=float("nan")),
                "matching_sent_meanwhile": matching,
                "matching_per_second": matching / (end - begin),
                "throttled": stats["throttled"],
                "failed": stats["failed"],
                "sent": stats["sent"],
            }
            for name in ("p50", "p99"):
                series[name].add(detail[f"{name}_s"])
            series["matching_per_second"].add(detail["matching_per_second"])
            series["throttled"].add(stats["throttled"])
            details.append(detail)
            log(f"priority run {run} {runner.ACTIVE.label}: {detail}")
    finally:
        fake_ses.stop()
    return {**series, "rate": rate, "details": details}


def report_rows(priority: dict[str, Any], profile: Profile) -> list[Row]:
    """Its lines of the figures table."""
    if not (priority["p99"].values):
        return []
    rows: list[Row] = []
    fixed = (
        f"MaxSendRate 14, {MATCHING_BACKLOG:,} matching queued, "
        f"resets at 1/s for {profile.priority_seconds} s"
    )
    goals: tuple[tuple[str, float | None], ...] = (("p50", None), ("p99", 1.5))
    for q, goal in goals:
        figure = priority[q].median
        rows.append(
            Row(
                "6",
                f"password reset accept-to-SES {q}, s ({fixed})",
                f"≤ {goal}" if goal else "",
                priority[q].show(2),
                "",
                "",
                figure <= goal if goal else None,
                figure,
                "lower",
            )
        )
    meanwhile = priority["matching_per_second"]
    rows.append(
        Row(
            "6",
            "matching mails sent meanwhile, msg/s",
            "> 0 (keeps draining)",
            meanwhile.show(1),
            "14 (MaxSendRate)",
            f"{(meanwhile.median + 1) / priority['rate']:.2f} with the resets",
            min(meanwhile.values) > 0,
            meanwhile.median,
        )
    )
    rows.append(count_row("6", "throttled by SES (MaxSendRate 14), whole run", priority))
    return rows


def how(profile: Profile) -> str:
    return (
        "6. **Account mail behind a matching backlog.** The fake SES reports and enforces "
        f"MaxSendRate 14 (bucket of 14). {MATCHING_BACKLOG:,} matching notifications "
        "COPYed as in 3, then one `tegami serve` with its worker; once it has sent two "
        "seconds' worth, `POST /emails/password-reset` once a second for "
        f"{profile.priority_seconds} s. Each reset: from the moment the request is sent "
        "(`time.time()` in the bench) to its arrival at the fake (`time.time()` there, by "
        "its `tegami_id` tag). A reset that has not reached SES "
        f"{RESET_WAIT_SECONDS:.0f} s after the last one was sent counts as infinitely late "
        "(∞). Matching mails sent meanwhile: arrivals that are not resets from the first "
        "reset to a second after the last, per second; the ratio is all sends (resets "
        "included) over MaxSendRate."
    )
