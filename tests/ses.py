"""moto's SES server, run in this process and reached over real HTTP.

It runs in a thread, so the tests can read what SES received straight from moto's backend,
and stop or restart it to play an outage.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import httpx
from moto.core import DEFAULT_ACCOUNT_ID  # type: ignore[attr-defined]
from moto.server import ThreadedMotoServer
from moto.ses.models import ses_backends

REGION = "us-east-1"


@dataclass(frozen=True)
class ReceivedMail:
    ses_message_id: str
    source: str
    destinations: list[str]
    raw: str

    @property
    def message(self) -> EmailMessage:
        return email.message_from_string(self.raw, policy=email.policy.default)


class MotoSes:
    def __init__(self) -> None:
        self.port = 0
        self._server: ThreadedMotoServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]

    def stop(self) -> None:
        """SES goes away: connections are refused until start() again (same port)."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def ensure_running(self) -> None:
        if self._server is None:
            self.start()

    def environment(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client_kwargs(self) -> dict[str, Any]:
        return {
            "endpoint_url": self.endpoint,
            "region_name": REGION,
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }

    def reset(self) -> None:
        httpx.post(f"{self.endpoint}/moto-api/reset").raise_for_status()

    def sent(self) -> list[ReceivedMail]:
        backend = ses_backends[DEFAULT_ACCOUNT_ID][REGION]
        return [
            ReceivedMail(m.id, m.source, list(m.destinations), m.raw_data)
            for m in backend.sent_messages
        ]
