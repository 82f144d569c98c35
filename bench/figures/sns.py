"""Figure 5, SNS ingest: signed SES events posted by wrk, applied per second."""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import runner
from report import Row
from runner import (
    CEILING_PORT,
    TEGAMI_PORT,
    TOPIC_ARN,
    Profile,
    Series,
    base_env,
    cpu_meter,
    db,
    load_messages,
    log,
    reset_tables,
    run_wrk,
    start_ceiling,
    start_tegami,
    wait_quiet,
)

NUMBER = 5


@dataclass(frozen=True)
class SnsSetup:
    cert_dir: Path
    cert_path: Path
    bodies: Path
    warm_bodies: Path
    targets: list[tuple[uuid.UUID, str, str]]


_SNS_SETUP: list[SnsSetup] = []  # signed once per bench run, loaded into each database


def prepare_sns(profile: Profile, logs: Path, key_id: int) -> SnsSetup:
    from app.sns.signature import make_signing_identity
    from app.sns.simulate import DevSigner, SimulatedEvent, ses_event, sns_notification

    if _SNS_SETUP:
        _reset_sns_state(profile, key_id)  # the same rows as the bodies were signed for
        return _SNS_SETUP[0]
    log("signing SNS notifications")
    key_pem, cert_pem = make_signing_identity(common_name="sns.ap-northeast-1.amazonaws.com")
    cert_dir = logs / "sns-certs"
    cert_dir.mkdir(exist_ok=True)
    name = f"SimpleNotificationService-{hashlib.sha256(cert_pem).hexdigest()[:32]}.pem"
    (cert_dir / name).write_bytes(cert_pem)
    signer = DevSigner(
        key_pem=key_pem,
        cert_dir=cert_dir,
        cert_url=f"https://sns.ap-northeast-1.amazonaws.com/{name}",
    )
    warm = 2000
    reset_tables()
    targets = load_messages(profile.sns_events + warm, key_id=key_id, status="sent", prefix="sns")
    rng = random.Random(11)  # noqa: S311
    lines = []
    # Most feedback is deliveries; then bounces (hard and soft) and a few complaints.
    for _message_id, address, ses_id in targets:
        roll = rng.random()
        if roll < 0.90:
            event = ses_event(SimulatedEvent.DELIVERY, address, ses_message_id=ses_id)
        elif roll < 0.95:
            event = ses_event(SimulatedEvent.BOUNCE, address, ses_message_id=ses_id)
        elif roll < 0.98:
            event = ses_event(SimulatedEvent.BOUNCE, address, soft=True, ses_message_id=ses_id)
        else:
            event = ses_event(SimulatedEvent.COMPLAINT, address, ses_message_id=ses_id)
        notification = sns_notification(event, signer=signer, topic_arn=TOPIC_ARN)
        lines.append(json.dumps(notification))
    bodies = logs / "sns-bodies.jsonl"
    warm_bodies = logs / "sns-warm.jsonl"
    bodies.write_text("\n".join(lines[:-warm]) + "\n")
    warm_bodies.write_text("\n".join(lines[-warm:]) + "\n")
    _SNS_SETUP.append(SnsSetup(cert_dir, cert_dir / name, bodies, warm_bodies, targets))
    return _SNS_SETUP[0]


def _reset_sns_state(profile: Profile, key_id: int) -> None:
    reset_tables()
    load_messages(profile.sns_events + 2000, key_id=key_id, status="sent", prefix="sns")


def measure(profile: Profile, logs: Path, first: int = 0) -> dict[str, Any]:
    key_id = runner.ACTIVE.key_id
    setup = prepare_sns(profile, logs, key_id)
    tegami, ceiling = Series(), Series()
    details: list[dict[str, Any]] = []
    for run in range(first, first + profile.runs):
        order = ("ceiling", "tegami") if run % 2 == 0 else ("tegami", "ceiling")
        for which in order:
            # The same messages each run: the database is put back as it was before.
            _restore_sent_messages(setup, key_id)
            if which == "ceiling":
                proc = start_ceiling(logs, CEILING_SNS_CERT=str(setup.cert_path))
                port = CEILING_PORT
            else:
                proc = start_tegami(
                    logs,
                    worker=False,
                    TEGAMI_SNS_CERT_DIR=str(setup.cert_dir),
                    TEGAMI_SNS_TOPIC_ARNS=TOPIC_ARN,
                )
                port = TEGAMI_PORT
            url = f"http://127.0.0.1:{port}/sns/ses-events"
            env = base_env()
            env["BENCH_SNS_BODIES"] = str(setup.warm_bodies)
            wait_quiet()
            run_wrk(url, "sns.lua", 2, env)
            before = _sns_rows(which)
            env["BENCH_SNS_BODIES"] = str(setup.bodies)
            with cpu_meter({"server": proc}) as cpu:
                result = run_wrk(url, "sns.lua", profile.sns_seconds, env)
            proc.stop()
            applied = _sns_rows(which) - before
            per_second = applied / profile.sns_seconds
            if applied >= profile.sns_events:
                log("warning: every SNS body was used; the figure is a lower bound")
            outcomes = (
                db(lambda c: c.fetch("SELECT outcome, count(*) FROM sns_message GROUP BY 1"))
                if which == "tegami"
                else []
            )
            detail = {
                "run": run,
                "which": which,
                "applied": applied,
                "per_second": per_second,
                "wrk_rps": result["rps"],
                "non_2xx": result["non_2xx"],
                "p99_ms": result.get("p99_ms"),
                "cpu_server": cpu["server"],
                "machine_busy_pct": cpu["machine_busy_pct"],
                "outcomes": {r["outcome"]: r["count"] for r in outcomes},
            }
            details.append(detail)
            (ceiling if which == "ceiling" else tegami).add(per_second)
            log(f"sns run {run} {which}: {detail}")
    return {"tegami": tegami, "ceiling": ceiling, "details": details}


def _restore_sent_messages(setup: SnsSetup, key_id: int) -> None:
    """Undo a run's effects: feedback rows gone, messages 'sent' again, no suppressions."""

    async def run(c: asyncpg.Connection) -> None:
        await c.execute(
            """
            TRUNCATE sns_message, suppression, audit_event, ceiling_sns;
            DELETE FROM message_event WHERE kind NOT IN ('accepted', 'sent');
            UPDATE message SET status = 'sent', last_error = NULL
                WHERE status <> 'sent';
            UPDATE recipient SET soft_bounce_count = 0 WHERE soft_bounce_count <> 0;
            """
        )
        await c.execute("VACUUM ANALYZE message, message_event, recipient")

    db(run)


def _sns_rows(which: str) -> int:
    table = "ceiling_sns" if which == "ceiling" else "sns_message"
    return int(db(lambda c: c.fetchval(f"SELECT count(*) FROM {table}")))  # noqa: S608


def report_rows(sns: dict[str, Any], profile: Profile) -> list[Row]:
    """Its lines of the figures table."""
    rows: list[Row] = []
    figure = sns["tegami"].median
    rows.append(
        Row(
            "5",
            "SNS ingest, events/s (20 connections, one process)",
            "≥ 1,000",
            sns["tegami"].show(),
            sns["ceiling"].show(),
            f"{figure / sns['ceiling'].median:.2f}",
            figure >= 1000,
            figure,
        )
    )
    return rows


def how(profile: Profile) -> str:
    return (
        "5. **SNS ingest.** Signed SNS notifications (SignatureVersion 2, a throwaway "
        "certificate served through `TEGAMI_SNS_CERT_DIR`) carrying SES events for sent "
        "messages: 90 % Delivery, 5 % hard bounce, 3 % soft bounce, 2 % complaint. "
        f"`wrk -t1 -c20` for {profile.sns_seconds} s (bench/wrk/sns.lua); the figure is the "
        "rows `sns_message` gained, per second. The ceiling (bench/ceiling.py) parses the "
        "JSON, verifies the same RSA signature and INSERTs the MessageId."
    )
