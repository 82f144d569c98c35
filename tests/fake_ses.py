"""An SES v2 that misbehaves on purpose, over real HTTP, for the fault tests.

moto's SES always says yes at once; the fault tests need an SES that throttles, fails and
answers late. This one runs in the test process (a thread) and is reached the way production
reaches SES, through ``AWS_ENDPOINT_URL``: the worker and botocore are exercised unchanged.

It speaks the two calls tegami makes, as botocore expects them (rest-json):
``POST /v2/email/outbound-emails`` (SendEmail) and ``GET /v2/email/account`` (GetAccount).
Each SendEmail is answered by the next scripted :class:`Answer` (then by ``default``), after
``delay`` seconds. Every request body is recorded, and so is every mail SES "sent": a mail
counts as sent once the request is in, like real SES, even when the caller dies before it
reads the answer.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Answer(Enum):
    OK = "ok"
    THROTTLED = "throttled"  # 429 TooManyRequestsException
    INTERNAL_ERROR = "internal_error"  # 500 InternalFailure
    UNAVAILABLE = "unavailable"  # 503 ServiceUnavailable
    PAUSED = "paused"  # 400 SendingPausedException
    REJECTED = "rejected"  # 400 MessageRejected
    ACCESS_DENIED = "access_denied"  # 403 AccessDeniedException: an IAM slip


_ERRORS: dict[Answer, tuple[int, str, str]] = {
    Answer.THROTTLED: (429, "TooManyRequestsException", "Maximum sending rate exceeded."),
    Answer.INTERNAL_ERROR: (500, "InternalFailure", "An internal error occurred."),
    Answer.UNAVAILABLE: (503, "ServiceUnavailable", "Service is unavailable."),
    Answer.PAUSED: (400, "SendingPausedException", "Sending is paused for this account."),
    Answer.REJECTED: (400, "MessageRejected", "Email address is not verified."),
    Answer.ACCESS_DENIED: (
        403,
        "AccessDeniedException",
        "User is not authorized to perform: ses:SendEmail",
    ),
}


@dataclass(frozen=True)
class Request:
    """One SendEmail call as SES saw it."""

    body: dict[str, Any]
    answer: Answer
    received_at: float

    @property
    def tegami_id(self) -> str | None:
        for tag in self.body.get("EmailTags", []):
            if tag.get("Name") == "tegami_id":
                return str(tag.get("Value"))
        return None

    @property
    def to(self) -> str:
        return str(self.body["Destination"]["ToAddresses"][0])


class FakeSes:
    def __init__(self, *, max_send_rate: float = 1000.0) -> None:
        self.max_send_rate = max_send_rate
        # What GetAccount says: False for an account SES has paused.
        self.sending_enabled = True
        self.account_reads = 0
        self.default = Answer.OK
        self.delay = 0.0
        # A throttling storm: every SendEmail is answered 429 until this time.monotonic().
        self.throttle_until = 0.0
        # The sandbox: mail to these recipients is rejected, naming them, as SES does.
        self.unverified: set[str] = set()
        # What MessageRejected says ("Email address is not verified." when empty).
        self.rejection = ""
        self.requests: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._script: deque[Answer] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control ------------------------------------------------------------------------

    def start(self) -> FakeSes:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/v2/email/account":
                    self._reply(404, {"message": "not found"}, error="NotFoundException")
                    return
                with fake._lock:
                    fake.account_reads += 1
                self._reply(
                    200,
                    {
                        "SendQuota": {
                            "Max24HourSend": 50000.0,
                            "MaxSendRate": fake.max_send_rate,
                            "SentLast24Hours": float(len(fake.sent())),
                        },
                        "SendingEnabled": fake.sending_enabled,
                        "ProductionAccessEnabled": True,
                        "EnforcementStatus": "HEALTHY" if fake.sending_enabled else "SHUTDOWN",
                    },
                )

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.split("?")[0] != "/v2/email/outbound-emails":
                    self._reply(404, {"message": "not found"}, error="NotFoundException")
                    return
                body = json.loads(raw or b"{}")
                answer, delay = fake._take(body)
                try:
                    if delay:
                        time.sleep(delay)
                    if answer is Answer.OK:
                        self._reply(200, {"MessageId": f"fake-{uuid.uuid4()}"})
                    else:
                        status, code, message = _ERRORS[answer]
                        if answer is Answer.REJECTED:
                            message = fake._rejection(body) or message
                        self._reply(status, {"message": message}, error=code)
                except OSError:
                    pass  # the caller is gone (killed): SES sent the mail all the same
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

            def _reply(self, status: int, body: dict[str, Any], *, error: str = "") -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
                if error:
                    self.send_header("x-amzn-ErrorType", error)
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def environment(self) -> dict[str, str]:
        """What a process needs to reach this SES instead of AWS's."""
        return {
            "AWS_ENDPOINT_URL_SESV2": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }

    def script(self, *answers: Answer) -> None:
        """Answer the next SendEmail calls with these, in order; then with ``default``."""
        with self._lock:
            self._script.extend(answers)

    def _rejection(self, body: dict[str, Any]) -> str:
        to = body.get("Destination", {}).get("ToAddresses", [""])[0]
        if to in self.unverified:
            return (
                "Email address is not verified. The following identities failed the check in "
                f"region US-EAST-1: {to}"
            )
        return self.rejection

    def _take(self, body: dict[str, Any]) -> tuple[Answer, float]:
        with self._lock:
            answer = self._script.popleft() if self._script else self.default
            if time.monotonic() < self.throttle_until:
                answer = Answer.THROTTLED
            elif body.get("Destination", {}).get("ToAddresses", [""])[0] in self.unverified:
                answer = Answer.REJECTED
            self.requests.append(Request(body, answer, time.monotonic()))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return answer, self.delay

    # -- what SES saw ---------------------------------------------------------------------

    def sent(self) -> list[Request]:
        """SendEmail calls answered (or being answered) with success: mails that went out."""
        with self._lock:
            return [r for r in self.requests if r.answer is Answer.OK]

    def sent_ids(self) -> Counter[str | None]:
        """How many times each tegami mail went out."""
        return Counter(r.tegami_id for r in self.sent())

    def answers(self) -> Counter[Answer]:
        with self._lock:
            return Counter(r.answer for r in self.requests)
