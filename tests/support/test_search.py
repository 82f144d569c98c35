"""GET /emails: support finds a person's mail by address (any case, either spelling of a
carrier address), user id, type, status, tag and time, newest first, page by page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from app.models import ApiKeyScope
from tests.support.conftest import Desk


async def find(desk: Desk, auth: dict[str, str] | None = None, **query: Any) -> httpx.Response:
    return await desk.client.get("/emails", params=query, headers=auth or desk.auth)


async def found(desk: Desk, **query: Any) -> dict[str, Any]:
    answer = await find(desk, **query)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_finds_a_persons_mail_in_any_case_newest_first(desk: Desk) -> None:
    first = await desk.delivered("Taro@Example.com")
    second = await desk.send("taro@example.com", "matching-notification")
    await desk.send("someone.else@example.com")

    body = await found(desk, to="TARO@example.COM")

    assert [e["id"] for e in body["emails"]] == [second, first]
    newest, oldest = body["emails"]
    assert newest["status"] == "queued" and newest["type"] == "matching-notification"
    assert oldest["to"] == "Taro@Example.com"
    assert oldest["last_event"]["kind"] == "delivery"
    assert body["next_cursor"] is None


async def test_either_spelling_of_a_carrier_address_finds_the_same_mail(desk: Desk) -> None:
    email_id = await desk.send("taro.@docomo.ne.jp")

    quoted = await found(desk, to='"taro."@docomo.ne.jp')
    bare = await found(desk, to="taro.@docomo.ne.jp")

    assert [e["id"] for e in quoted["emails"]] == [email_id]
    assert [e["id"] for e in bare["emails"]] == [email_id]


async def test_a_bounce_shows_ses_diagnostic_as_the_last_event(desk: Desk) -> None:
    email_id, ses_id = await desk.sent("gone@example.com")
    await desk.ses("notif-bounce-permanent-general-with-dsn.json", "gone@example.com", ses_id)

    [mail] = (await found(desk, to="gone@example.com"))["emails"]

    assert mail["id"] == email_id and mail["status"] == "bounced"
    assert mail["last_event"]["kind"] == "bounce"
    assert "550" in (mail["last_event"]["detail"] or ""), mail


async def test_filters_by_user_type_status_tag_and_time(desk: Desk) -> None:
    reset = await desk.send("a@example.com", user_id="u-1", tags={"job_id": "J-1"})
    notification = await desk.send(
        "a@example.com", "matching-notification", user_id="u-1", tags={"job_id": "J-2"}
    )
    await desk.send("b@example.com", user_id="u-2", tags={"job_id": "J-1", "wave": "3"})

    by_user = await found(desk, user_id="u-1")
    assert [e["id"] for e in by_user["emails"]] == [notification, reset]
    by_type = await found(desk, user_id="u-1", type="password-reset")
    assert [e["id"] for e in by_type["emails"]] == [reset]
    by_tag = await found(desk, tag="job_id:J-1", to="a@example.com")
    assert [e["id"] for e in by_tag["emails"]] == [reset]
    assert by_tag["emails"][0]["tags"] == {"job_id": "J-1"}
    both_tags = await found(desk, tag=["job_id:J-1", "wave:3"])
    assert [e["user_id"] for e in both_tags["emails"]] == ["u-2"]
    assert (await found(desk, status="sent"))["emails"] == []
    assert len((await found(desk, status="queued"))["emails"]) == 3
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert (await found(desk, since=later))["emails"] == []
    assert len((await found(desk, until=later))["emails"]) == 3


async def test_pages_follow_the_cursor_to_the_end(desk: Desk) -> None:
    sent = [await desk.send("many@example.com") for _ in range(7)]

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query: dict[str, Any] = {"to": "many@example.com", "limit": 3}
        if cursor:
            query["cursor"] = cursor
        body = await found(desk, **query)
        seen += [e["id"] for e in body["emails"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break

    assert pages == 3
    assert seen == list(reversed(sent))


async def test_a_test_key_finds_only_the_mail_it_sent(desk: Desk) -> None:
    test_key = await desk.key(ApiKeyScope.TEST)
    await desk.send("shared@example.com")
    own = await desk.send("shared@example.com", auth=test_key)

    answer = await find(desk, auth=test_key, to="shared@example.com")

    assert [e["id"] for e in answer.json()["emails"]] == [own]


async def test_bad_filters_are_422(desk: Desk) -> None:
    for query in (
        {"to": "not an address"},
        {"tag": "no-colon"},
        {"cursor": "!!!"},
        {"limit": 101},
        {"status": "lost"},
        {"until": "0.5"},
        {"since": "2026-12-05T09:00:00"},
    ):
        answer = await find(desk, **query)
        assert answer.status_code == 422, (query, answer.text)
        assert answer.json()["error"]["code"] == "invalid_request"
    assert (await desk.client.get("/emails")).status_code == 401
