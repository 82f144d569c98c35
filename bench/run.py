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

Each figure is reported beside its ceiling, measured in the same run on the same machine: a
bare FastAPI + asyncpg endpoint (bench/ceiling.py) for the HTTP paths, a bare aiohttp sender
for the fake SES (tests/fake_ses.py, the tests' own), and SES's MaxSendRate for the rate test.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
TEGAMI = str(Path(sys.executable).parent / "tegami")
ADMIN_URL = os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_NAME = "tegami_bench"
FAKE_PORT, TEGAMI_PORT, CEILING_PORT = 19101, 18101, 18102
FAKE_URL = f"http://127.0.0.1:{FAKE_PORT}"
ADDRESS_SECRET = "bench-address-hash-secret-0123456789"  # noqa: S105 (bench only)
UNSUBSCRIBE_SECRET = "bench-unsubscribe-secret-0123456789"  # noqa: S105
TOPIC_ARN = "arn:aws:sns:ap-northeast-1:123456789012:tegami-ses-events"
CONCURRENCY = 20  # connections for the throughput tests
SEND_CONCURRENCY = 128  # TEGAMI_SEND_CONCURRENCY for the drain: rate x SES latency in flight
REPLICAS = 4  # tegami worker processes in the duplicates figure
REPLICAS_LEASE_SECONDS = 10  # TEGAMI_SEND_LEASE_SECONDS there: the backlog outlasts it
MATCHING_BACKLOG = 5_000  # matching notifications queued ahead of the password resets
RESET_WAIT_SECONDS = 10.0  # how long after the last reset the bench waits for stragglers
BATCH_SIZE = 100  # mails per POST /emails/verify-email/batch in the batch figure

# The bench's own imports of ``app`` (rows, SNS signing) are this checkout's.
sys.path.insert(0, str(ROOT))


@dataclass
class Version:
    """A checkout of tegami the bench runs: its own database, API key and processes (started
    in its directory with ``PYTHONPATH`` set to it, from the same virtual environment)."""

    label: str  # "now" or "before"
    root: Path
    db_name: str
    key_id: int = 0
    api_key: str = ""

    @property
    def db_url(self) -> str:
        return ADMIN_URL.rsplit("/", 1)[0] + "/" + self.db_name

    def commit(self) -> str:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            cwd=self.root,
        ).stdout.strip()


NOW = Version("now", ROOT, DB_NAME)
ACTIVE = NOW  # the version being measured; set by ``measuring``


@contextmanager
def measuring(version: Version) -> Iterator[None]:
    global ACTIVE  # one version at a time, set and put back here only
    previous, ACTIVE = ACTIVE, version
    try:
        yield
    finally:
        ACTIVE = previous


@dataclass(frozen=True)
class Profile:
    runs: int
    accept_seconds: int
    latency_seconds: int
    drain_messages: int
    rate_seconds: int
    sns_seconds: int
    sns_events: int
    priority_seconds: int  # password resets at 1/s behind the matching backlog
    replicas_messages: int  # backlog at 1/s for the replicas: outlasts every lease in play
    year_rows: int  # mails kept in the year figure (bench/year.py)


FULL = Profile(
    runs=3,
    accept_seconds=10,
    latency_seconds=20,
    drain_messages=100_000,
    rate_seconds=60,
    sns_seconds=8,
    sns_events=24_000,
    priority_seconds=60,
    # 75 s at 1/s: longer than the 10-s lease set here, and than the fixed 60-s lease of code
    # from before the setting (a --baseline), so both can show what happens when it runs out.
    replicas_messages=75,
    # A million mails a day (SES's default 14/s) for 400 days is 400 million; 10 million with
    # a million of them a day past retention keeps the day's delete at its full size.
    year_rows=10_000_000,
)
QUICK = Profile(
    runs=2,
    accept_seconds=5,
    latency_seconds=8,
    drain_messages=10_000,
    rate_seconds=20,
    sns_seconds=4,
    sns_events=10_000,
    priority_seconds=20,
    replicas_messages=30,
    year_rows=200_000,
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- processes --------------------------------------------------------------------------------


class Proc:
    """A process this bench started (in its own session), stopped by its pid only."""

    started: ClassVar[list[Proc]] = []

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        env: dict[str, str],
        logs: Path,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.log_path = logs / f"{name}-{int(time.time() * 1000)}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(  # noqa: S603 (our own commands)
            list(cmd),
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        Proc.started.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 40.0) -> int | None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        if self in Proc.started:
            Proc.started.remove(self)
        return self.popen.returncode

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def rss_kb(self) -> int:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return 0
        found = re.search(r"VmRSS:\s+(\d+) kB", status)
        return int(found.group(1)) if found else 0

    def cpu_seconds(self) -> float:
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait_ready(self, url: str, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready at {url}:\n{self.tail()}")


def stop_all() -> None:
    for proc in list(Proc.started):
        proc.stop(timeout=10)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return total - idle, total


def _all_cpu() -> dict[int, tuple[str, float]]:
    """Every process: (group, CPU seconds). Groups: this bench's database backends, other
    PostgreSQL processes, wrk, processes this bench started, and everything else."""
    tick = os.sysconf("SC_CLK_TCK")
    mine = {proc.pid for proc in Proc.started}
    found: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        pid = int(entry.name)
        if pid in mine or cmdline.startswith("wrk ") or "bench/loadgen.py" in cmdline:
            group = "bench"
        elif cmdline.startswith("postgres:") and any(
            f" {name} " in cmdline for name in (DB_NAME, f"{DB_NAME}_base")
        ):
            group = "postgres_bench"
        elif cmdline.startswith("postgres") or "/postgres" in cmdline.split(" ")[0]:
            group = "postgres_shared"
        elif pid == os.getpid():
            group = "bench"
        else:
            group = "other"
        found[pid] = (group, (int(fields[11]) + int(fields[12])) / tick)
    return found


@contextmanager
def cpu_meter(procs: dict[str, Proc]) -> Iterator[dict[str, float]]:
    """CPU use while the block runs, in cores: each named process, this bench's PostgreSQL
    backends, and whatever else ran on the machine (other people's work skews figures);
    and the whole machine's busy %."""
    result: dict[str, float] = {}
    before = {name: proc.cpu_seconds() for name, proc in procs.items()}
    all_before = _all_cpu()
    busy0, total0 = machine_cpu()
    started = time.monotonic()
    yield result
    elapsed = time.monotonic() - started
    busy1, total1 = machine_cpu()
    all_after = _all_cpu()
    for name, proc in procs.items():
        result[name] = (proc.cpu_seconds() - before[name]) / elapsed
    groups: dict[str, float] = {}
    for pid, (group, seconds) in all_after.items():
        spent = seconds - all_before.get(pid, (group, 0.0))[1]
        groups[group] = groups.get(group, 0.0) + spent
    for group in ("postgres_bench", "postgres_shared", "other"):
        result[group] = groups.get(group, 0.0) / elapsed
    result["machine_busy_pct"] = 100.0 * (busy1 - busy0) / max(1, total1 - total0)


def wait_quiet(limit_pct: float = 15.0, patience: float = 120.0) -> float:
    """Wait (up to ``patience`` s) until the machine is idle: other work on this 2-core
    machine (a test run, an install) would be measured as tegami's slowness. Returns the
    busy % seen last."""
    deadline = time.monotonic() + patience
    while True:
        busy0, total0 = machine_cpu()
        time.sleep(1.0)
        busy1, total1 = machine_cpu()
        busy = 100.0 * (busy1 - busy0) / max(1, total1 - total0)
        if busy <= limit_pct or time.monotonic() > deadline:
            if busy > limit_pct:
                log(f"machine still {busy:.0f}% busy with other work; measuring anyway")
            return busy
        log(f"machine {busy:.0f}% busy with other work; waiting")


class RssSampler:
    def __init__(self, procs: Sequence[Proc], every: float = 0.25) -> None:
        self.procs = procs
        self.every = every
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in self.procs:
                self.peak_kb = max(self.peak_kb, proc.rss_kb())
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# -- settings and database ----------------------------------------------------------------------


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEGAMI_", "AWS_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT)  # the bench's helpers (ceiling, loadgen) use this checkout
    return env


def tegami_env(**extra: str) -> dict[str, str]:
    env = base_env()
    env.update(
        PYTHONPATH=str(ACTIVE.root),
        TEGAMI_DATABASE_URL=ACTIVE.db_url,
        TEGAMI_PUBLIC_BASE_URL="https://mail.proworks.jp",
        TEGAMI_UNSUBSCRIBE_SECRET=UNSUBSCRIBE_SECRET,
        TEGAMI_ADDRESS_HASH_SECRET=ADDRESS_SECRET,
        TEGAMI_LINK_HOSTS="proworks.jp,*.proworks.jp",
        TEGAMI_SENDER_POSTAL_ADDRESS="〒100-0001 東京都千代田区千代田1-1",
        TEGAMI_SENDER_CONTACT="support@proworks.jp",
        TEGAMI_SES_CONFIGURATION_SET="tegami-events",
        AWS_ENDPOINT_URL=FAKE_URL,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",  # noqa: S106 (the fake's)
        AWS_REGION="ap-northeast-1",
    )
    env.update(extra)
    return env


def db(coro_fn: Callable[[asyncpg.Connection], Any], url: str | None = None) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(url or ACTIVE.db_url)
        try:
            return await coro_fn(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


def create_database(version: Version) -> None:
    """A fresh database migrated by ``version``'s own code, with the ceiling's tables; notes
    its API key in ``version``."""
    name = version.db_name
    db(lambda c: c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'), ADMIN_URL)
    db(lambda c: c.execute(f'CREATE DATABASE "{name}"'), ADMIN_URL)
    with measuring(version):
        _migrate_and_key(version)


def _migrate_and_key(version: Version) -> None:
    subprocess.run(  # noqa: S603
        [TEGAMI, "migrate"], env=tegami_env(), cwd=version.root, check=True, capture_output=True
    )
    db(
        lambda c: c.execute(
            """
            CREATE TABLE ceiling_message (
                id uuid PRIMARY KEY, kind text NOT NULL, to_address text NOT NULL,
                params jsonb NOT NULL, created_at timestamptz NOT NULL);
            CREATE TABLE ceiling_sns (message_id text PRIMARY KEY);
            """
        )
    )
    key = subprocess.run(  # noqa: S603
        [TEGAMI, "api-key", "create", "bench"],
        env=tegami_env(),
        cwd=version.root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    version.key_id = int(db(lambda c: c.fetchval("SELECT id FROM api_key WHERE name = 'bench'")))
    version.api_key = key


TABLES = (
    "recipient, suppression, opt_out, message, message_event, audit_event, sns_message, "
    "send_pacer, ceiling_message, ceiling_sns"
)


def reset_tables() -> None:
    async def run(c: asyncpg.Connection) -> None:
        await c.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
        await c.execute("VACUUM ANALYZE")

    db(run)


# Mixed as a sign-up heavy service would send them.
KIND_MIX = (
    ("verify-email", 70),
    ("password-reset", 10),
    ("email-change", 10),
    ("matching-notification", 10),
)


def load_messages(
    count: int,
    *,
    key_id: int,
    status: str = "queued",
    prefix: str = "drain",
    mix: Sequence[tuple[str, int]] = KIND_MIX,
) -> list[tuple[uuid.UUID, str, str]]:
    """COPY ``count`` messages shaped exactly like the API's rows (recipient, message, the
    'accepted' event; for ``sent``, the worker's columns and event too). Returns
    (id, address, ses_message_id) for each. The same arguments give the same rows (ids and
    tokens too), so two databases can hold the same messages."""
    from app.emails.catalog import EMAIL_KINDS
    from app.emails.service import request_fingerprint
    from app.recipients.addresses import address_hash

    rng = random.Random(7)  # noqa: S311
    ids = random.Random(f"{prefix}-{count}-{status}")  # noqa: S311

    def uuid4() -> uuid.UUID:
        return uuid.UUID(int=ids.getrandbits(128), version=4)

    kinds = [name for name, weight in mix for _ in range(weight)]
    now = datetime.now(UTC)
    recipients, messages, events, out = [], [], [], []
    for index in range(count):
        kind = EMAIL_KINDS[rng.choice(kinds)]
        address = f"{prefix}-{index}@example.com"
        user_id = f"user-{index}"
        params = {name: f"https://proworks.jp/{name}?token={uuid4().hex}" for name in kind.params}
        message_id = uuid4()
        ses_id = f"{uuid4().hex[:16]}-{uuid4()}-000000" if status == "sent" else None
        recipient_id = index + 1
        hashed = address_hash(address, secret=ADDRESS_SECRET)
        recipients.append((recipient_id, hashed, address, user_id, 0, now, now))
        messages.append(
            (
                message_id,
                kind.name,
                str(kind.category),
                recipient_id,
                address,
                user_id,
                json.dumps(params),
                status,
                1 if status == "sent" else 0,
                now,
                now + kind.lifetime if kind.lifetime else None,
                ses_id,
                key_id,
                None,
                request_fingerprint(kind=kind, to=address, params=params, user_id=user_id),
                None,
                now,
                now,
                now if status == "sent" else None,
            )
        )
        events.append((message_id, "accepted", None, "api_key:bench", now))
        if status == "sent":
            events.append((message_id, "sent", ses_id, "worker", now))
        out.append((message_id, address, ses_id or ""))

    async def run(c: asyncpg.Connection) -> None:
        async with c.transaction():
            await c.copy_records_to_table(
                "recipient",
                records=recipients,
                columns=[
                    "id",
                    "address_hash",
                    "address",
                    "user_id",
                    "soft_bounce_count",
                    "created_at",
                    "updated_at",
                ],
            )
            await c.execute(
                "SELECT setval(pg_get_serial_sequence('recipient', 'id'), "
                "(SELECT max(id) FROM recipient))"
            )
            await c.copy_records_to_table(
                "message",
                records=messages,
                columns=[
                    "id",
                    "kind",
                    "category",
                    "recipient_id",
                    "to_address",
                    "user_id",
                    "params",
                    "status",
                    "attempts",
                    "next_attempt_at",
                    "expires_at",
                    "ses_message_id",
                    "api_key_id",
                    "idempotency_key",
                    "request_hash",
                    "last_error",
                    "created_at",
                    "updated_at",
                    "sent_at",
                ],
            )
            await c.copy_records_to_table(
                "message_event",
                records=events,
                columns=["message_id", "kind", "detail", "cause", "created_at"],
            )
        await c.execute("ANALYZE recipient, message, message_event")

    db(run)
    return out


# -- measuring helpers --------------------------------------------------------------------------


@dataclass
class Series:
    """One figure over several runs."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def spread(self, digits: int = 0) -> str:
        if not self.values:
            return "n/a"
        if len(self.values) == 1:
            return fmt(self.values[0], digits)
        return f"{fmt(min(self.values), digits)}–{fmt(max(self.values), digits)}"

    def show(self, digits: int = 0) -> str:
        if not self.values:
            return "n/a"
        return f"{fmt(self.median, digits)} ({self.spread(digits)})"


def fmt(value: float, digits: int = 0) -> str:
    if math.isinf(value):
        return "∞"
    return f"{value:,.{digits}f}"


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    if rank == low or ordered[low] == ordered[high]:
        return ordered[low]  # also when it is infinite (a value that never came)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def run_wrk(url: str, script: str, seconds: float, env: dict[str, str]) -> dict[str, float]:
    cmd = [
        "wrk",
        "-t1",
        f"-c{CONCURRENCY}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(BENCH / "wrk" / script),
        url,
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout  # noqa: S603
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    result = {"rps": rps, "requests": requests, "non_2xx": int(bad.group(1)) if bad else 0}
    for q in ("50", "99"):
        found = re.search(rf"\s{q}%\s+([\d.]+)(us|ms|s)\b", out)
        if found:
            scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]
            result[f"p{q}_ms"] = float(found.group(1)) * scale
    if errors:
        result["socket_errors"] = errors.group(1)  # type: ignore[assignment]
    return result


def fake(path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    if body is None and path in ("/_bench/stats", "/_bench/arrivals"):
        response = httpx.get(FAKE_URL + path, timeout=30.0)
    else:
        response = httpx.post(FAKE_URL + path, json=body or {}, timeout=30.0)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def start_fake(logs: Path, *, rate: float, latency_ms: float = 0.0) -> Proc:
    proc = Proc(
        "fake-ses",
        [
            PYTHON,
            str(ROOT / "tests" / "fake_ses.py"),
            "--port",
            str(FAKE_PORT),
            "--rate",
            str(rate),
            "--latency-ms",
            str(latency_ms),
        ],
        base_env(),
        logs,
    )
    proc.wait_ready(f"{FAKE_URL}/_bench/ping")
    return proc


def start_tegami(logs: Path, *, worker: bool, **extra: str) -> Proc:
    env = tegami_env(TEGAMI_RUN_WORKER="true" if worker else "false", **extra)
    proc = Proc(
        f"tegami-serve-{ACTIVE.label}",
        [TEGAMI, "serve", "--host", "127.0.0.1", "--port", str(TEGAMI_PORT)],
        env,
        logs,
        cwd=ACTIVE.root,
    )
    proc.wait_ready(f"http://127.0.0.1:{TEGAMI_PORT}/readyz")
    return proc


def start_ceiling(logs: Path, **extra: str) -> Proc:
    env = base_env()
    env.update(CEILING_DATABASE_URL=ACTIVE.db_url, **extra)
    proc = Proc(
        "ceiling",
        [
            PYTHON,
            "-m",
            "uvicorn",
            "bench.ceiling:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(CEILING_PORT),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env,
        logs,
    )
    proc.wait_ready(f"http://127.0.0.1:{CEILING_PORT}/healthz")
    return proc


def start_worker(logs: Path, name: str, **extra: str) -> Proc:
    return Proc(
        f"{name}-{ACTIVE.label}", [TEGAMI, "worker"], tegami_env(**extra), logs, ACTIVE.root
    )


def wait_for(check: Callable[[], bool], timeout: float, every: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return check()


# -- 1. accept throughput -----------------------------------------------------------------------


def bench_accept(profile: Profile, logs: Path, first: int = 0) -> dict[str, Any]:
    api_key = ACTIVE.api_key
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


# -- 8. accepted mails per second: batches against single sends ---------------------------------


def _message_rows() -> int:
    return int(db(lambda c: c.fetchval("SELECT count(*) FROM message")))


def bench_batch(profile: Profile, logs: Path, first: int = 0) -> dict[str, Any]:
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
                BENCH_API_KEY=ACTIVE.api_key,
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


# -- 2. accept-to-SES latency -------------------------------------------------------------------


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


def bench_latency(profile: Profile, logs: Path, first: int = 0) -> dict[str, Any]:
    api_key = ACTIVE.api_key
    fake_ses = start_fake(logs, rate=1000)
    series = {name: Series() for name in ("p50", "p99", "floor_p50", "floor_p99")}
    details: list[dict[str, Any]] = []
    try:
        for run in range(first, first + profile.runs):
            reset_tables()
            proc = start_tegami(logs, worker=True)
            url = f"http://127.0.0.1:{TEGAMI_PORT}/emails/verify-email"
            result = _latency_run(url, profile.latency_seconds, f"t{run}", api_key, logs, proc)
            proc.stop()
            series["p50"].add(result["p50_ms"])
            series["p99"].add(result["p99_ms"])
            details.append({"run": run, "which": "tegami", **result})
            log(f"latency run {run} tegami: {result}")
            proc = start_ceiling(logs, CEILING_SES_URL=FAKE_URL)
            url = f"http://127.0.0.1:{CEILING_PORT}/forward/emails/verify-email"
            result = _latency_run(url, profile.latency_seconds, f"c{run}", api_key, logs, proc)
            proc.stop()
            series["floor_p50"].add(result["p50_ms"])
            series["floor_p99"].add(result["p99_ms"])
            details.append({"run": run, "which": "floor", **result})
            log(f"latency run {run} floor: {result}")
    finally:
        fake_ses.stop()
    return {**series, "details": details}


# -- 3. drain -----------------------------------------------------------------------------------


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


def bench_drain(profile: Profile, logs: Path, first: int = 0) -> dict[str, Any]:
    key_id = ACTIVE.key_id
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


# -- 4. rate accuracy ---------------------------------------------------------------------------


def bench_rate(profile: Profile, logs: Path, first: int = 0) -> dict[str, Any]:
    key_id = ACTIVE.key_id
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


# -- 5. SNS ingest ------------------------------------------------------------------------------


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


def bench_sns(profile: Profile, logs: Path, first: int = 0) -> dict[str, Any]:
    key_id = ACTIVE.key_id
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


# -- 6. account mail behind a matching backlog --------------------------------------------------


def _resets_at_one_per_second(seconds: int, run: int) -> list[dict[str, Any]]:
    """POST /emails/password-reset once a second for ``seconds`` s; each request's wall-clock
    send time (the fake SES stamps arrivals with the same clock), status and the id answered."""
    sent: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {ACTIVE.api_key}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{TEGAMI_PORT}", headers=headers) as client:
        start = time.monotonic()
        for index in range(seconds):
            time.sleep(max(0.0, start + index - time.monotonic()))
            body = {
                "to": f"reset-{ACTIVE.label}-{run}-{index}@example.com",
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


def bench_priority(profile: Profile, logs: Path, first: int = 0) -> dict[str, Any]:
    rate = 14.0
    fake_ses = start_fake(logs, rate=rate)
    series = {name: Series() for name in ("p50", "p99", "matching_per_second", "throttled")}
    details: list[dict[str, Any]] = []
    try:
        for run in range(first, first + profile.runs):
            reset_tables()
            load_messages(
                MATCHING_BACKLOG,
                key_id=ACTIVE.key_id,
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
                "version": ACTIVE.label,
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
            log(f"priority run {run} {ACTIVE.label}: {detail}")
    finally:
        fake_ses.stop()
    return {**series, "rate": rate, "details": details}


# -- 7. duplicates at 1/s with several replicas -------------------------------------------------


def bench_replicas(profile: Profile, logs: Path, first: int = 0) -> dict[str, Any]:
    fake_ses = start_fake(logs, rate=1)
    series = {name: Series() for name in ("twice", "throttled", "per_second")}
    details: list[dict[str, Any]] = []
    count = profile.replicas_messages
    try:
        for run in range(first, first + profile.runs):
            reset_tables()
            load_messages(count, key_id=ACTIVE.key_id, prefix="replicas")
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
                "version": ACTIVE.label,
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
            log(f"replicas run {run} {ACTIVE.label}: {detail}")
    finally:
        fake_ses.stop()
    return {**series, "details": details}


# -- the loadgen's own ceiling ------------------------------------------------------------------


def bench_generator(logs: Path) -> dict[str, Any]:
    fake_ses = start_fake(logs, rate=1000)
    try:
        target = logs / "self.json"
        subprocess.run(  # noqa: S603
            [
                PYTHON,
                str(BENCH / "loadgen.py"),
                "self",
                "--url",
                FAKE_URL,
                "--seconds",
                "3",
                "--out",
                str(target),
            ],
            env=base_env(),
            check=True,
            cwd=ROOT,
        )
        loadgen = json.loads(target.read_text())
        wrk = run_wrk(f"{FAKE_URL}/_bench/ping", "ping.lua", 3, base_env())
    finally:
        fake_ses.stop()
    return {"loadgen_per_second": loadgen["per_second"], "wrk_per_second": wrk["rps"]}


# -- the report ---------------------------------------------------------------------------------


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


def figure_rows(results: dict[str, Any], profile: Profile) -> list[Row]:
    """The table's rows for one version's results (a figure that did not run has none)."""
    rows: list[Row] = []
    accept = results.get("accept")
    if accept:
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
    latency = results.get("latency")
    if latency:
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
    drain = results.get("drain")
    if drain:
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
    rate = results.get("rate")
    if rate:
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
    sns = results.get("sns")
    if sns:
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
    priority = results.get("priority")
    if priority and priority["p99"].values:
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
    replicas = results.get("replicas")
    if replicas and replicas["twice"].values:
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
    batched = results.get("batch")
    if batched and batched["batch"].values:
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
    rows += year_rows(results.get("year"))
    return rows


# The send path is said to keep its latency when a year of mail at most doubles it (one run
# on this shared machine moves by a fifth or more); blocked, it would wait for seconds.
YEAR_SLOWER_AT_MOST = 2.0
YEAR_DURING_P99_MS = 100.0
YEAR_DELETE_SECONDS = 600.0  # a day's worth within one purge interval
YEAR_GROWTH_AT_MOST = 1.05  # a day deleted, vacuumed, a day added: the same size


def year_rows(year: dict[str, Any] | None) -> list[Row]:
    """Figure 9: the send path with a year of mail kept, against empty tables (the ceiling
    column; ratio loaded / empty, lower is better), and retention's delete."""
    if not year or "purge_seconds" not in year:
        return []
    kept = f"{year['rows']:,} mails kept"
    rows: list[Row] = []
    names = {"accept": "accept", "claim": "claim", "check": "pre-send check"}
    for step, name in names.items():
        for q in ("p50", "p99"):
            loaded, empty = year[f"loaded_{step}_{q}"], year[f"empty_{step}_{q}"]
            ratio = loaded.median / empty.median
            rows.append(
                Row(
                    "9",
                    f"{name} {q}, ms ({kept}; ceiling: empty tables)",
                    f"ratio ≤ {YEAR_SLOWER_AT_MOST:g}",
                    loaded.show(2),
                    f"{empty.show(2)} empty",
                    f"{ratio:.2f}",
                    ratio <= YEAR_SLOWER_AT_MOST,
                    loaded.median,
                    "lower",
                )
            )
    for step, name in names.items():
        during, loaded = year[f"during_{step}_p99"], year[f"loaded_{step}_p99"]
        rows.append(
            Row(
                "9",
                f"{name} p99 while retention deletes a day ({year['deleted']:,} mails), ms",
                f"≤ {YEAR_DURING_P99_MS:g}",
                during.show(2),
                f"{loaded.show(2)} loaded",
                f"{during.median / loaded.median:.2f}",
                during.median <= YEAR_DURING_P99_MS,
                during.median,
                "lower",
            )
        )
    purge = year["purge_seconds"]
    rows.append(
        Row(
            "9",
            f"retention pass deleting a day ({year['deleted']:,} mails and their events), s",
            f"≤ {YEAR_DELETE_SECONDS:g}",
            purge.show(1),
            "",
            "",
            purge.median <= YEAR_DELETE_SECONDS,
            purge.median,
            "lower",
        )
    )
    params, scan = year["params_seconds"], year["params_without_index_seconds"]
    rows.append(
        Row(
            "9",
            "retention's look for spent link params, s (ceiling: the same without its index)",
            "",
            params.show(3),
            f"{scan.show(2)} without",
            f"{params.median / scan.median:.3f}",
            None,
            params.median,
            "lower",
        )
    )
    before, after = year["mb_before_delete"], year["mb_after_next_day"]
    growth = after.median / before.median
    rows.append(
        Row(
            "9",
            "message + message_event, MB: a day deleted, vacuumed, the next day added "
            "(ceiling: before the delete)",
            f"ratio ≤ {YEAR_GROWTH_AT_MOST:g}",
            after.show(0),
            f"{before.show(0)} before",
            f"{growth:.3f}",
            growth <= YEAR_GROWTH_AT_MOST,
            after.median,
            "lower",
        )
    )
    return rows


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


def figure_table(results: dict[str, Any], profile: Profile) -> list[str]:
    rows = figure_rows(results["now"], profile)
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
    before = {(r.number, r.figure): r for r in figure_rows(ran, profile)}
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
        *figure_table(results, profile),
    ]
    generator = results.get("generator")
    lines += ["", "## How each figure is measured", ""]
    lines += [
        "1. **Accept throughput.** `tegami serve` (one process, `TEGAMI_RUN_WORKER=false`) and "
        "the ceiling (`uvicorn bench.ceiling:app`, one process: pydantic body, one INSERT "
        "through an asyncpg pool of the same size) each get `wrk -t1 -c20` for "
        f"{profile.accept_seconds} s after a 2-s warm-up, `POST /emails/verify-email`, every "
        "request to a new address (bench/wrk/accept.lua). Non-2xx answers are counted and "
        "must be zero.",
        "2. **Accept-to-SES latency.** `tegami serve` with its worker, fake SES at 0 ms "
        "(MaxSendRate 1,000), load from bench/loadgen.py open loop at exactly 100 req/s "
        f"for {profile.latency_seconds} s after 2 s of warm-up: from the moment the request is "
        "sent to the moment the fake SES parsed the SendEmail carrying that mail's "
        "`tegami_id` tag (both clocks are the same machine's). The floor is bench/ceiling.py "
        "answering after one INSERT and then posting a SendEmail straight to the fake.",
        f"3. **Drain.** {profile.drain_messages:,} messages COPYed into a migrated database "
        "exactly as the API writes them (recipient, message, `accepted` event; 70 % "
        "verify-email, 10 % each other type), then one `tegami worker` "
        f"(`TEGAMI_SEND_CONCURRENCY={SEND_CONCURRENCY}`) against the fake SES (MaxSendRate "
        "5,000, enforced). Rate = messages / (last arrival − first arrival) at the fake; "
        "RSS sampled every 0.25 s from /proc. The ceiling is bench/loadgen.py blasting "
        "SendEmail requests of the same size straight at the fake with the same number of "
        "connections (no database, no botocore) for 5 s.",
        "4. **Rate accuracy.** The fake SES reports MaxSendRate 14 in GetAccount and "
        "enforces it (token bucket of 14, refilled at 14/s; over it: 429 "
        "TooManyRequestsException). Two `tegami worker` processes, no TEGAMI_MAX_SEND_RATE, "
        f"a backlog that outlasts the test; sends per second in each 10-s window over "
        f"{profile.rate_seconds} s from the first send.",
        "5. **SNS ingest.** Signed SNS notifications (SignatureVersion 2, a throwaway "
        "certificate served through `TEGAMI_SNS_CERT_DIR`) carrying SES events for sent "
        "messages: 90 % Delivery, 5 % hard bounce, 3 % soft bounce, 2 % complaint. "
        f"`wrk -t1 -c20` for {profile.sns_seconds} s (bench/wrk/sns.lua); the figure is the "
        "rows `sns_message` gained, per second. The ceiling (bench/ceiling.py) parses the "
        "JSON, verifies the same RSA signature and INSERTs the MessageId.",
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
        "included) over MaxSendRate.",
        f"7. **Duplicates at 1/s.** {REPLICAS} `tegami worker` processes with "
        "`TEGAMI_MAX_SEND_RATE=1`, `TEGAMI_SEND_LEASE_SECONDS="
        f"{REPLICAS_LEASE_SECONDS}` and `TEGAMI_SEND_CONCURRENCY=32`, against the fake "
        f"enforcing 1/s (bucket of 1), {profile.replicas_messages} mails queued (as in 3): "
        "the backlog outlasts the lease. Done when no mail is queued or sending and SES "
        "has heard nothing for 3 s. Mails whose `tegami_id` reached SES more than once; "
        "the fake's 429s; sends / (last − first arrival). Code from before "
        "`TEGAMI_SEND_LEASE_SECONDS` ignores it and holds a fixed 60-s lease, which the "
        f"full profile's {FULL.replicas_messages} mails outlast too.",
        f"8. **Batches.** One `tegami serve` (`TEGAMI_RUN_WORKER=false`); `wrk -t1 -c20` for "
        f"{profile.accept_seconds} s after a 2-s warm-up, once with single sends (as in 1) "
        f"and once with `POST /emails/verify-email/batch` of {BATCH_SIZE} mails "
        "(bench/wrk/batch.lua), in turns, every mail to a new address. The figure is the "
        "rows `message` gained, per second; the ceiling column holds the single sends of the "
        "same run, and the ratio is batch / single. Code without batches answers 404 (n/a).",
        f"9. **A year of mail.** bench/year.py, once, in its own database: {profile.year_rows:,} "
        "mails (`BENCH_YEAR_ROWS`) with three events each, a tenth of them a day past "
        "retention and the rest over 400 days, loaded by `INSERT … SELECT` from "
        "`generate_series` with every index in place, then `VACUUM ANALYZE`. The send path "
        "(`service.accept` for 14 mails, then `outbox.claim`, `outbox.check_before_send`, "
        "`outbox.finish`, four times a second, on one connection) for 30 s on the empty "
        "tables and 30 s on the loaded ones; then `app.ops.retention.purge` with the send "
        "path going on its own connection; then autovacuum's pass (run by the bench, "
        "throttled as autovacuum is, where the server has autovacuum off) and the next "
        "day's mail (as many as were deleted). Sizes are `pg_total_relation_size`. The "
        "ratio is loaded / empty (lower is better).",
    ]
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
            for name, value in figures.items()
            if isinstance(value, dict) and "details" in value
        }
        for label, figures in results.items()
        if label in ("now", "before")
    }
    lines.append(json.dumps(details, indent=1, default=str))
    lines += ["```", ""]
    notes = BENCH / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text()]
    path.write_text("\n".join(lines))


# -- 9. a year of mail -------------------------------------------------------------------------


def bench_year(profile: Profile, logs: Path, first: int = 0) -> dict[str, Any]:
    """bench/year.py in its own database, once (its load is most of the time): the send path
    on empty and on loaded tables, and retention's delete of a day's worth while sending."""
    rows = int(os.environ.get("BENCH_YEAR_ROWS", profile.year_rows))
    env = base_env()
    env.update(BENCH_ADMIN_URL=ADMIN_URL, BENCH_YEAR_ROWS=str(rows))
    env.setdefault("BENCH_YEAR_DB", f"{DB_NAME}_year")
    wait_quiet()
    with (logs / "year.log").open("w") as errors:
        done = subprocess.run(  # noqa: S603
            [PYTHON, str(BENCH / "year.py")],
            env=env,
            cwd=ACTIVE.root,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            check=True,
        )
    found = json.loads(done.stdout.strip().splitlines()[-1])
    log(f"year: {json.dumps(found, default=str)}")
    return year_figures(found, run=first)


def year_figures(found: dict[str, Any], *, run: int = 0) -> dict[str, Any]:
    """Figure 9's series from bench/year.py's JSON (also for a saved run's JSON)."""
    out: dict[str, Any] = {"details": [{"run": run, **found}]}
    for phase in ("empty", "loaded", "during", "vacuum"):
        timings = found["vacuum"]["send_path"] if phase == "vacuum" else found[phase]
        for step, figures in timings.items():
            for q in ("p50", "p99"):
                out[f"{phase}_{step}_{q}"] = Series([figures[f"{q}_ms"]])
    out["purge_seconds"] = Series([found["purge_seconds"]])
    out["vacuum_seconds"] = Series([found["vacuum"]["seconds"]])
    out["params_seconds"] = Series([found["params_seconds"]])
    out["params_without_index_seconds"] = Series([found["params_without_index_seconds"]])
    for moment in ("before_delete", "after_delete", "after_next_day"):
        sizes = found[f"sizes_{moment}"]
        out[f"mb_{moment}"] = Series([sum(t["total_mb"] for t in sizes.values())])
    out["rows"] = found["rows"]
    out["deleted"] = found["purged"]["messages"]
    return out


# -- main ---------------------------------------------------------------------------------------

FIGURES: dict[str, Callable[[Profile, Path, int], dict[str, Any]]] = {
    "accept": bench_accept,
    "latency": bench_latency,
    "drain": bench_drain,
    "rate": bench_rate,
    "sns": bench_sns,
    "priority": bench_priority,
    "replicas": bench_replicas,
    "batch": bench_batch,
    "year": bench_year,
}
ALL = tuple(FIGURES)


def merged(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One figure's results from several calls: series and details joined, the rest first."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, Series):
                out.setdefault(key, Series()).values.extend(value.values)
            elif isinstance(value, list):
                out.setdefault(key, []).extend(value)
            elif isinstance(value, dict):
                out[key] = merged([out.get(key, {}), value])
            else:
                out.setdefault(key, value)
    return out


def measure(
    name: str, profile: Profile, logs: Path, versions: Sequence[Version]
) -> dict[str, dict[str, Any]]:
    """One figure for each version. With two, run by run in turns (now first in even runs),
    so that both see the machine in the same state; a failure of the older code is logged
    and reported, not fatal."""
    figure = FIGURES[name]
    if len(versions) == 1:
        plan = [(0, versions[0])]
        each = profile
    else:
        each = Profile(**{**profile.__dict__, "runs": 1})
        plan = [
            (run, version)
            for run in range(profile.runs)
            for version in (versions if run % 2 == 0 else list(reversed(versions)))
        ]
    parts: dict[str, list[dict[str, Any]]] = {version.label: [] for version in versions}
    for run, version in plan:
        started = time.monotonic()
        with measuring(version):
            try:
                parts[version.label].append(figure(each, logs, run))
            except Exception as exc:
                if version is NOW:
                    raise
                log(f"{name} run {run} {version.label} failed: {exc!r}")
                stop_all()
                error = {"run": run, "version": version.label, "error": repr(exc)}
                parts[version.label].append({"details": [error]})
        log(f"{name} run {run} {version.label} took {time.monotonic() - started:.0f} s")
    return {label: merged(found) for label, found in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small version, a few minutes")
    parser.add_argument("--runs", type=int, help="runs per benchmark (default 3, quick 2)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(ALL)}")
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
    only = tuple(args.only.split(",")) if args.only else ALL
    unknown = [name for name in only if name not in FIGURES]
    if unknown:
        parser.error(f"unknown figure {', '.join(unknown)}; choose from {','.join(ALL)}")
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
        results["generator"] = bench_generator(logs)
        log(f"generators: {results['generator']}")
        for name in ALL:
            if name in only:
                for label, found in measure(name, profile, logs, versions).items():
                    results[label][name] = found
    finally:
        stop_all()
    argv = ["bench/run.py", *sys.argv[1:]]
    write_report(output, argv, profile, results, time.monotonic() - started, baseline)
    log(f"report written to {output}")
    print(output.read_text().split("## How each figure")[0])


if __name__ == "__main__":
    main()
