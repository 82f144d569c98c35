"""SES v2 account set-up and SNS subscriptions, over real HTTP, where moto lacks the calls.

moto 5.2's SES v2 has no GetAccount, no configuration-set event destinations, no MAIL FROM
status and no account suppression list; its SNS answers ListSubscriptionsByTopic but treats
every subscription as confirmed, so an unconfirmed one cannot be shown. This server speaks
those calls as botocore expects them (SES v2: rest-json; SNS: query protocol with XML
answers), holds an account that is ready to send, and lets a test break one thing at a time.

It runs in a thread in the test process; clients reach it through ``AWS_ENDPOINT_URL_SESV2``
and ``AWS_ENDPOINT_URL_SNS``, as production reaches AWS.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

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


@dataclass
class Subscription:
    endpoint: str
    protocol: str = "https"
    confirmed: bool = True
    raw_message_delivery: bool = False

    def arn(self, topic: str) -> str:
        return f"{topic}:{uuid.uuid5(uuid.NAMESPACE_URL, self.endpoint)}"


@dataclass
class FakeAws:
    """State of the fake account; tests change these fields to break the set-up."""

    domain: str = "proworks.jp"
    dkim_tokens: list[str] = field(default_factory=lambda: ["tok1", "tok2", "tok3"])
    account: dict[str, Any] = field(
        default_factory=lambda: {
            "SendQuota": {"Max24HourSend": 50000.0, "MaxSendRate": 14.0, "SentLast24Hours": 3.0},
            "SendingEnabled": True,
            "ProductionAccessEnabled": True,
            "EnforcementStatus": "HEALTHY",
        }
    )
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
    # SES v2 calls this fake does not speak (SendEmail, ...) go on to this endpoint (moto's).
    proxy_to: str | None = None
    calls: list[str] = field(default_factory=list)
    # True: every SES v2 call answers 503 ServiceUnavailable (SES away), until set back.
    down: bool = False
    _server: ThreadingHTTPServer | None = None

    def ready(self, *, configuration_set: str, topic: str, endpoint: str) -> FakeAws:
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

    # -- server ---------------------------------------------------------------------------

    def start(self) -> FakeAws:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._handle("GET")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def do_POST(self) -> None:
                self._handle("POST")

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if method == "POST" and url.path == "/":
                    form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                    fake.calls.append(form.get("Action", "?"))
                    status, text = fake.sns(form)
                    self._send(status, text.encode(), "text/xml", "")
                    return
                fake.calls.append(f"{method} {url.path}")
                status, answer, error = fake.sesv2(method, url.path, query, body)
                if error == UNKNOWN and fake.proxy_to is not None:
                    self._forward(method, body)
                    return
                self._send(status, json.dumps(answer).encode(), "application/json", error)

            def _forward(self, method: str, body: bytes) -> None:
                assert fake.proxy_to is not None
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                answer = httpx.request(
                    method, fake.proxy_to + self.path, headers=headers, content=body, timeout=30
                )
                error = answer.headers.get("x-amzn-ErrorType", "")
                kind = answer.headers.get("Content-Type", "application/json")
                self._send(answer.status_code, answer.content, kind, error)

            def _send(self, status: int, data: bytes, kind: str, error: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
                if error:
                    self.send_header("x-amzn-ErrorType", error)
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll: stop() waits for it, once per test.
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        ).start()
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
        return {
            "AWS_ENDPOINT_URL_SESV2": self.endpoint,
            "AWS_ENDPOINT_URL_SNS": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": REGION,
        }

    # -- SES v2 (rest-json) -----------------------------------------------------------------

    def sesv2(
        self, method: str, path: str, query: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any], str]:
        if self.down:
            return 503, {"message": "Service is unavailable."}, "ServiceUnavailable"
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] != ["v2", "email"]:
            return _unknown()
        rest = parts[2:]
        if method == "GET" and rest == ["account"]:
            return 200, self.account, ""
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
            return self._suppression(method, rest[2:], query, body)
        return _unknown()

    def _identity(self, name: str) -> tuple[int, dict[str, Any], str]:
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
        self, method: str, rest: list[str], query: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any], str]:
        if method == "DELETE" and len(rest) == 1:
            if self.suppressed.pop(rest[0].lower(), None) is None:
                return _not_found(f"Email address {rest[0]} does not exist on your list.")
            return 200, {}, ""
        if method == "PUT" and not rest:
            data = json.loads(body)
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
        return _unknown()

    # -- SNS (query protocol) ---------------------------------------------------------------

    def sns(self, form: dict[str, str]) -> tuple[int, str]:
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
        return 200, (
            '<ListSubscriptionsByTopicResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
            "<ListSubscriptionsByTopicResult>"
            f"<Subscriptions>{members}</Subscriptions>"
            "</ListSubscriptionsByTopicResult>"
            f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
            "</ListSubscriptionsByTopicResponse>"
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
        return 200, (
            '<GetSubscriptionAttributesResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
            f"<GetSubscriptionAttributesResult><Attributes>{entries}</Attributes>"
            "</GetSubscriptionAttributesResult>"
            f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
            "</GetSubscriptionAttributesResponse>"
        )


UNKNOWN = "UnknownOperationException"


def _unknown() -> tuple[int, dict[str, Any], str]:
    return 404, {"message": "not implemented by the fake"}, UNKNOWN


def _not_found(message: str) -> tuple[int, dict[str, Any], str]:
    return 404, {"message": message}, "NotFoundException"


def _sns_error(code: str, message: str) -> str:
    return (
        '<ErrorResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
        f"<Error><Type>Sender</Type><Code>{code}</Code><Message>{escape(message)}</Message>"
        f"</Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    )
