"""The app's webhook endpoint for tests, on 127.0.0.1 over real HTTP: it verifies every post
with the `standardwebhooks` library, as the app does, and answers as the event's address asks:

- ``drip…@``: the answer (status line, headers, body) one byte a second, for as long as the
  client listens: a receiver that never stops and never trips a per-read timeout;
- ``huge…@``: 200 and a 300 MB body, generated as it is written (never held in memory);
- anything else: 204 at once.
"""

from __future__ import annotations

import base64
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook

SECRET = "whsec_" + base64.b64encode(b"tegami-receivers-test-secret-32b").decode()
HUGE_BYTES = 300 * 1024 * 1024
_CHUNK = b"x" * 65536


class Receiver:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []  # verified, in arrival order
        self.drips_started = 0
        self.huge_started = 0
        self.huge_ended: list[int] = []  # bytes written before each huge answer ended
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                event = Webhook(SECRET).verify(body, headers)  # a bad signature: a 500 here
                address = str(event["data"].get("address") or "")
                with receiver._lock:
                    receiver.events.append(event)
                try:
                    if address.startswith("drip"):
                        receiver._drip(self)
                    elif address.startswith("huge"):
                        receiver._huge(self)
                    else:
                        self.send_response(204)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                except OSError:
                    pass  # tegami hung up: what the tests want

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def _drip(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.drips_started += 1
        wire = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"." * 100000
        for i in range(len(wire)):
            handler.wfile.write(wire[i : i + 1])
            handler.wfile.flush()
            if self._stop.wait(1.0):
                return

    def _huge(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.huge_started += 1
        written = 0
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", "text/plain")
            handler.send_header("Content-Length", str(HUGE_BYTES))
            handler.end_headers()
            while written < HUGE_BYTES and not self._stop.is_set():
                handler.wfile.write(_CHUNK)
                written += len(_CHUNK)
        finally:
            with self._lock:
                self.huge_ended.append(written)

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def addresses(self, event_type: str = "email.sent") -> list[str]:
        with self._lock:
            return [e["data"]["address"] for e in self.events if e["type"] == event_type]


def rss_mib(pid: int) -> tuple[float, float]:
    """The process's resident memory now and at its peak (VmRSS, VmHWM), in MiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return int(fields["VmRSS"][0]) / 1024, int(fields["VmHWM"][0]) / 1024


def wait_for(condition: Any, *, within: float) -> Any:
    """Poll ``condition`` (sync) until truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s (last value: {value!r})")
        time.sleep(0.05)  # polling with a deadline
