"""A fast fake of Amazon SES v2 over HTTP, for the benchmarks (never for the tests: moto is).

    python bench/fake_ses.py --port 9000 [--rate 14] [--burst 14] [--latency-ms 50]
                             [--error-rate 0.01] [--throttle-rate 0.01]

Speaks the two calls tegami makes, the way botocore expects them (rest-json):
``POST /v2/email/outbound-emails`` (SendEmail) answers ``{"MessageId": ...}``;
``GET /v2/email/account`` (GetAccount) reports ``SendQuota.MaxSendRate``.

Like SES, it enforces the send rate: a token bucket of ``--burst`` sends refilled at ``--rate``
per second; a send over it is answered 429 ``TooManyRequestsException`` and counted. It can
also answer late (``--latency-ms``), fail a fraction of sends with 500 ``InternalFailure``, or
throttle a fraction at random.

Every accepted send is recorded: arrival time (``time.time()``), the ``tegami_id`` EmailTag
and the To address; so is the time of each 429 for the rate. The bench reads and resets them
over HTTP: ``GET /_bench/stats``, ``GET /_bench/arrivals``, ``POST /_bench/reset``,
``POST /_bench/config`` (a JSON object with any of rate, burst, latency_ms, error_rate,
throttle_rate).

Written on asyncio + httptools (the parser uvicorn uses) so that the fake costs little CPU:
on a 2-core machine every cycle it burns is taken from the service under test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httptools


@dataclass
class FakeSes:
    rate: float = 1000.0
    burst: float = 1000.0
    latency_ms: float = 0.0
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    tokens: float = 0.0
    refilled_at: float = field(default_factory=time.monotonic)
    arrivals: list[tuple[float, str, str]] = field(default_factory=list)
    throttled_at: list[float] = field(default_factory=list)  # time.time() of each 429
    sent: int = 0
    throttled: int = 0
    failed: int = 0
    malformed: int = 0
    requests: int = 0
    connections: int = 0

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def configure(self, values: dict[str, Any]) -> None:
        for name in ("rate", "burst", "latency_ms", "error_rate", "throttle_rate"):
            if name in values:
                setattr(self, name, float(values[name]))
        self.tokens = self.burst
        self.refilled_at = time.monotonic()

    def reset(self) -> None:
        self.arrivals = []
        self.throttled_at = []
        self.sent = self.throttled = self.failed = self.malformed = self.requests = 0
        self.connections = 0
        self.tokens = self.burst
        self.refilled_at = time.monotonic()

    def take_token(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.refilled_at) * self.rate)
        self.refilled_at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def stats(self) -> dict[str, Any]:
        first = self.arrivals[0][0] if self.arrivals else None
        last = self.arrivals[-1][0] if self.arrivals else None
        return {
            "sent": self.sent,
            "throttled": self.throttled,
            "failed": self.failed,
            "malformed": self.malformed,
            "requests": self.requests,
            "connections": self.connections,
            "first_arrival": first,
            "last_arrival": last,
            "config": {
                "rate": self.rate,
                "burst": self.burst,
                "latency_ms": self.latency_ms,
                "error_rate": self.error_rate,
                "throttle_rate": self.throttle_rate,
            },
        }

    def send_email(self, body: bytes) -> tuple[int, dict[str, Any], str | None]:
        """(status, JSON answer, error type) for one SendEmail."""
        arrived = time.time()
        try:
            request = json.loads(body)
            to = request["Destination"]["ToAddresses"][0]
            tags = {tag["Name"]: tag["Value"] for tag in request.get("EmailTags", [])}
            if "Raw" not in request["Content"] and "Simple" not in request["Content"]:
                raise KeyError("Content")
        except (ValueError, KeyError, IndexError, TypeError):
            self.malformed += 1
            return 400, {"message": "malformed SendEmail"}, "BadRequestException"
        if self.throttle_rate and random.random() < self.throttle_rate:  # noqa: S311
            self.throttled += 1
            return 429, {"message": "Maximum sending rate exceeded."}, "TooManyRequestsException"
        if not self.take_token():
            self.throttled += 1
            self.throttled_at.append(arrived)
            return 429, {"message": "Maximum sending rate exceeded."}, "TooManyRequestsException"
        if self.error_rate and random.random() < self.error_rate:  # noqa: S311
            self.failed += 1
            return 500, {"message": "fake internal failure"}, "InternalFailure"
        self.sent += 1
        self.arrivals.append((arrived, tags.get("tegami_id", ""), to))
        return 200, {"MessageId": f"fake-{uuid.uuid4()}-000000"}, None

    def account(self) -> dict[str, Any]:
        return {
            "DedicatedIpAutoWarmupEnabled": False,
            "EnforcementStatus": "HEALTHY",
            "ProductionAccessEnabled": True,
            "SendQuota": {
                "Max24HourSend": 10_000_000.0,
                "MaxSendRate": self.rate,
                "SentLast24Hours": float(self.sent),
            },
            "SendingEnabled": True,
        }


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 429: b"Too Many Requests"}


class _Connection(asyncio.Protocol):
    def __init__(self, ses: FakeSes) -> None:
        self.ses = ses
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.queue: asyncio.Queue[tuple[bytes, bytes, bytes, bool]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.ses.connections += 1
        self.task = asyncio.get_running_loop().create_task(self._answer())

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        self.queue.put_nowait(
            (method, self.url, b"".join(self.body), self.parser.should_keep_alive())
        )

    # answers, in request order (keep-alive clients may send the next request early)
    async def _answer(self) -> None:
        while True:
            method, url, body, keep_alive = await self.queue.get()
            status, answer, error = await self._route(method, url, body)
            payload = json.dumps(answer).encode()
            headers = [
                b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Error")),
                b"Content-Type: application/json",
                b"Content-Length: %d" % len(payload),
                b"x-amzn-RequestId: " + uuid.uuid4().hex.encode(),
            ]
            if error is not None:
                headers.append(b"x-amzn-ErrorType: " + error.encode())
            if not keep_alive:
                headers.append(b"Connection: close")
            assert self.transport is not None
            self.transport.write(b"\r\n".join(headers) + b"\r\n\r\n" + payload)
            if not keep_alive:
                self.transport.close()
                return

    async def _route(
        self, method: bytes, url: bytes, body: bytes
    ) -> tuple[int, dict[str, Any], str | None]:
        path = url.split(b"?", 1)[0]
        ses = self.ses
        if method == b"POST" and path == b"/v2/email/outbound-emails":
            ses.requests += 1
            if ses.latency_ms:
                await asyncio.sleep(ses.latency_ms / 1000.0)
            status, answer, error = ses.send_email(body)
            if error is not None:
                answer = {"__type": error, **answer}
            return status, answer, error
        if method == b"GET" and path == b"/v2/email/account":
            return 200, ses.account(), None
        if path == b"/_bench/stats":
            return 200, ses.stats(), None
        if path == b"/_bench/ping":
            return 200, {"ok": True}, None
        if method == b"POST" and path == b"/_bench/reset":
            ses.reset()
            return 200, ses.stats(), None
        if method == b"POST" and path == b"/_bench/config":
            ses.configure(json.loads(body or b"{}"))
            return 200, ses.stats(), None
        if method == b"GET" and path == b"/_bench/arrivals":
            return 200, {"arrivals": ses.arrivals, "throttled_at": ses.throttled_at}, None
        return 404, {"message": "not found"}, "NotFoundException"


async def serve(ses: FakeSes, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(ses), host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--rate", type=float, default=1000.0, help="MaxSendRate, enforced")
    parser.add_argument("--burst", type=float, help="token bucket size (default: the rate)")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--throttle-rate", type=float, default=0.0)
    args = parser.parse_args()
    ses = FakeSes(
        rate=args.rate,
        burst=args.burst or max(1.0, args.rate),
        latency_ms=args.latency_ms,
        error_rate=args.error_rate,
        throttle_rate=args.throttle_rate,
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(ses, args.host, args.port))
    else:
        uvloop.run(serve(ses, args.host, args.port))


if __name__ == "__main__":
    main()
