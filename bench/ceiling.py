"""The ceiling: the least work any service could do for the same requests, on the same stack.

    CEILING_DATABASE_URL=postgresql://... uvicorn bench.ceiling:app --port 8102 --no-access-log

A bare FastAPI app on asyncpg (no ORM, no middleware, no auth), served by uvicorn in one
process exactly like ``tegami serve``:

- ``POST /emails/{type}``: validate the JSON body with pydantic, one INSERT, answer 202.
- ``POST /forward/emails/{type}``: the same, then (after the answer) one SESv2 SendEmail to
  ``CEILING_SES_URL`` with a shared HTTP client: the floor of accept-to-SES latency.
- ``POST /sns/ses-events``: parse the SNS JSON, verify its RSA signature against the
  certificate in ``CEILING_SNS_CERT``, one INSERT of the MessageId (ON CONFLICT DO NOTHING).

Its tables (``ceiling_message``, ``ceiling_sns``) are created by ``bench/runner.py``.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fastapi import BackgroundTasks, FastAPI, Request, Response
from pydantic import BaseModel

_INSERT_MESSAGE = (
    "INSERT INTO ceiling_message (id, kind, to_address, params, created_at) "
    "VALUES ($1, $2, $3, $4::jsonb, now())"
)
_INSERT_SNS = "INSERT INTO ceiling_sns (message_id) VALUES ($1) ON CONFLICT DO NOTHING"
_SIGNED = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")


class EmailCreate(BaseModel):
    to: str
    params: dict[str, str]
    user_id: str | None = None


class EmailAccepted(BaseModel):
    id: uuid.UUID
    status: str


class State:
    pool: asyncpg.Pool
    http: aiohttp.ClientSession | None = None
    ses_url: str | None = None
    sns_key: rsa.RSAPublicKey | None = None


state = State()


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    # The pool tegami's engine has: 10, plus 10 overflow.
    state.pool = await asyncpg.create_pool(
        os.environ["CEILING_DATABASE_URL"], min_size=10, max_size=20
    )
    state.ses_url = os.environ.get("CEILING_SES_URL")
    if state.ses_url:
        state.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    cert_path = os.environ.get("CEILING_SNS_CERT")
    if cert_path:
        key = x509.load_pem_x509_certificate(Path(cert_path).read_bytes()).public_key()  # noqa: ASYNC240
        assert isinstance(key, rsa.RSAPublicKey)
        state.sns_key = key
    try:
        yield
    finally:
        if state.http is not None:
            await state.http.close()
        await state.pool.close()


app = FastAPI(lifespan=lifespan)


async def _insert(type: str, body: EmailCreate) -> uuid.UUID:
    message_id = uuid.uuid4()
    await state.pool.execute(_INSERT_MESSAGE, message_id, type, body.to, json.dumps(body.params))
    return message_id


@app.post("/emails/{type}", status_code=202)
async def accept(type: str, body: EmailCreate) -> EmailAccepted:
    return EmailAccepted(id=await _insert(type, body), status="queued")


async def _send(message_id: uuid.UUID, body: EmailCreate) -> None:
    assert state.http is not None and state.ses_url is not None
    raw = f"To: {body.to}\r\nSubject: ceiling\r\n\r\n{body.params}\r\n".encode()
    request = {
        "FromEmailAddress": "noreply@proworks.jp",
        "Destination": {"ToAddresses": [body.to]},
        "Content": {"Raw": {"Data": base64.b64encode(raw).decode()}},
        "EmailTags": [{"Name": "tegami_id", "Value": str(message_id)}],
    }
    async with state.http.post(f"{state.ses_url}/v2/email/outbound-emails", json=request) as r:
        await r.read()


@app.post("/forward/emails/{type}", status_code=202)
async def accept_and_send(
    type: str, body: EmailCreate, background: BackgroundTasks
) -> EmailAccepted:
    message_id = await _insert(type, body)
    background.add_task(_send, message_id, body)
    return EmailAccepted(id=message_id, status="queued")


@app.post("/sns/ses-events")
async def sns(request: Request) -> Response:
    message: dict[str, Any] = json.loads(await request.body())
    canonical = "".join(
        f"{field}\n{message[field]}\n" for field in _SIGNED if field in message
    ).encode()
    assert state.sns_key is not None
    # SignatureVersion 1 is SHA1withRSA, as AWS signs it.
    algorithm = hashes.SHA256() if message["SignatureVersion"] == "2" else hashes.SHA1()  # noqa: S303
    state.sns_key.verify(
        base64.b64decode(message["Signature"]), canonical, padding.PKCS1v15(), algorithm
    )
    await state.pool.execute(_INSERT_SNS, message["MessageId"])
    return Response(b'{"outcome":"applied"}', media_type="application/json")


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
