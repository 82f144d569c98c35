"""Tags on a send: checked (422 naming the tag), stored, shown by GET /emails/{id}, on batch
items too, and handed to SES as message tags (this module's SES is tests/fake_ses.py, which
records each SendEmail as SES got it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fake_ses import FakeSes
from tests.sns_messages import PARAMS


@pytest.fixture
def ses(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSes]:
    fake = FakeSes().start()
    for name, value in fake.environment().items():
        monkeypatch.setenv(name, value)
    yield fake
    fake.stop()


def reset(tags: Any, to: str = "taro@example.com") -> dict[str, Any]:
    return {"to": to, "params": PARAMS["password-reset"], "tags": tags}


async def test_tags_are_stored_shown_and_handed_to_ses(
    client: httpx.AsyncClient, auth: dict[str, str], ses: FakeSes
) -> None:
    answer = await client.post(
        "/emails/password-reset", json=reset({"job_id": "J-1", "wave": "a_b-3"}), headers=auth
    )
    assert answer.status_code == 202, answer.text
    email_id = answer.json()["id"]
    await client.app.state.worker.drain()  # type: ignore[attr-defined]

    shown = (await client.get(f"/emails/{email_id}", headers=auth)).json()
    assert shown["tags"] == {"job_id": "J-1", "wave": "a_b-3"}
    [request] = [r for r in ses.sent() if r.tegami_id == email_id]
    tags = {t["Name"]: t["Value"] for t in request.body["EmailTags"]}
    assert tags["job_id"] == "J-1" and tags["wave"] == "a_b-3"
    assert tags["tegami_id"] == email_id


async def test_a_mail_without_tags_shows_none(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    answer = await client.post(
        "/emails/password-reset",
        json={"to": "t@example.com", "params": PARAMS["password-reset"]},
        headers=auth,
    )
    shown = (await client.get(f"/emails/{answer.json()['id']}", headers=auth)).json()
    assert shown["tags"] == {}


@pytest.mark.parametrize(
    ("tags", "named"),
    [
        ({"job id": "J-1"}, "job id"),
        ({"job_id": "J 1"}, "job_id"),
        ({"job_id": "求人"}, "job_id"),
        ({"tegami_id": "x"}, "tegami_id"),
        ({"empty": ""}, "empty"),
        ({"n": 1}, "n"),
        ({f"k{i}": "v" for i in range(11)}, "at most 10"),
    ],
)
async def test_a_bad_tag_is_422_naming_it(
    client: httpx.AsyncClient, auth: dict[str, str], tags: dict[str, Any], named: str
) -> None:
    answer = await client.post("/emails/password-reset", json=reset(tags), headers=auth)

    assert answer.status_code == 422, answer.text
    assert named in answer.text


async def test_batch_items_carry_their_own_tags(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    answer = await client.post(
        "/emails/password-reset/batch",
        json={"emails": [reset({"job_id": "J-7"}, "a@example.com"), reset({"bad tag": "x"})]},
        headers=auth,
    )
    assert answer.status_code == 200, answer.text
    good, bad = answer.json()["results"]
    assert "bad tag" in str(bad["error"])
    shown = (await client.get(f"/emails/{good['id']}", headers=auth)).json()
    assert shown["tags"] == {"job_id": "J-7"}
    found = (await client.get("/emails", params={"tag": "job_id:J-7"}, headers=auth)).json()
    assert [e["id"] for e in found["emails"]] == [good["id"]]
