"""POST /emails/<type> and GET /emails/{id}, through HTTP, with moto's SES behind the worker."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import create_sessionmaker
from app.emails.catalog import EMAIL_KINDS
from app.models import Category, Message, SuppressionReason
from app.recipients import service as recipients
from app.recipients.addresses import address_hash
from tests.conftest import make_settings
from tests.ses import MotoSes

LINKS = {
    "verify-email": {"verification_url": "https://proworks.jp/verify?token=v1"},
    "password-reset": {"reset_url": "https://proworks.jp/reset?token=r1"},
    "email-change": {"verification_url": "https://proworks.jp/change?token=c1"},
    "matching-notification": {"job_url": "https://proworks.jp/jobs/42"},
}


def body(to: str = "taro@example.com", kind: str = "verify-email", **extra: Any) -> dict[str, Any]:
    return {"to": to, "params": LINKS[kind], **extra}


async def drain(client: httpx.AsyncClient) -> int:
    handled: int = await client.app.state.worker.drain()  # type: ignore[attr-defined]
    return handled


@pytest.mark.parametrize("kind", list(EMAIL_KINDS))
async def test_each_type_reaches_ses_with_its_subject_bodies_and_headers(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes, kind: str
) -> None:
    answer = await client.post(f"/emails/{kind}", json=body(kind=kind), headers=auth)
    assert answer.status_code == 202
    assert answer.json()["status"] == "queued"

    await drain(client)

    [mail] = ses.sent()
    message = mail.message
    assert mail.source == "PRO WORKS <noreply@proworks.jp>"
    assert message["From"] == "PRO WORKS <noreply@proworks.jp>"
    assert message["To"] == "taro@example.com"
    assert message["Subject"] == EMAIL_KINDS[kind].subject
    assert message["List-Unsubscribe"].startswith("<https://mail.proworks.jp/unsubscribe/")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message.get_content_type() == "multipart/alternative"
    text_part = message.get_body(("plain",))
    html_part = message.get_body(("html",))
    assert text_part is not None and html_part is not None
    link = next(iter(LINKS[kind].values()))
    unsubscribe = message["List-Unsubscribe"].strip("<>")
    assert f"▶ {link}" in text_part.get_content()
    assert unsubscribe in text_part.get_content()
    assert link in html_part.get_content()
    assert unsubscribe in html_part.get_content()
    if EMAIL_KINDS[kind].lifetime:
        assert "このリンクの有効期限は1時間です。" in text_part.get_content()

    shown = (await client.get(f"/emails/{answer.json()['id']}", headers=auth)).json()
    assert shown["status"] == "sent"
    assert shown["ses_message_id"] == mail.ses_message_id
    assert [event["kind"] for event in shown["events"]] == ["accepted", "sent"]
    if EMAIL_KINDS[kind].lifetime:
        # The lifetime the mail states is the one enforced: never sent after the hour.
        created = datetime.fromisoformat(shown["created_at"])
        assert datetime.fromisoformat(shown["expires_at"]) - created == timedelta(hours=1)
    else:
        assert shown["expires_at"] is None


async def test_matching_notification_names_the_sender_for_the_law(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes
) -> None:
    await client.post(
        "/emails/matching-notification", json=body(kind="matching-notification"), headers=auth
    )
    await drain(client)
    text_part = ses.sent()[0].message.get_body(("plain",))
    assert text_part is not None
    content = text_part.get_content()
    assert "PRO WORKS" in content
    assert "〒100-0001 東京都千代田区千代田1-1" in content
    assert "support@proworks.jp" in content


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer tgm_not-a-key"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
)
async def test_send_without_a_valid_api_key_is_401(
    client: httpx.AsyncClient, ses: MotoSes, headers: dict[str, str]
) -> None:
    answer = await client.post("/emails/verify-email", json=body(), headers=headers)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"
    assert await drain(client) == 0


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"to": "not-an-address", "params": LINKS["verify-email"]}, "to"),
        ({"to": "taro@example.com\r\nBcc: x@evil.test", "params": LINKS["verify-email"]}, "to"),
        ({"to": "tarō@example.com", "params": LINKS["verify-email"]}, "to"),
        ({"to": "taro@example.com", "params": {}}, "verification_url"),
        (
            {"to": "taro@example.com", "params": {**LINKS["verify-email"], "name": "x"}},
            "name",
        ),
        ({"to": "taro@example.com", "params": {"verification_url": "http://proworks.jp/v"}}, ""),
        ({"to": "taro@example.com", "params": {"verification_url": "https://evil.test/v"}}, ""),
        (
            {
                "to": "taro@example.com",
                "params": {"verification_url": "https://proworks.jp@evil.test/"},
            },
            "",
        ),
        (
            {
                "to": "taro@example.com",
                "params": {"verification_url": "https://proworks.jp/\r\nX: y"},
            },
            "",
        ),
        ({"to": "taro@example.com", "params": LINKS["verify-email"], "cc": "a@b.jp"}, "cc"),
        ({"to": "taro@example.com", "params": {"verification_url": 5}}, "verification_url"),
    ],
)
async def test_invalid_request_is_422_and_names_the_field(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes, payload: Any, field: str
) -> None:
    answer = await client.post("/emails/verify-email", json=payload, headers=auth)
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] in {"invalid_request", "invalid_params"}
    assert field in str(error["detail"])
    assert await drain(client) == 0


async def test_unknown_type_is_404_naming_the_types(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    # One static path per type: an unknown type is no resource at all.
    answer = await client.post("/emails/newsletter", json=body(), headers=auth)
    assert answer.status_code == 404
    assert "/emails/password-reset" in answer.json()["error"]["message"]


async def test_malformed_json_is_422_not_500(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    answer = await client.post(
        "/emails/verify-email",
        content=b'{"to": "taro@example.com", ',
        headers={**auth, "Content-Type": "application/json"},
    )
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "invalid_request"


async def test_wrong_content_type_is_415(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    answer = await client.post(
        "/emails/verify-email",
        content=b"to=taro@example.com",
        headers={**auth, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 415


async def test_body_over_64_kib_is_413(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    huge = {
        "to": "taro@example.com",
        "params": {"verification_url": "https://proworks.jp/" + "a" * 70_000},
    }
    answer = await client.post("/emails/verify-email", json=huge, headers=auth)
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "payload_too_large"


async def test_idempotency_key_retry_returns_the_first_answer_and_sends_once(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes
) -> None:
    headers = {**auth, "Idempotency-Key": "signup-123"}
    first = await client.post("/emails/verify-email", json=body(), headers=headers)
    await drain(client)
    again = await client.post("/emails/verify-email", json=body(), headers=headers)
    await drain(client)

    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(ses.sent()) == 1


async def test_idempotency_key_with_another_body_is_refused(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes
) -> None:
    headers = {**auth, "Idempotency-Key": "signup-123"}
    await client.post("/emails/verify-email", json=body(), headers=headers)
    other = await client.post(
        "/emails/verify-email", json=body("jiro@example.com"), headers=headers
    )
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"


async def test_concurrent_retries_with_one_key_make_one_mail(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes, engine: AsyncEngine
) -> None:
    headers = {**auth, "Idempotency-Key": "burst-1"}
    answers = await asyncio.gather(
        *(client.post("/emails/verify-email", json=body(), headers=headers) for _ in range(8))
    )
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["id"] for a in answers}) == 1
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(Message))).scalar_one() == 1
    await drain(client)
    assert len(ses.sent()) == 1


async def _suppress(engine: AsyncEngine, address: str, reason: SuppressionReason) -> None:
    secret = make_settings("postgresql://x/y").address_hash_secret.get_secret_value()
    async with create_sessionmaker(engine)() as session:
        await recipients.suppress(
            session,
            address_hash=address_hash(address, secret=secret),
            reason=reason,
            cause="test",
        )
        await session.commit()


async def test_suppressed_address_is_refused_with_409_whatever_its_case(
    client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes
) -> None:
    await _suppress(engine, "taro@example.com", SuppressionReason.HARD_BOUNCE)
    answer = await client.post(
        "/emails/password-reset",
        json=body(" Taro@Example.COM".strip(), "password-reset"),
        headers=auth,
    )
    assert answer.status_code == 409
    assert answer.json()["error"] == {
        "code": "suppressed",
        "message": "the address is suppressed",
        "reason": "hard_bounce",
    }
    assert await drain(client) == 0


async def test_opted_out_address_gets_account_mail_but_not_matching(
    client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes
) -> None:
    first = await client.post("/emails/verify-email", json=body(), headers=auth)
    assert first.status_code == 202
    async with create_sessionmaker(engine)() as session:
        message = await session.get(Message, uuid.UUID(first.json()["id"]))
        assert message is not None
        await recipients.opt_out(
            session, recipient_id=message.recipient_id, category=Category.MATCHING, cause="test"
        )
        await session.commit()

    matching = await client.post(
        "/emails/matching-notification", json=body(kind="matching-notification"), headers=auth
    )
    reset = await client.post(
        "/emails/password-reset", json=body(kind="password-reset"), headers=auth
    )
    assert matching.status_code == 409
    assert matching.json()["error"]["code"] == "opted_out"
    assert reset.status_code == 202


async def test_unknown_email_id_is_404(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    answer = await client.get(f"/emails/{uuid.uuid4()}", headers=auth)
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "email_not_found"


NO_SUCH_TYPE = (
    "no such type of mail; POST to /emails/verify-email, /emails/password-reset, "
    "/emails/email-change or /emails/matching-notification"
)


async def test_a_path_under_emails_that_is_not_there_says_what_is(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    def error(answer: httpx.Response) -> tuple[int, dict[str, str], str | None]:
        return answer.status_code, answer.json()["error"], answer.headers.get("allow")

    no_type = await client.post("/emails/newsletter", json=body(), headers=auth)
    assert error(no_type) == (404, {"code": "not_found", "message": NO_SUCH_TYPE}, None)
    no_mail = await client.get("/emails/newsletter", headers=auth)
    assert error(no_mail) == (404, {"code": "not_found", "message": "no such email"}, None)
    post_to_a_mail = await client.post(f"/emails/{uuid.uuid4()}", json=body(), headers=auth)
    assert error(post_to_a_mail) == (
        405,
        {"code": "method_not_allowed", "message": NO_SUCH_TYPE},
        "DELETE, GET",
    )
    get_a_send_path = await client.get("/emails/verify-email", headers=auth)
    assert error(get_a_send_path) == (
        405,
        {"code": "method_not_allowed", "message": "Method Not Allowed"},
        "POST",
    )
    elsewhere = await client.get("/nowhere", headers=auth)
    assert error(elsewhere) == (404, {"code": "not_found", "message": "Not Found"}, None)
