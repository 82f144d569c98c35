"""One fake Amazon SES v2 over real HTTP, for the tests and the bench: the calls tegami makes,
and the SNS subscriptions SES's events go to.

Clients reach it the way production reaches AWS, through ``AWS_ENDPOINT_URL_SESV2`` (and
``AWS_ENDPOINT_URL_SNS``): botocore, aioboto3 and the worker run unchanged. What it holds, a
test (or the bench, over ``/_bench/``) changes one thing at a time:

- answers to SendEmail: scripted per call (``script(Answer.THROTTLED, Late(2.0), ...)``), then
  ``default`` after ``delay`` seconds; a throttling storm until ``throttle_until``; recipients
  the sandbox refuses (``unverified``); random errors and throttles for the bench;
- the send rate: a token bucket of ``burst`` sends refilled at ``max_send_rate`` per second,
  a send over it answered 429 TooManyRequestsException, as SES does;
- the account: sending paused (``sending_enabled``), quota, what GetAccount reports;
- the account suppression list (Put/Get/Delete/ListSuppressedDestinations);
- the set-up the doctor reads: the domain identity, DKIM, MAIL FROM, configuration sets and
  their SNS topics' subscriptions (SNS's query protocol, XML answers);
- ``down``: every SES call answers 503; ``stop()``: connections refused and dropped.

A SendEmail counts as sent once the request is in, like real SES, even when the caller dies
before it reads the answer. With ``proxy_to`` set, the SendEmails it would accept go on to that
SES (moto's), so a test reads what moto received.

Tests start it in a thread of their process (``FakeSes().start()``); the bench runs it as a
process of its own (``python tests/fake_ses.py --port 9000 --rate 14``) and reads it over HTTP:
``GET /_bench/stats``, ``GET /_bench/arrivals``, ``POST /_bench/reset``, ``POST /_bench/config``
(any of rate, burst, latency_ms, error_rate, throttle_rate). It is written on asyncio and
httptools (uvicorn's parser) so that it costs little CPU: on a 2-core machine every cycle it
burns is taken from the service under test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

import httptools
import httpx

REGION = "us-east-1"
ACCOUNT = "123456789012"
TOPIC = f"arn:aws:sns:{REGION}:{ACCOUNT}:tegami-ses-events"
ALL_EVENT_TYPES = [
    "SEND",
    "REJECT",
    "BOUNCE",
    "COMPLAINT",
    "DELIVERY",
    "DELIVERY_DELAY",
    "RENDERING_FAILURE",
]


class Answer(Enum):
    OK = "ok"
    THROTTLED = "throttled"  # 429 TooManyRequestsException
    INTERNAL_ERROR = "internal_error"  # 500 InternalFailure
    UNAVAILABLE = "unavailable"  # 503 ServiceUnavailable
    PAUSED = "paused"  # 400 SendingPausedException
    REJECTED = "rejected"  # 400 MessageRejected
    ACCESS_DENIED = "access_denied"  # 403 AccessDeniedException: an IAM slip


ERRORS: dict[Answer, tuple[int, str, str]] = {
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
class Late:
    """A scripted answer given after ``seconds``."""

    seconds: float
    answer: Answer = Answer.OK


@dataclass(frozen=True)
class Request:
    """One SendEmail call as SES saw it (``body`` is empty when the fake keeps no bodies)."""

    body: dict[str, Any]
    answer: Answer
    received_at: float  # time.monotonic()
    at: float  # time.time(), for the bench's arrival times
    to: str
    tegami_id: str | None


@dataclass
class Subscription:
    endpoint: str
    protocol: str = "https"
    confirmed: bool = True
    raw_message_delivery: bool = False

    def arn(self, topic: str) -> str:
        return f"{topic}:{uuid.uuid5(uuid.NAMESPACE_URL, self.endpoint)}"


Reply = tuple[int, Any, str]  # status, JSON answer (or XML text), x-amzn-ErrorType


@dataclass
class FakeSes:
    # -- the account: what GetAccount says, and the rate SES enforces ----------------------
    max_send_rate: float = 1000.0
    burst: float | None = None  # the token bucket's size; the rate when None
    sending_enabled: bool = True  # False: an account SES has paused (EnforcementStatus SHUTDOWN)
    max_24_hour_send: float = 50000.0
    sent_before: float = 0.0  # sent in the last 24 h before this fake started
    # -- SendEmail's answers ---------------------------------------------------------------
    default: Answer = Answer.OK
    delay: float = 0.0
    throttle_until: float = 0.0  # a throttling storm: 429s until this time.monotonic()
    error_rate: float = 0.0  # a fraction of sends answered 500, at random
    throttle_rate: float = 0.0  # a fraction of sends answered 429, at random
    unverified: set[str] = field(default_factory=set)  # the sandbox refuses these recipients
    rejection: str = ""  # what MessageRejected says ("Email address is not verified." if empty)
    down: bool = False  # every SES call answers 503 ServiceUnavailable, until set back
    proxy_to: str | None = None  # accepted SendEmails go on to this SES (moto's)
    keep_bodies: bool = True  # the bench keeps none: a long run would hold every mail
    # -- the set-up the doctor reads -------------------------------------------------------
    domain: str = "proworks.jp"
    dkim_tokens: list[str] = field(default_factory=lambda: ["tok1", "tok2", "tok3"])
    verified: bool = True
    dkim_status: str = "SUCCESS"
    mail_from_domain: str | None = "bounce.proworks.jp"
    mail_from_status: str = "SUCCESS"
    # configuration set name -> event destinations (SES's shape)
    configuration_sets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # topic ARN -> subscriptions
    topics: dict[str, list[Subscription]] = field(default_factory=dict)
    # address -> (reason, last update time): SES's account-level suppression list
    suppressed: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    page_size: int = 1  # small pages, so clients must follow NextToken
    # -- what SES saw ----------------------------------------------------------------------
    requests: list[Request] = field(default_factory=list)  # every well-formed SendEmail
    calls: list[str] = field(default_factory=list)  # every other call: "GET /v2/...", SNS action
    account_reads: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    throttled_at: list[float] = field(default_factory=list)  # time.time() of each bucket 429
    malformed: int = 0
    connections: int = 0

    def __post_init__(self) -> None:
        self._script: deque[Answer | Late] = deque()
        self._counts: Counter[Answer] = Counter()
        self._tokens = self.bucket_size
        self._refilled_at = time.monotonic()
        self._first_at: float | None = None
        self._last_at: float | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._open: set[_Connection] = set()
        self._port = 0

    @property
    def bucket_size(self) -> float:
        return self.burst if self.burst is not None else max(1.0, self.max_send_rate)

    def ready(self, *, configuration_set: str, topic: str, endpoint: str) -> FakeSes:
        """A set-up that passes every check: all events to ``topic``, confirmed subscription."""
        self.configuration_sets[configuration_set] = [
            {
                "Name": "to-sns",
                "Enabled": True,
                "MatchingEventTypes": list(ALL_EVENT_TYPES),
                "SnsDestination": {"TopicArn": topic},
            }
        ]
        self.topics[topic] = [Subscription(endpoint)]
        return self

    def script(self, *answers: Answer | Late) -> None:
        """Answer the next SendEmail calls with these, in order; then with ``default``."""
        with self._lock:
            self._script.extend(answers)

    # -- running it ------------------------------------------------------------------------

    def start(self) -> FakeSes:
        """Serve on a free port (the same one again after stop()), in a thread of this process."""
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            self._server = loop.run_until_complete(self.listen("127.0.0.1", self._port))
            self._port = self._server.sockets[0].getsockname()[1]
            started.set()
            loop.run_forever()
            # stop(): the dropped connections' answers (some asleep in a delay) end here.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-ses", daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    async def listen(self, host: str, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(lambda: _Connection(self), host, port, backlog=1024)

    def stop(self) -> None:
        """SES goes away: the port refuses connections and open ones are dropped (start() again
        serves on the same port)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        def close() -> None:
            assert self._server is not None
            self._server.close()
            for connection in list(self._open):
                connection.drop()
            loop.stop()

        loop.call_soon_threadsafe(close)
        thread.join(10)
        self._loop = self._server = self._thread = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._port}"

    def environment(self) -> dict[str, str]:
        """What a process needs to reach this SES (and SNS) instead of AWS's."""
        return {
            "AWS_ENDPOINT_URL_SESV2": self.endpoint,
            "AWS_ENDPOINT_URL_SNS": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": REGION,
        }

    # -- what SES saw ----------------------------------------------------------------------

    def sent(self) -> list[Request]:
        """SendEmail calls answered (or being answered) with success: mails that went out."""
        with self._lock:
            return [r for r in self.requests if r.answer is Answer.OK]

    def sent_ids(self) -> Counter[str | None]:
        """How many times each tegami mail went out."""
        return Counter(r.tegami_id for r in self.sent())

    def answers(self) -> Counter[Answer]:
        with self._lock:
            return Counter(self._counts)

    # -- SendEmail -------------------------------------------------------------------------

    def _take(self, body: dict[str, Any]) -> tuple[Answer, float]:
        """The answer to one SendEmail and its delay, decided (and recorded) as it arrives."""
        to = str(body["Destination"]["ToAddresses"][0])
        tags = {tag.get("Name"): tag.get("Value") for tag in body.get("EmailTags", [])}
        at = time.time()
        with self._lock:
            scripted = self._script.popleft() if self._script else self.default
            answer, delay = (
                (scripted.answer, scripted.seconds)
                if isinstance(scripted, Late)
                else (scripted, self.delay)
            )
            if time.monotonic() < self.throttle_until:
                answer = Answer.THROTTLED
            elif to in self.unverified:
                answer = Answer.REJECTED
            elif answer is Answer.OK:
                answer = self._limited(at)
            self.requests.append(
                Request(
                    body if self.keep_bodies else {},
                    answer,
                    time.monotonic(),
                    at,
                    to,
                    None if tags.get("tegami_id") is None else str(tags["tegami_id"]),
                )
            )
            self._counts[answer] += 1
            if answer is Answer.OK:
                self._first_at = self._first_at or at
                self._last_at = at
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return answer, delay

    def _limited(self, at: float) -> Answer:
        """OK, unless the rate bucket is empty or a random throttle or error strikes."""
        if self.throttle_rate and random.random() < self.throttle_rate:
            return Answer.THROTTLED
        now = time.monotonic()
        size = self.bucket_size
        self._tokens = min(size, self._tokens + (now - self._refilled_at) * self.max_send_rate)
        self._refilled_at = now
        if self._tokens < 1.0:
            self.throttled_at.append(at)
            return Answer.THROTTLED
        self._tokens -= 1.0
        if self.error_rate and random.random() < self.error_rate:
            return Answer.INTERNAL_ERROR
        return Answer.OK

    async def _send_email(self, raw: bytes, headers: dict[str, str], path: str) -> Reply:
        try:
            body = json.loads(raw)
            if "Raw" not in body["Content"] and "Simple" not in body["Content"]:
                raise KeyError("Content")
            answer, delay = self._take(body)
        except (ValueError, KeyError, IndexError, TypeError):
            with self._lock:
                self.malformed += 1
            return 400, {"message": "malformed SendEmail"}, "BadRequestException"
        try:
            if delay:
                await asyncio.sleep(delay)
            if answer is not Answer.OK:
                status, code, message = ERRORS[answer]
                if answer is Answer.REJECTED:
                    message = self._rejection(body) or message
                return status, {"message": message}, code
            if self.proxy_to is not None:
                return await self._forward("POST", path, headers, raw)
            return 200, {"MessageId": f"fake-{uuid.uuid4()}-000000"}, ""
        finally:
            with self._lock:
                self.in_flight -= 1

    def _rejection(self, body: dict[str, Any]) -> str:
        to = body["Destination"]["ToAddresses"][0]
        if to in self.unverified:
            return (
                "Email address is not verified. The following identities failed the check in "
                f"region US-EAST-1: {to}"
            )
        return self.rejection

    async def _forward(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Reply:
        assert self.proxy_to is not None
        kept = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")}
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.request(method, self.proxy_to + path, headers=kept, content=raw)
        return answer.status_code, answer.json(), answer.headers.get("x-amzn-ErrorType", "")

    # -- every call ------------------------------------------------------------------------

    async def handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Reply:
        url = urlsplit(target)
        if url.path.startswith("/_bench/"):
            return self._bench(method, url.path, raw)
        if method == "POST" and url.path == "/":
            form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            with self._lock:
                self.calls.append(form.get("Action", "?"))
            status, text = self._sns(form)
            return status, text, ""
        if method == "POST" and url.path == "/v2/email/outbound-emails":
            if self.down:
                return _unavailable()
            return await self._send_email(raw, headers, target)
        with self._lock:
            self.calls.append(f"{method} {url.path}")
        if self.down:
            return _unavailable()
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        reply = self._sesv2(method, url.path, query, raw)
        if reply[2] == NOT_IMPLEMENTED and self.proxy_to is not None:
            return await self._forward(method, target, headers, raw)
        return reply

    def _sesv2(self, method: str, path: str, query: dict[str, str], raw: bytes) -> Reply:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] != ["v2", "email"]:
            return _not_implemented()
        rest = parts[2:]
        if method == "GET" and rest == ["account"]:
            return 200, self._account(), ""
        if method == "GET" and len(rest) == 2 and rest[0] == "identities":
            return self._identity(rest[1])
        if (
            method == "GET"
            and len(rest) == 3
            and rest[::2] == ["configuration-sets", "event-destinations"]
        ):
            if rest[1] not in self.configuration_sets:
                return _not_found(f"Configuration set <{rest[1]}> does not exist.")
            return 200, {"EventDestinations": self.configuration_sets[rest[1]]}, ""
        if rest[:2] == ["suppression", "addresses"]:
            return self._suppression(method, rest[2:], query, raw)
        return _not_implemented()

    def _account(self) -> dict[str, Any]:
        with self._lock:
            self.account_reads += 1
            sent = self._counts[Answer.OK]
        return {
            "SendQuota": {
                "Max24HourSend": self.max_24_hour_send,
                "MaxSendRate": self.max_send_rate,
                "SentLast24Hours": self.sent_before + sent,
            },
            "SendingEnabled": self.sending_enabled,
            "ProductionAccessEnabled": True,
            "EnforcementStatus": "HEALTHY" if self.sending_enabled else "SHUTDOWN",
        }

    def _identity(self, name: str) -> Reply:
        if name != self.domain:
            return _not_found(f"Email identity {name} does not exist.")
        answer: dict[str, Any] = {
            "IdentityType": "DOMAIN",
            "VerifiedForSendingStatus": self.verified,
            "VerificationStatus": "SUCCESS" if self.verified else "PENDING",
            "DkimAttributes": {
                "SigningEnabled": True,
                "Status": self.dkim_status,
                "Tokens": self.dkim_tokens,
                "SigningAttributesOrigin": "AWS_SES",
            },
        }
        if self.mail_from_domain is not None:
            answer["MailFromAttributes"] = {
                "MailFromDomain": self.mail_from_domain,
                "MailFromDomainStatus": self.mail_from_status,
                "BehaviorOnMxFailure": "USE_DEFAULT_VALUE",
            }
        return 200, answer, ""

    def _suppression(
        self, method: str, rest: list[str], query: dict[str, str], raw: bytes
    ) -> Reply:
        if method == "DELETE" and len(rest) == 1:
            if self.suppressed.pop(rest[0].lower(), None) is None:
                return _not_found(f"Email address {rest[0]} does not exist on your list.")
            return 200, {}, ""
        if method == "GET" and len(rest) == 1:
            if rest[0].lower() not in self.suppressed:
                return _not_found(f"Email address {rest[0]} does not exist on your list.")
            reason, updated = self.suppressed[rest[0].lower()]
            destination = {
                "EmailAddress": rest[0].lower(),
                "Reason": reason,
                "LastUpdateTime": updated.timestamp(),
            }
            return 200, {"SuppressedDestination": destination}, ""
        if method == "PUT" and not rest:
            data = json.loads(raw)
            self.suppressed[data["EmailAddress"].lower()] = (data["Reason"], datetime.now())
            return 200, {}, ""
        if method == "GET" and not rest:
            addresses = sorted(self.suppressed)
            start = int(query.get("NextToken", "0"))
            page = addresses[start : start + self.page_size]
            answer: dict[str, Any] = {
                "SuppressedDestinationSummaries": [
                    {
                        "EmailAddress": address,
                        "Reason": self.suppressed[address][0],
                        "LastUpdateTime": self.suppressed[address][1].timestamp(),
                    }
                    for address in page
                ]
            }
            if start + self.page_size < len(addresses):
                answer["NextToken"] = str(start + self.page_size)
            return 200, answer, ""
        return _not_implemented()

    # -- SNS (query protocol) --------------------------------------------------------------

    def _sns(self, form: dict[str, str]) -> tuple[int, str]:
        if form.get("Action") == "GetSubscriptionAttributes":
            return self._subscription_attributes(form.get("SubscriptionArn", ""))
        if form.get("Action") != "ListSubscriptionsByTopic":
            return 400, _sns_error("InvalidAction", "not implemented by the fake")
        topic = form.get("TopicArn", "")
        if topic not in self.topics:
            return 404, _sns_error("NotFound", "Topic does not exist")
        members = "".join(
            "<member>"
            f"<TopicArn>{escape(topic)}</TopicArn>"
            f"<Protocol>{escape(s.protocol)}</Protocol>"
            "<SubscriptionArn>"
            + (escape(s.arn(topic)) if s.confirmed else "PendingConfirmation")
            + "</SubscriptionArn>"
            f"<Owner>{ACCOUNT}</Owner>"
            f"<Endpoint>{escape(s.endpoint)}</Endpoint>"
            "</member>"
            for s in self.topics[topic]
        )
        return 200, _sns_answer(
            "ListSubscriptionsByTopic", f"<Subscriptions>{members}</Subscriptions>"
        )

    def _subscription_attributes(self, arn: str) -> tuple[int, str]:
        found = [
            (topic, s)
            for topic, subscriptions in self.topics.items()
            for s in subscriptions
            if s.confirmed and s.arn(topic) == arn
        ]
        if not found:
            return 404, _sns_error("NotFound", "Subscription does not exist")
        topic, subscription = found[0]
        attributes = {
            "SubscriptionArn": arn,
            "TopicArn": topic,
            "Protocol": subscription.protocol,
            "Endpoint": subscription.endpoint,
            "PendingConfirmation": "false",
            "RawMessageDelivery": "true" if subscription.raw_message_delivery else "false",
        }
        entries = "".join(
            f"<entry><key>{escape(k)}</key><value>{escape(v)}</value></entry>"
            for k, v in attributes.items()
        )
        return 200, _sns_answer("GetSubscriptionAttributes", f"<Attributes>{entries}</Attributes>")

    # -- the bench's controls --------------------------------------------------------------

    def _bench(self, method: str, path: str, raw: bytes) -> Reply:
        if path == "/_bench/ping":
            return 200, {"ok": True}, ""
        if path == "/_bench/stats":
            return 200, self.stats(), ""
        if method == "POST" and path == "/_bench/reset":
            self.reset()
            return 200, self.stats(), ""
        if method == "POST" and path == "/_bench/config":
            self.configure(json.loads(raw or b"{}"))
            return 200, self.stats(), ""
        if path == "/_bench/arrivals":
            with self._lock:
                arrivals = [
                    (r.at, r.tegami_id or "", r.to) for r in self.requests if r.answer is Answer.OK
                ]
            return 200, {"arrivals": arrivals, "throttled_at": self.throttled_at}, ""
        return _not_found("not found")

    def configure(self, values: dict[str, Any]) -> None:
        with self._lock:
            if "rate" in values:
                self.max_send_rate = float(values["rate"])
            if "burst" in values:
                self.burst = float(values["burst"])
            if "latency_ms" in values:
                self.delay = float(values["latency_ms"]) / 1000.0
            for name in ("error_rate", "throttle_rate"):
                if name in values:
                    setattr(self, name, float(values[name]))
            self._tokens = self.bucket_size
            self._refilled_at = time.monotonic()

    def reset(self) -> None:
        """Forget what SES saw; the bucket full again."""
        with self._lock:
            self.requests = []
            self.throttled_at = []
            self._counts = Counter()
            self._first_at = self._last_at = None
            self.malformed = self.connections = 0
            self._tokens = self.bucket_size
            self._refilled_at = time.monotonic()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "sent": self._counts[Answer.OK],
                "throttled": self._counts[Answer.THROTTLED],
                "failed": self._counts[Answer.INTERNAL_ERROR],
                "malformed": self.malformed,
                "requests": len(self.requests) + self.malformed,
                "connections": self.connections,
                "first_arrival": self._first_at,
                "last_arrival": self._last_at,
                "config": {
                    "rate": self.max_send_rate,
                    "burst": self.bucket_size,
                    "latency_ms": self.delay * 1000.0,
                    "error_rate": self.error_rate,
                    "throttle_rate": self.throttle_rate,
                },
            }


def _unavailable() -> Reply:
    return 503, {"message": "Service is unavailable."}, "ServiceUnavailable"


NOT_IMPLEMENTED = "UnknownOperationException"


def _not_implemented() -> Reply:
    return 404, {"message": "not implemented by the fake"}, NOT_IMPLEMENTED


def _not_found(message: str) -> Reply:
    return 404, {"message": message}, "NotFoundException"


def _sns_answer(action: str, result: str) -> str:
    return (
        f'<{action}Response xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
        f"<{action}Result>{result}</{action}Result>"
        f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
        f"</{action}Response>"
    )


def _sns_error(code: str, message: str) -> str:
    return (
        '<ErrorResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
        f"<Error><Type>Sender</Type><Code>{code}</Code><Message>{escape(message)}</Message>"
        f"</Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    )


# -- HTTP/1.1 on asyncio and httptools --------------------------------------------------------

_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 429: b"Too Many Requests"}


class _Connection(asyncio.Protocol):
    """One client connection; answers go out in request order (keep-alive clients may send the
    next request early)."""

    def __init__(self, ses: FakeSes) -> None:
        self.ses = ses
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.queue: asyncio.Queue[tuple[str, str, dict[str, str], bytes, bool]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def drop(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.ses.connections += 1
        self.ses._open.add(self)
        self.task = asyncio.get_running_loop().create_task(self._answer())

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.drop()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ses._open.discard(self)
        if self.task is not None:
            self.task.cancel()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1")] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        keep_alive = self.parser.should_keep_alive()
        self.queue.put_nowait(
            (method, self.url.decode(), self.headers, b"".join(self.body), keep_alive)
        )

    async def _answer(self) -> None:
        while True:
            method, target, headers, body, keep_alive = await self.queue.get()
            status, answer, error = await self.ses.handle(method, target, headers, body)
            if isinstance(answer, str):
                payload, kind = answer.encode(), b"text/xml"
            else:
                if error:
                    answer = {"__type": error, **answer}
                payload, kind = json.dumps(answer).encode(), b"application/json"
            lines = [
                b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Error")),
                b"Content-Type: " + kind,
                b"Content-Length: %d" % len(payload),
                b"x-amzn-RequestId: " + uuid.uuid4().hex.encode(),
            ]
            if error:
                lines.append(b"x-amzn-ErrorType: " + error.encode())
            if not keep_alive:
                lines.append(b"Connection: close")
            assert self.transport is not None
            self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + payload)
            if not keep_alive:
                self.transport.close()
                return


async def _serve(ses: FakeSes, host: str, port: int) -> None:
    server = await ses.listen(host, port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake Amazon SES v2 over HTTP, for the bench.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--rate", type=float, default=1000.0, help="MaxSendRate, enforced")
    parser.add_argument("--burst", type=float, help="token bucket size (default: the rate)")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--throttle-rate", type=float, default=0.0)
    args = parser.parse_args()
    ses = FakeSes(
        max_send_rate=args.rate,
        burst=args.burst,
        delay=args.latency_ms / 1000.0,
        error_rate=args.error_rate,
        throttle_rate=args.throttle_rate,
        max_24_hour_send=10_000_000.0,
        keep_bodies=False,
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(ses, args.host, args.port))
    else:
        uvloop.run(_serve(ses, args.host, args.port))


if __name__ == "__main__":
    main()
