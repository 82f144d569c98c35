"""schemathesis against the committed OpenAPI document, through the real app and PostgreSQL.

Every operation in ``openapi/openapi.json`` gets generated requests, valid ones (positive) and
invalid ones (negative), with a valid API key and without one; then valid requests aimed at
things that exist (a sent mail, a known recipient, a working unsubscribe token, a signed SNS
message), which random generation would never hit. Every answer must be no 5xx, have a status
code the document lists, and a content type, headers and body the document allows.

The app runs with its lifespan on the test's event loop (real PostgreSQL, moto's SES), as in
every other API test; hypothesis drives schemathesis's strategies from a thread and hands each
request to that loop. Examples are bounded so that the whole module runs in about 15 s.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok
from schemathesis.schemas import APIOperation
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.sns.signature import make_signing_identity
from tests.conftest import AppFactory
from tests.emails.test_router import body, drain
from tests.fake_ses import FakeSes
from tests.ses import MotoSes
from tests.sns_messages import CERT_NAME, REGION, TOPIC, Sns, ses_event

OPENAPI = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"
SCHEMA = schemathesis.openapi.from_path(OPENAPI)
Operation = APIOperation[Any, Any, Any, Any]
Case = schemathesis.Case[Any]
OPERATIONS: list[Operation] = [
    result.ok() for result in SCHEMA.get_all_operations() if isinstance(result, Ok)
]
BASE_URL = "https://mail.proworks.jp"

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

# Generated requests per operation and mode; about 5 ms each through the app and PostgreSQL.
EXAMPLES = {"api-key": 25, "anonymous": 8}
SEEDED_EXAMPLES = 6
MAIL_EXAMPLES = 40
# Operations whose every input is valid: negative mode cannot generate anything for them.
NOTHING_TO_NEGATE = {
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /unsubscribe/{token}",
    "POST /unsubscribe/{token}",
}


def _settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        print_blob=True,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )


def _header_value(value: str) -> bytes:
    try:
        return value.encode("latin-1")  # as requests sends it
    except UnicodeEncodeError:
        return value.encode()


async def _send(client: httpx.AsyncClient, kwargs: dict[str, Any]) -> httpx.Response:
    """What schemathesis would hand to ``requests``, sent the same way with httpx to the app."""
    content = kwargs.get("data")
    if isinstance(content, str):
        content = content.encode()
    if "json" in kwargs:
        # requests' encoding: ASCII with escapes, so lone surrogates and NULs go through too.
        content = json.dumps(kwargs["json"], allow_nan=False).encode()
    headers = {name: _header_value(str(value)) for name, value in kwargs["headers"].items()}
    return await client.request(
        kwargs["method"],
        kwargs["url"],
        headers=headers,
        params=kwargs.get("params") or None,
        cookies=kwargs.get("cookies") or None,
        content=content,
    )


def _slash_in_path(case: Case) -> bool:
    return any("%2F" in str(value).upper() for value in (case.path_parameters or {}).values())


class Fuzzer:
    """Runs hypothesis (in a thread) against the app (on the test's loop); collects failures."""

    def __init__(self, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
        self.client = client
        self.headers = headers
        self.failures: list[str] = []
        self.requests = 0
        self.statuses: dict[str, set[int]] = {}
        self._loop = asyncio.get_running_loop()

    def _call(self, case: Case) -> None:
        if _slash_in_path(case) and "/recipients/" not in case.operation.label:
            # An encoded "/" in a path parameter arrives decoded, so names another route: a
            # 404 of routing, not an answer of this operation. (The recipient API takes "/",
            # which addresses may hold: there it is fuzzed too.)
            reject()
        kwargs = case.as_transport_kwargs(base_url=BASE_URL, headers=self.headers)
        response = asyncio.run_coroutine_threadsafe(_send(self.client, kwargs), self._loop).result(
            timeout=60
        )
        self.requests += 1
        self.statuses.setdefault(case.operation.label, set()).add(response.status_code)
        case.validate_response(response, checks=CHECKS)

    def _run_one(self, name: str, strategy: st.SearchStrategy[Any], max_examples: int) -> None:
        @_settings(max_examples)
        @given(case=strategy)
        def run(case: Case) -> None:
            self._call(case)

        try:
            run()
        except Unsatisfiable:
            pass  # nothing in the operation can be made invalid (negative mode)
        except (Exception, BaseExceptionGroup) as exc:  # report every failing operation
            self.failures.append(f"--- {name}\n{exc}")

    def run(self, jobs: Iterable[tuple[str, st.SearchStrategy[Any], int]]) -> None:
        for name, strategy, max_examples in jobs:
            self._run_one(name, strategy, max_examples)

    async def fuzz(self, jobs: list[tuple[str, st.SearchStrategy[Any], int]]) -> None:
        await asyncio.to_thread(self.run, jobs)

    def assert_clean(self) -> None:
        assert not self.failures, "\n\n".join(self.failures)


def generated(max_examples: int) -> list[tuple[str, st.SearchStrategy[Any], int]]:
    jobs = []
    for operation in OPERATIONS:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and operation.label in NOTHING_TO_NEGATE:
                continue
            strategy = operation.as_strategy(mode)
            if mode is GenerationMode.POSITIVE:
                # The document's own examples first (a valid mail, a real-shaped SNS body).
                strategy = st.one_of(*SCHEMA.get_strategies_from_examples(operation), strategy)
            jobs.append((f"{operation.label} ({mode.value})", strategy, max_examples))
    return jobs


def _operation(label: str) -> Operation:
    [operation] = [op for op in OPERATIONS if op.label == label]
    return operation


def _addressed(case: Case) -> Case:
    """A generated mail request made to pass the address and param-name checks."""
    if isinstance(case.body, dict):
        case.body["to"] = "taro@example.com"
        params = case.body.get("params")
        if isinstance(params, dict):
            text = "".join(str(v) for v in params.values())
            case.body["params"] = {"verification_url": f"https://proworks.jp/{text}"}
    return case


@pytest.fixture
async def fuzz_client(
    ses_account: FakeSes, start_app: AppFactory, identity: tuple[bytes, bytes], tmp_path: Path
) -> httpx.AsyncClient:
    (tmp_path / CERT_NAME).write_bytes(identity[1])
    return await start_app(sns_cert_dir=tmp_path, sns_topic_arns=[TOPIC])


@pytest.fixture(scope="module")
def identity() -> tuple[bytes, bytes]:
    return make_signing_identity(common_name=f"sns.{REGION}.amazonaws.com")


@pytest.mark.parametrize("credentials", ["api-key", "anonymous"])
async def test_generated_requests_get_documented_answers_and_never_5xx(
    fuzz_client: httpx.AsyncClient, auth: dict[str, str], credentials: str
) -> None:
    headers = auth if credentials == "api-key" else {}
    fuzzer = Fuzzer(fuzz_client, headers)
    await fuzzer.fuzz(generated(EXAMPLES[credentials]))
    fuzzer.assert_clean()
    if credentials == "anonymous":
        # Without a key, no operation that needs one got past the door.
        for label in ("GET /emails/{id}", "GET /recipients/{email}", "GET /status/reputation"):
            # (404: a mail id that is not a UUID names no route; nothing is read.)
            assert fuzzer.statuses[label] <= {401, 404, 422}, (label, fuzzer.statuses[label])


async def test_requests_about_things_that_exist_get_documented_answers(
    fuzz_client: httpx.AsyncClient,
    auth: dict[str, str],
    identity: tuple[bytes, bytes],
    ses: MotoSes,
    engine: AsyncEngine,
) -> None:
    client = fuzz_client
    sent = await client.post(
        "/emails/matching-notification", json=body(kind="matching-notification"), headers=auth
    )
    assert sent.status_code == 202, sent.text
    await drain(client)
    email_id = sent.json()["id"]
    [mail] = ses.sent()
    token = mail.message["List-Unsubscribe"].strip("<>").rsplit("/", 1)[1]
    sns = Sns(client, identity[0])
    notification = sns.notification(
        ses_event(
            "eventpub-delivery.json", to="taro@example.com", ses_message_id=mail.ses_message_id
        )
    )

    def seeded(label: str, **fixed: Any) -> tuple[str, st.SearchStrategy[Any], int]:
        return (f"{label} (seeded)", _operation(label).as_strategy(**fixed), SEEDED_EXAMPLES)

    fuzzer = Fuzzer(client, auth)
    # A valid address and the right param name, the rest generated: the link's text, the user
    # id and the Idempotency-Key get past validation to the rules, PostgreSQL and the worker.
    mails = _operation("POST /emails/verify-email").as_strategy()
    await fuzzer.fuzz(
        [("POST /emails/verify-email (seeded)", mails.map(_addressed), MAIL_EXAMPLES)]
    )
    fuzzer.assert_clean()
    assert 202 in fuzzer.statuses["POST /emails/verify-email"]
    # Whatever the API accepted, the worker can render and send.
    await drain(client)
    async with engine.connect() as conn:
        unsent = (
            await conn.execute(
                text("SELECT status, last_error FROM message WHERE status <> 'sent'")
            )
        ).all()
    assert unsent == []

    address = {"email": "taro@example.com"}
    jobs = [
        seeded("GET /emails/{id}", path_parameters={"id": email_id}),
        seeded("GET /recipients/{email}", path_parameters=address),
        seeded("GET /unsubscribe/{token}", path_parameters={"token": token}),
        seeded("POST /unsubscribe/{token}", path_parameters={"token": token}),
        seeded("POST /sns/ses-events", body=notification, media_type="application/json"),
        seeded("PUT /recipients/{email}/suppression", path_parameters=address),
        seeded("GET /recipients/{email}", path_parameters=address),
        seeded("DELETE /recipients/{email}/suppression", path_parameters=address),
        seeded("DELETE /recipients/{email}", path_parameters=address),
        seeded("GET /emails/{id}", path_parameters={"id": email_id}),
    ]
    await fuzzer.fuzz(jobs)
    fuzzer.assert_clean()
    # The things did exist: each seeded operation answered 2xx at least once.
    for label, statuses in fuzzer.statuses.items():
        assert any(200 <= s < 300 for s in statuses), (label, statuses)


# Text that has broken services before: NUL (PostgreSQL text cannot hold it), lone surrogates
# (not encodable), invisible and bidi characters, header injection, escapes, very long text.
HOSTILE = [
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "\u202egnp.exe",
    "\u200b",
    "\r\nBcc: victim@example.com",
    "%00%ff",
    "../../etc/passwd",
    "' OR 1=1 --",
    "😀\uffff",
    "A" * 5000,
]


async def test_hostile_text_in_any_field_is_refused_or_kept_never_a_5xx(
    fuzz_client: httpx.AsyncClient,
    auth: dict[str, str],
    identity: tuple[bytes, bytes],
    engine: AsyncEngine,
    ses: MotoSes,
) -> None:
    client = fuzz_client
    signed = Sns(client, identity[0]).notification(
        ses_event("eventpub-delivery.json", to="taro@example.com")
    )
    cases: list[Case] = []
    for value in HOSTILE:
        # A path carries bytes: percent-encoded UTF-8 (surrogates too, as a broken client might).
        segment = quote(value, safe="", errors="surrogatepass")
        mail = _operation("POST /emails/verify-email")
        extras: list[dict[str, Any]] = [
            {"user_id": value},
            {"params": {"verification_url": f"https://proworks.jp/{value}"}},
            {"to": f"{value}@example.com"},
        ]
        for extra in extras:
            cases.append(
                mail.Case(
                    body={**body(), **extra},
                    media_type="application/json",
                )
            )
        cases.append(
            _operation("PUT /recipients/{email}/suppression").Case(
                path_parameters={"email": "hana@example.com"},
                body={"detail": value},
                media_type="application/json",
            )
        )
        for label in ("GET /recipients/{email}", "DELETE /recipients/{email}"):
            cases.append(_operation(label).Case(path_parameters={"email": segment}))
        if "/" not in value:  # elsewhere an encoded "/" is another URL: a 404 of no route
            for label in ("GET /unsubscribe/{token}", "POST /unsubscribe/{token}"):
                cases.append(_operation(label).Case(path_parameters={"token": segment}))
            cases.append(_operation("GET /emails/{id}").Case(path_parameters={"id": segment}))
        for field in ("Message", "MessageId", "Subject"):  # edited after signing
            cases.append(
                _operation("POST /sns/ses-events").Case(
                    body={**signed, field: value}, media_type="application/json"
                )
            )
    fuzzer = Fuzzer(client, auth)
    await fuzzer.fuzz(
        [(f"{c.operation.label} {c.formatted_path} {c.body!r:.60}", st.just(c), 1) for c in cases]
    )
    fuzzer.assert_clean()

    # What was accepted goes out: nothing in it trips the renderer or SES.
    await drain(client)
    async with engine.connect() as conn:
        statuses = (
            await conn.execute(text("SELECT status, count(*) FROM message GROUP BY 1"))
        ).all()
    assert dict(statuses).keys() <= {"sent"}, statuses


async def test_address_with_a_slash_can_be_suppressed_read_lifted_and_erased(
    fuzz_client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    # "/" is allowed in a local part, and the send API takes such an address: the recipient
    # API must reach it too (as %2F), or it could never be erased.
    client = fuzz_client
    accepted = await client.post("/emails/verify-email", json=body("a/b@example.com"), headers=auth)
    assert accepted.status_code == 202, accepted.text
    path = "/recipients/a%2Fb@example.com"
    assert (await client.put(f"{path}/suppression", json={}, headers=auth)).status_code == 200
    shown = await client.get(path, headers=auth)
    assert shown.status_code == 200, shown.text
    assert shown.json()["address"] == "a/b@example.com"
    assert shown.json()["suppressed"]["reason"] == "manual"
    assert (await client.delete(f"{path}/suppression", headers=auth)).status_code == 200
    assert (await client.delete(path, headers=auth)).status_code == 200
    assert (await client.get(path, headers=auth)).json()["address"] is None
