"""`tegami dev` run as a new user runs it, in a directory of its own, and the commands a
newcomer runs beside it with no TEGAMI_ settings at all: they find dev's port, database and
webhook settings by themselves; `--reset` starts over after the simulate tour."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.served import PROJECT, free_port


class Hook:
    """A webhook receiver on 127.0.0.1 that keeps the bodies it got."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Dev:
    """`tegami dev` in ``workdir``, as a subprocess; stopped with SIGINT like Ctrl-C."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[str] | None = None
        self.output = ""

    def env(self) -> dict[str, str]:
        # A newcomer's shell: no TEGAMI_ settings, no AWS endpoint of the tests.
        return {k: v for k, v in os.environ.items() if not k.startswith(("TEGAMI_", "AWS_"))}

    def start(self, *args: str) -> str:
        self.process = subprocess.Popen(  # noqa: S603 (our own command)
            [sys.executable, "-m", "app.cli", "dev", "--port", str(self.port), *args],
            cwd=self.workdir,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + 120
        lines = []
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                break
            lines.append(line)
            if "try:" in line:
                break
        self.output = "".join(lines)
        threading.Thread(target=self.process.stdout.read, daemon=True).start()  # keep it drained
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self.output
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"tegami dev did not start:\n{self.output}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def tegami(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 (our own command)
            [sys.executable, "-m", "app.cli", *args],
            cwd=self.workdir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    (tmp_path / "alembic.ini").symlink_to(PROJECT / "alembic.ini")
    running = Dev(tmp_path)
    yield running
    running.stop()


def test_commands_beside_tegami_dev_find_its_port_database_and_webhooks(dev: Dev) -> None:
    hook = Hook()
    printed = dev.start("--webhook-url", hook.url)
    key = re.search(r"API key:\s+(\S+)", printed)
    database = re.search(r"database:\s+(postgresql://\S+)", printed)
    assert key and database, printed
    auth = {"Authorization": f"Bearer {key.group(1)}"}

    sent = httpx.post(
        f"{dev.url}/emails/matching-notification",
        json={"to": "taro@example.com", "params": {"job_url": "https://proworks.jp/jobs/1"}},
        headers=auth,
    )
    assert sent.status_code == 202
    email_id = sent.json()["id"]

    def status() -> str:
        return str(httpx.get(f"{dev.url}/emails/{email_id}", headers=auth).json()["status"])

    _wait(lambda: status() == "sent")

    # The mailbox copy carries a Message-ID, as SES's would.
    [mail] = (dev.workdir / ".tegami" / "mailbox").glob("*.eml")
    assert re.search(rb"^Message-ID: <[^>]+@[^>]+>\r?$", mail.read_bytes(), re.M)

    # simulate: no --url, and dev is not on 8000: it finds dev's port.
    simulated = dev.tegami("simulate", "bounce", "taro@example.com")
    assert simulated.returncode == 0, simulated.stderr
    _wait(lambda: status() == "bounced")

    # The database-only commands need no TEGAMI_DATABASE_URL here.
    keys = dev.tegami("api-key", "list")
    assert keys.returncode == 0, keys.stderr
    assert "dev" in keys.stdout and "with the settings of `tegami dev`" in keys.stderr
    held = dev.tegami("held", "list")
    assert (held.returncode, held.stdout.splitlines()[0]) == (0, "0 held"), held.stderr

    # webhooks test reaches the receiver dev posts to, without production settings.
    tested = dev.tegami("webhooks", "test")
    assert tested.returncode == 0, tested.stderr
    _wait(lambda: any(body["type"] == "webhook.test" for body in hook.bodies))

    # The dev mailbox shows each event's data as JSON.
    page = httpx.get(f"{dev.url}/dev/mailbox").text
    assert "&quot;email_id&quot;: &quot;" + email_id in page

    # After the tour: --reset starts over (no mail, no suppression, no rates).
    dev.stop()
    again = re.search(r"API key:\s+(\S+)", dev.start("--reset"))
    assert again, dev.output
    auth = {"Authorization": f"Bearer {again.group(1)}"}
    assert httpx.get(f"{dev.url}/emails/{email_id}", headers=auth).status_code == 404
    recipient = httpx.get(f"{dev.url}/recipients/taro@example.com", headers=auth)
    assert recipient.status_code == 404
    reputation = httpx.get(f"{dev.url}/status/reputation", headers=auth).json()
    assert reputation["sends_in_window"] == 0
    assert list((dev.workdir / ".tegami" / "mailbox").glob("*.eml")) == []


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_stopping_tegami_dev_stops_its_postgresql(dev: Dev, stop_signal: signal.Signals) -> None:
    dev.start()
    pid_file = dev.workdir / ".tegami" / "pgdata" / "postmaster.pid"
    postgres = int(pid_file.read_text().split()[0])
    assert dev.process is not None
    dev.process.send_signal(stop_signal)
    assert dev.process.wait(30) == 0  # a clean stop, not a kill

    def postgres_gone() -> bool:
        try:
            os.kill(postgres, 0)
        except ProcessLookupError:
            return True
        return False

    _wait(postgres_gone, within=30)
    assert not pid_file.exists()


def _wait(condition: Any, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)
