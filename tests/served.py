"""`tegami serve` as a real process on 127.0.0.1, for tests that speak HTTP from outside
(schemathesis's CLI, the TypeScript client): the test database, the mailbox backend."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import make_settings

PROJECT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServedTegami:
    def __init__(
        self, database_url: str, workdir: Path, *, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mailbox = workdir / "mailbox"
        self.log = workdir / "serve.log"
        settings = make_settings(database_url)
        self.env = {
            **os.environ,
            "TEGAMI_DATABASE_URL": database_url,
            "TEGAMI_PUBLIC_BASE_URL": self.url,
            "TEGAMI_UNSUBSCRIBE_SECRET": settings.unsubscribe_secret[0].get_secret_value(),
            "TEGAMI_ADDRESS_HASH_SECRET": settings.address_hash_secret.get_secret_value(),
            "TEGAMI_LINK_HOSTS": ",".join(settings.link_hosts),
            "TEGAMI_SENDER_POSTAL_ADDRESS": settings.sender_postal_address,
            "TEGAMI_SENDER_CONTACT": settings.sender_contact,
            "TEGAMI_MAIL_BACKEND": "mailbox",
            "TEGAMI_MAILBOX_DIR": str(self.mailbox),
            "TEGAMI_MAX_SEND_RATE": "200",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        """Run `tegami ARGS` against the same database; its stdout."""
        done = subprocess.run(  # noqa: S603 (our own CLI)
            [sys.executable, "-m", "app.cli", *args],
            cwd=PROJECT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip()

    def start(self, *, within: float = 30.0) -> ServedTegami:
        with self.log.open("ab") as out:
            command = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1"]
            self.process = subprocess.Popen(  # noqa: S603 (our own CLI)
                [*command, "--port", str(self.port)],
                cwd=PROJECT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tegami serve exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)  # polling for readiness, with a deadline
        raise RuntimeError(f"tegami serve not ready in {within}s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
