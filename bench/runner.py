"""What every figure of the bench shares: the versions measured, the profiles, processes
started and stopped by their pid, the CPU and memory meters, settings, the database (fresh
per version; rows COPYed as the API writes them), wrk, the fake SES (tests/fake_ses.py, as a
process) and the runs of one figure for each version, in turns."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
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


def measure_generators(logs: Path) -> dict[str, Any]:
    """The load generators' own ceilings, against the fake SES's ping."""
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


# -- a figure's runs, for each version --------------------------------------------------------

Measure = Callable[[Profile, Path, int], dict[str, Any]]  # a figure's ``measure``


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


def measure_versions(
    name: str, figure: Measure, profile: Profile, logs: Path, versions: Sequence[Version]
) -> dict[str, dict[str, Any]]:
    """One figure for each version. With two, run by run in turns (now first in even runs),
    so that both see the machine in the same state; a failure of the older code is logged
    and reported, not fatal."""
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
