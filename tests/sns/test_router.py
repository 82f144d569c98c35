"""POST /sns/ses-events through HTTP: verification, answers, and every recipient rule.

Real-shaped SES events from ../shared/fixtures/ses-events/ are signed here with a throwaway key
whose certificate is served through TEGAMI_SNS_CERT_DIR, exactly as SNS would post them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.models import AuditEvent, Message, Recipient, SnsMessage
from app.recipients.addresses import address_hash
from tests.conftest import AppFactory
from tests.ses import MotoSes
from tests.sns_messages import (
    CERT_NAME,
    COMPLAINTS,
    GENUINE,
    GENUINE_FILES,
    HASH_SECRET,
    PARAMS,
    PERMANENT_BOUNCES,
    REGION,
    SOFT_BOUNCES,
    TOPIC,
    Sns,
    iso,
    ses_event,
)

# -- what the app and an operator see --------------------------------------------------------


async def send(
    sns: Sns, auth: dict[str, str], to: str, kind: str = "verify-email"
) -> httpx.Response:
    return await sns.client.post(
        f"/emails/{kind}", json={"to": to, "params": PARAMS[kind]}, headers=auth
    )


async def assert_suppressed(sns: Sns, auth: dict[str, str], to: str, reason: str) -> None:
    answer = await send(sns, auth, to)
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["code"] == "suppressed"
    assert answer.json()["error"]["reason"] == reason


async def assert_sendable(sns: Sns, auth: dict[str, str], to: str) -> None:
    answer = await send(sns, auth, to)
    assert answer.status_code == 202, answer.text


async def drain(sns: Sns) -> int:
    handled: int = await sns.client.app.state.worker.drain()  # type: ignore[attr-defined]
    return handled


async def sent_mail(sns: Sns, auth: dict[str, str], to: str) -> tuple[str, str]:
    """Send through the API and the worker to moto; return (email id, SES MessageId)."""
    accepted = await send(sns, auth, to)
    assert accepted.status_code == 202, accepted.text
    await drain(sns)
    shown = await email(sns, auth, accepted.json()["id"])
    assert shown["status"] == "sent"
    return shown["id"], shown["ses_message_id"]


async def email(sns: Sns, auth: dict[str, str], email_id: str) -> dict[str, Any]:
    answer = await sns.client.get(f"/emails/{email_id}", headers=auth)
    assert answer.status_code == 200
    shown: dict[str, Any] = answer.json()
    return shown


async def audit(engine: AsyncEngine, address: str) -> list[tuple[str, str | None, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(AuditEvent.action, AuditEvent.reason, AuditEvent.cause)
            .where(AuditEvent.address_hash == address_hash(address, secret=HASH_SECRET))
            .order_by(AuditEvent.id)
        )
        return [(row.action, row.reason, row.cause) for row in rows]


async def soft_bounce_count(engine: AsyncEngine, address: str) -> int | None:
    async with engine.connect() as conn:
        count: int | None = (
            await conn.execute(
                select(Recipient.soft_bounce_count).where(
                    Recipient.address_hash == address_hash(address, secret=HASH_SECRET)
                )
            )
        ).scalar_one_or_none()
        return count


# -- verification and answers ---------------------------------------------------------------


@pytest.fixture
async def genuine(start_app: AppFactory) -> httpx.AsyncClient:
    topics = [json.loads((GENUINE / name).read_text())["TopicArn"] for name in GENUINE_FILES]
    # From 2022: the age check is off for them (0), everything else is checked.
    return await start_app(sns_cert_dir=GENUINE, sns_topic_arns=topics, sns_max_age_seconds=0)


@pytest.mark.parametrize("name", GENUINE_FILES)
async def test_genuine_aws_messages_verify_and_are_ignored_as_not_ses_feedback(
    genuine: httpx.AsyncClient, engine: AsyncEngine, name: str
) -> None:
    body = (GENUINE / name).read_bytes()
    headers = {"Content-Type": "text/plain; charset=UTF-8"}
    first = await genuine.post("/sns/ses-events", content=body, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json() == {
        "message_id": json.loads(body)["MessageId"],
        "outcome": "ignored",
    }
    again = await genuine.post("/sns/ses-events", content=body, headers=headers)
    assert again.status_code == 200
    assert again.json()["outcome"] == "duplicate"
    async with engine.connect() as conn:
        outcome = (await conn.execute(select(SnsMessage.outcome))).scalars().all()
    assert outcome == ["ignored"]


@pytest.mark.parametrize("name", GENUINE_FILES)
async def test_genuine_message_edited_by_one_byte_is_refused(
    genuine: httpx.AsyncClient, name: str
) -> None:
    body = (
        (GENUINE / name)
        .read_bytes()
        .replace(b'"Message": "Hello world"', b'"Message": "Hello worle"')
    )
    answer = await genuine.post("/sns/ses-events", content=body)
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "bad_signature"


async def test_foreign_topic_is_refused_and_changes_nothing(sns: Sns, auth: dict[str, str]) -> None:
    event = ses_event("eventpub-bounce-permanent-general.json", to="taro@example.com")
    foreign = f"arn:aws:sns:{REGION}:999999999999:someone-elses-topic"
    answer = await sns.post(sns.notification(event, TopicArn=foreign))
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "topic_not_allowed"
    await assert_sendable(sns, auth, "taro@example.com")


async def test_event_edited_after_signing_is_refused(sns: Sns, auth: dict[str, str]) -> None:
    signed = sns.notification(
        ses_event("eventpub-bounce-permanent-general.json", to="hanako@example.com")
    )
    signed["Message"] = signed["Message"].replace("hanako@example.com", "taro@example.com")
    answer = await sns.post(signed)
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "bad_signature"
    await assert_sendable(sns, auth, "taro@example.com")


async def test_old_message_is_refused(sns: Sns, auth: dict[str, str]) -> None:
    event = ses_event("eventpub-bounce-permanent-general.json", to="taro@example.com")
    two_hours_ago = iso(datetime.now(UTC) - timedelta(hours=2))
    answer = await sns.post(sns.notification(event, Timestamp=two_hours_ago))
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "too_old"
    await assert_sendable(sns, auth, "taro@example.com")


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b"",
        json.dumps({"Type": "Notification", "Message": "x"}).encode(),
        json.dumps({"Type": "Surprise"}).encode(),
    ],
    ids=["malformed", "array", "empty", "missing-fields", "unknown-type"],
)
async def test_body_that_is_not_an_sns_message_is_400(sns: Sns, body: bytes) -> None:
    answer = await sns.post(body)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "not_sns_message"


async def test_field_of_the_wrong_type_is_400(sns: Sns) -> None:
    message = sns.notification(ses_event("eventpub-delivery.json"))
    message["MessageId"] = 12345
    answer = await sns.post(message)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "not_sns_message"


async def test_json_content_type_is_accepted_too(sns: Sns, auth: dict[str, str]) -> None:
    event = ses_event("eventpub-bounce-permanent-general.json", to="taro@example.com")
    answer = await sns.post(sns.notification(event), content_type="application/json")
    assert answer.status_code == 200
    await assert_suppressed(sns, auth, "taro@example.com", "hard_bounce")


async def test_verified_bounce_that_cannot_be_read_is_400_and_not_recorded(
    sns: Sns, auth: dict[str, str]
) -> None:
    event = ses_event("eventpub-bounce-permanent-general.json", to="taro@example.com")
    del event["bounce"]["bounceType"]
    message = sns.notification(event)
    answer = await sns.post(message)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "unreadable_ses_event"
    # Not recorded: the same MessageId, once readable, would be applied.
    again = await sns.post(message)
    assert again.status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"notificationType": "AmazonSnsSubscriptionSucceeded", "message": "ok"}),
        "Hello world",
        json.dumps({"eventType": "Open", "open": {}}),  # unreadable, but changes nothing
    ],
    ids=["ses-subscription-notice", "plain-text", "unreadable-open"],
)
async def test_verified_message_we_do_not_act_on_is_ignored(sns: Sns, body: str) -> None:
    answer = await sns.post(sns.notification(body))
    assert answer.status_code == 200
    assert answer.json()["outcome"] == "ignored"


async def test_database_down_answers_503_so_sns_retries(
    start_app: AppFactory, identity: tuple[bytes, bytes], tmp_path: Path
) -> None:
    (tmp_path / CERT_NAME).write_bytes(identity[1])
    client = await start_app(
        database_url="postgresql://postgres@127.0.0.1:1/none",
        sns_cert_dir=tmp_path,
        sns_topic_arns=[TOPIC],
    )
    sns = Sns(client, identity[0])
    answer = await sns.post(sns.notification(ses_event("eventpub-delivery.json")))
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "unavailable"


# -- subscription ---------------------------------------------------------------------------


class FakeSns:
    """Stands in for SNS's ConfirmSubscription endpoint behind app.state.http."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, text="<ConfirmSubscriptionResponse/>")


@pytest.fixture
async def fake_sns(sns: Sns) -> AsyncIterator[FakeSns]:
    fake = FakeSns()
    app = sns.client.app  # type: ignore[attr-defined]
    real = app.state.http
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as http:
        app.state.http = http
        yield fake
    app.state.http = real


async def test_subscription_confirmation_is_confirmed_by_fetching_subscribe_url(
    sns: Sns, fake_sns: FakeSns
) -> None:
    message = sns.confirmation("SubscriptionConfirmation")
    answer = await sns.post(message)
    assert answer.status_code == 200
    assert answer.json()["outcome"] == "confirmed"
    assert [str(r.url) for r in fake_sns.requests] == [message["SubscribeURL"]]
    assert fake_sns.requests[0].method == "GET"

    again = await sns.post(message)
    assert again.json()["outcome"] == "duplicate"
    assert len(fake_sns.requests) == 1


async def test_failed_confirmation_answers_502_and_the_retry_confirms(
    sns: Sns, fake_sns: FakeSns
) -> None:
    message = sns.confirmation("SubscriptionConfirmation")
    fake_sns.status = 500
    failed = await sns.post(message)
    assert failed.status_code == 502
    assert failed.json()["error"]["code"] == "subscribe_failed"
    fake_sns.status = 200
    retried = await sns.post(message)
    assert retried.json()["outcome"] == "confirmed"
    assert len(fake_sns.requests) == 2


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.com/?Action=ConfirmSubscription",
        f"http://sns.{REGION}.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC}",
        f"https://sns.{REGION}.amazonaws.com/?Action=Unsubscribe&TopicArn={TOPIC}",
        f"https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC}",
    ],
    ids=["foreign-host", "http", "unsubscribe-action", "other-region"],
)
async def test_subscription_confirmation_with_a_foreign_url_is_refused_without_fetching(
    sns: Sns, fake_sns: FakeSns, url: str
) -> None:
    answer = await sns.post(sns.confirmation("SubscriptionConfirmation", subscribe_url=url))
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "subscribe_url"
    assert fake_sns.requests == []


async def test_unsubscribe_confirmation_is_recorded_and_never_followed(
    sns: Sns, fake_sns: FakeSns, engine: AsyncEngine
) -> None:
    answer = await sns.post(sns.confirmation("UnsubscribeConfirmation"))
    assert answer.status_code == 200
    assert answer.json()["outcome"] == "recorded"
    assert fake_sns.requests == []
    async with engine.connect() as conn:
        kinds = (await conn.execute(select(SnsMessage.type))).scalars().all()
    assert kinds == ["UnsubscribeConfirmation"]


# -- the recipient rules --------------------------------------------------------------------


@pytest.mark.parametrize(("name", "address"), PERMANENT_BOUNCES)
async def test_permanent_bounce_suppresses_address(
    sns: Sns, auth: dict[str, str], engine: AsyncEngine, name: str, address: str
) -> None:
    event = ses_event(name)
    answer = await sns.deliver(event)
    await assert_suppressed(sns, auth, address, "hard_bounce")
    sns_id = answer.json()["message_id"]
    feedback = event["bounce"]["feedbackId"]
    assert await audit(engine, address) == [
        ("suppressed", "hard_bounce", f"sns:{sns_id} feedback:{feedback}")
    ]


async def test_suppressed_address_gets_no_mail_of_any_category(
    sns: Sns, auth: dict[str, str]
) -> None:
    await sns.deliver(ses_event("eventpub-bounce-permanent-general.json", to="taro@example.com"))
    for kind in ("verify-email", "password-reset", "matching-notification"):
        answer = await send(sns, auth, "taro@example.com", kind)
        assert answer.status_code == 409
        assert answer.json()["error"]["code"] == "suppressed"


async def test_address_case_does_not_dodge_a_suppression(sns: Sns, auth: dict[str, str]) -> None:
    await sns.deliver(ses_event("eventpub-bounce-permanent-general.json", to="Taro@Example.COM"))
    await assert_suppressed(sns, auth, "taro@example.com", "hard_bounce")


@pytest.mark.parametrize(("name", "address"), COMPLAINTS)
async def test_complaint_suppresses_address(
    sns: Sns, auth: dict[str, str], engine: AsyncEngine, name: str, address: str
) -> None:
    answer = await sns.deliver(ses_event(name))
    await assert_suppressed(sns, auth, address, "complaint")
    [(action, reason, cause)] = await audit(engine, address)
    assert (action, reason) == ("suppressed", "complaint")
    assert cause.startswith(f"sns:{answer.json()['message_id']} feedback:")


async def test_not_spam_complaint_does_not_suppress(
    sns: Sns, auth: dict[str, str], engine: AsyncEngine
) -> None:
    event = ses_event(
        "eventpub-complaint-abuse.json", to="taro@example.com", complaintFeedbackType="not-spam"
    )
    await sns.deliver(event)
    await assert_sendable(sns, auth, "taro@example.com")
    assert await audit(engine, "taro@example.com") == []


def undetermined_bounce(to: str) -> dict[str, Any]:
    return ses_event(
        "eventpub-bounce-permanent-general.json",
        to=to,
        bounceType="Undetermined",
        bounceSubType="Undetermined",
    )


def soft_bounce(name: str, to: str) -> dict[str, Any]:
    if name == "undetermined":
        return undetermined_bounce(to)
    return ses_event(name, to=to)


@pytest.mark.parametrize("name", [name for name, _ in SOFT_BOUNCES] + ["undetermined"])
async def test_three_soft_bounces_in_a_row_suppress(
    sns: Sns, auth: dict[str, str], engine: AsyncEngine, name: str
) -> None:
    address = "taro@example.com"
    for _ in range(2):
        await sns.deliver(soft_bounce(name, address))
        await assert_sendable(sns, auth, address)
    third = await sns.deliver(soft_bounce(name, address))
    await assert_suppressed(sns, auth, address, "soft_bounce_limit")
    trail = await audit(engine, address)
    assert [action for action, _, _ in trail] == [
        "soft_bounce_counted",
        "soft_bounce_counted",
        "soft_bounce_counted",
        "suppressed",
    ]
    assert trail[-1][2].startswith(f"sns:{third.json()['message_id']} feedback:")


async def test_delivery_between_soft_bounces_resets_the_count(
    sns: Sns, auth: dict[str, str], engine: AsyncEngine
) -> None:
    address = "taro@example.com"
    await sns.deliver(undetermined_bounce(address))
    await sns.deliver(undetermined_bounce(address))
    await sns.deliver(ses_event("eventpub-delivery.json", to=address))
    assert await soft_bounce_count(engine, address) == 0
    await sns.deliver(undetermined_bounce(address))
    await sns.deliver(undetermined_bounce(address))
    await assert_sendable(sns, auth, address)
    await sns.deliver(undetermined_bounce(address))
    await assert_suppressed(sns, auth, address, "soft_bounce_limit")
    actions = [action for action, _, _ in await audit(engine, address)]
    assert actions.count("soft_bounce_count_reset") == 1


async def test_concurrent_soft_bounces_are_each_counted(
    sns: Sns, auth: dict[str, str], engine: AsyncEngine
) -> None:
    address = "taro@example.com"
    messages = [sns.notification(undetermined_bounce(address)) for _ in range(3)]
    answers = await asyncio.gather(*(sns.post(message) for message in messages))
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    await assert_suppressed(sns, auth, address, "soft_bounce_limit")
    assert await soft_bounce_count(engine, address) == 3


async def test_soft_bounce_below_the_limit_sends_the_message_again(
    sns: Sns, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes
) -> None:
    email_id, ses_id = await sent_mail(sns, auth, "taro@example.com")
    await sns.deliver(ses_event(SOFT_BOUNCES[0][0], to="taro@example.com", ses_message_id=ses_id))

    shown = await email(sns, auth, email_id)
    assert shown["status"] == "queued"
    assert [e["kind"] for e in shown["events"]][-2:] == ["bounce", "resend_scheduled"]
    assert await drain(sns) == 0  # not at once: a few minutes later
    async with engine.begin() as conn:
        due = (
            await conn.execute(select(Message.next_attempt_at).where(Message.id == email_id))
        ).scalar_one()
        assert timedelta(minutes=4) < due - datetime.now(UTC) <= timedelta(minutes=5)
        # The wait passes.
        await conn.execute(
            update(Message).where(Message.id == email_id).values(next_attempt_at=text("now()"))
        )

    assert await drain(sns) == 1
    mails = ses.sent()
    assert len(mails) == 2
    assert {to for mail in mails for to in mail.destinations} == {"taro@example.com"}
    shown = await email(sns, auth, email_id)
    assert shown["status"] == "sent"
    assert shown["ses_message_id"] == mails[1].ses_message_id != ses_id


async def test_soft_bounced_message_whose_link_expires_first_is_not_sent_again(
    sns: Sns, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes
) -> None:
    email_id, ses_id = await sent_mail(sns, auth, "taro@example.com")
    async with engine.begin() as conn:
        await conn.execute(
            update(Message)
            .where(Message.id == email_id)
            .values(expires_at=datetime.now(UTC) + timedelta(minutes=1))
        )
    await sns.deliver(ses_event(SOFT_BOUNCES[0][0], to="taro@example.com", ses_message_id=ses_id))
    shown = await email(sns, auth, email_id)
    assert shown["status"] == "bounced"
    async with engine.begin() as conn:
        await conn.execute(
            update(Message).where(Message.id == email_id).values(next_attempt_at=text("now()"))
        )
    assert await drain(sns) == 0
    assert len(ses.sent()) == 1


async def test_delivery_marks_the_message_delivered(
    sns: Sns, auth: dict[str, str], engine: AsyncEngine
) -> None:
    email_id, ses_id = await sent_mail(sns, auth, "taro@example.com")
    answer = await sns.deliver(
        ses_event("eventpub-delivery.json", to="taro@example.com", ses_message_id=ses_id)
    )
    shown = await email(sns, auth, email_id)
    assert shown["status"] == "delivered"
    delivery = shown["events"][-1]
    assert delivery["kind"] == "delivery"
    assert delivery["cause"] == f"sns:{answer.json()['message_id']}"
    assert delivery["detail"] == "250 2.6.0 Message received"


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("eventpub-deliverydelay.json", "delivery_delay"),
        ("eventpub-send.json", "send"),
        ("eventpub-open.json", "open"),
        ("eventpub-click.json", "click"),
    ],
)
async def test_informational_events_are_recorded_on_the_message_only(
    sns: Sns, auth: dict[str, str], engine: AsyncEngine, name: str, kind: str
) -> None:
    email_id, ses_id = await sent_mail(sns, auth, "taro@example.com")
    await sns.deliver(ses_event(name, to="taro@example.com", ses_message_id=ses_id))
    shown = await email(sns, auth, email_id)
    assert shown["status"] == "sent"
    assert shown["events"][-1]["kind"] == kind
    assert await audit(engine, "taro@example.com") == []
    await assert_sendable(sns, auth, "taro@example.com")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("eventpub-reject.json", "Bad content"),
        (
            "eventpub-renderingfailure.json",
            "Attribute 'attributeName' is not present in the rendering data.",
        ),
    ],
)
async def test_reject_and_rendering_failure_fail_the_message_with_the_reason(
    sns: Sns, auth: dict[str, str], name: str, reason: str
) -> None:
    email_id, ses_id = await sent_mail(sns, auth, "taro@example.com")
    await sns.deliver(ses_event(name, to="taro@example.com", ses_message_id=ses_id))
    shown = await email(sns, auth, email_id)
    assert shown["status"] == "failed"
    assert shown["last_error"] == reason
    await assert_sendable(sns, auth, "taro@example.com")


async def test_duplicate_sns_message_is_applied_once(
    sns: Sns, auth: dict[str, str], engine: AsyncEngine
) -> None:
    address = "taro@example.com"
    message = sns.notification(undetermined_bounce(address))
    assert (await sns.post(message)).json()["outcome"] == "applied"
    for _ in range(3):
        again = await sns.post(message)
        assert again.status_code == 200
        assert again.json()["outcome"] == "duplicate"
    assert await soft_bounce_count(engine, address) == 1
    await assert_sendable(sns, auth, address)


@pytest.mark.parametrize("fixture", ["eventpub-delivery.json", "eventpub-complaint-abuse.json"])
@pytest.mark.parametrize("known", [True, False], ids=["sent-by-tegami", "never-sent"])
async def test_repeat_of_a_delivery_or_complaint_is_a_duplicate_and_changes_nothing(
    sns: Sns, auth: dict[str, str], engine: AsyncEngine, fixture: str, known: bool
) -> None:
    address = "taro@example.com"
    if known:
        email_id, ses_id = await sent_mail(sns, auth, address)
    else:
        ses_id = "0100-never-sent"
    message = sns.notification(ses_event(fixture, to=address, ses_message_id=ses_id))
    assert (await sns.post(message)).json()["outcome"] == "applied"
    trail = await audit(engine, address)
    history = (await email(sns, auth, email_id))["events"] if known else []
    again = await sns.post(message)
    assert again.status_code == 200
    assert again.json()["outcome"] == "duplicate"
    assert await audit(engine, address) == trail
    if known:
        assert (await email(sns, auth, email_id))["events"] == history


async def test_delivery_about_a_message_never_sent_still_resets_the_count(
    sns: Sns, auth: dict[str, str], engine: AsyncEngine
) -> None:
    address = "taro@example.com"
    await sns.deliver(undetermined_bounce(address))
    await sns.deliver(ses_event("eventpub-delivery.json", to=address, ses_message_id="0100-x"))
    assert await soft_bounce_count(engine, address) == 0


async def test_one_soft_bounce_published_twice_by_ses_counts_once(
    sns: Sns, auth: dict[str, str], engine: AsyncEngine
) -> None:
    # Same SES event (same feedbackId), two SNS MessageIds.
    event = ses_event(SOFT_BOUNCES[0][0], to="taro@example.com", feedback_id="0100-same-000000")
    await sns.deliver(event)
    second = await sns.post(sns.notification(event))
    assert second.json()["outcome"] == "duplicate"
    assert await soft_bounce_count(engine, "taro@example.com") == 1


async def test_one_soft_bounce_published_twice_at_once_counts_once(
    sns: Sns, auth: dict[str, str], engine: AsyncEngine
) -> None:
    # The second waits for the first's lock on the recipient, then finds its audit line.
    event = ses_event(SOFT_BOUNCES[0][0], to="taro@example.com", feedback_id="0100-same-000001")
    answers = await asyncio.gather(*(sns.post(sns.notification(event)) for _ in range(2)))
    assert sorted(answer.json()["outcome"] for answer in answers) == ["applied", "duplicate"]
    assert await soft_bounce_count(engine, "taro@example.com") == 1
    assert [action for action, _, _ in await audit(engine, "taro@example.com")] == [
        "soft_bounce_counted"
    ]


async def test_delivery_after_bounce_keeps_suppression_and_bounced_status(
    sns: Sns, auth: dict[str, str]
) -> None:
    email_id, ses_id = await sent_mail(sns, auth, "taro@example.com")
    await sns.deliver(
        ses_event(
            "eventpub-bounce-permanent-general.json", to="taro@example.com", ses_message_id=ses_id
        )
    )
    await sns.deliver(
        ses_event("eventpub-delivery.json", to="taro@example.com", ses_message_id=ses_id)
    )
    shown = await email(sns, auth, email_id)
    assert shown["status"] == "bounced"
    assert [e["kind"] for e in shown["events"]][-2:] == ["bounce", "delivery"]
    await assert_suppressed(sns, auth, "taro@example.com", "hard_bounce")


async def test_unknown_ses_message_still_suppresses_the_address(
    sns: Sns, auth: dict[str, str], engine: AsyncEngine
) -> None:
    event = ses_event(
        "eventpub-complaint-abuse.json", to="taro@example.com", ses_message_id="0100-never-sent"
    )
    await sns.deliver(event)
    await assert_suppressed(sns, auth, "taro@example.com", "complaint")


async def test_soft_bounce_for_an_address_never_mailed_is_counted(
    sns: Sns, auth: dict[str, str], engine: AsyncEngine
) -> None:
    await sns.deliver(undetermined_bounce("new@example.com"))
    assert await soft_bounce_count(engine, "new@example.com") == 1


async def test_several_recipients_in_one_event(sns: Sns, auth: dict[str, str]) -> None:
    # Bounces jane and richard; mary was a destination of the same mail but did not bounce.
    await sns.deliver(ses_event("notif-bounce-permanent-general-no-dsn.json"))
    await assert_suppressed(sns, auth, "jane@example.com", "hard_bounce")
    await assert_suppressed(sns, auth, "richard@example.com", "hard_bounce")
    await assert_sendable(sns, auth, "mary@example.com")


async def test_event_that_beats_the_workers_record_is_matched_by_the_tegami_id_tag(
    sns: Sns, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes
) -> None:
    accepted = await send(sns, auth, "taro@example.com")
    email_id = accepted.json()["id"]
    # Handed to SES, but the worker has not recorded the SES MessageId yet.
    async with engine.begin() as conn:
        await conn.execute(update(Message).where(Message.id == email_id).values(status="sending"))
    event = ses_event(
        "eventpub-bounce-permanent-general.json",
        to="taro@example.com",
        ses_message_id="0100-fresh-000000",
        tegami_id=email_id,
    )
    await sns.deliver(event)
    shown = await email(sns, auth, email_id)
    assert shown["status"] == "bounced"
    assert shown["ses_message_id"] == "0100-fresh-000000"


async def test_send_bounce_and_the_next_send_is_refused(
    sns: Sns, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes
) -> None:
    """End to end: API -> worker -> SES (moto) -> bounce through SNS -> 409."""
    email_id, ses_id = await sent_mail(sns, auth, "taro@example.com")
    [mail] = ses.sent()
    assert mail.ses_message_id == ses_id

    event = ses_event(
        "notif-bounce-permanent-general-with-dsn.json",
        to={"jane@example.com": "taro@example.com"},
        ses_message_id=ses_id,
    )
    answer = await sns.deliver(event)
    cause = f"sns:{answer.json()['message_id']} feedback:{event['bounce']['feedbackId']}"

    shown = await email(sns, auth, email_id)
    assert shown["status"] == "bounced"
    bounce = shown["events"][-1]
    assert bounce["kind"] == "bounce"
    assert bounce["cause"] == cause
    assert bounce["detail"].startswith("bounce Permanent/General: smtp; 550 5.1.1")

    await assert_suppressed(sns, auth, "taro@example.com", "hard_bounce")
    assert await audit(engine, "taro@example.com") == [("suppressed", "hard_bounce", cause)]
    assert len(ses.sent()) == 1


async def test_unreachable_signing_certificate_answers_503_so_sns_retries(
    sns: Sns, auth: dict[str, str], engine: AsyncEngine
) -> None:
    from app.sns.signature import CertificateStore

    def aws_is_down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    app = sns.client.app  # type: ignore[attr-defined]
    app.state.sns_certificates = CertificateStore(
        http=httpx.AsyncClient(transport=httpx.MockTransport(aws_is_down))
    )
    other_cert = f"https://sns.{REGION}.amazonaws.com/SimpleNotificationService-abcdef.pem"
    message = sns.notification(
        ses_event("eventpub-bounce-permanent-general.json", to="later@example.com"),
        SigningCertURL=other_cert,
    )
    answer = await sns.post(message)
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "certificate_unavailable"
    await assert_sendable(sns, auth, "later@example.com")


async def test_a_failed_certificate_is_not_downloaded_again_when_sns_retries_at_once(
    sns: Sns, auth: dict[str, str]
) -> None:
    from app.sns.signature import CertificateStore

    attempts: list[str] = []

    def aws_is_down(request: httpx.Request) -> httpx.Response:
        attempts.append(str(request.url))
        return httpx.Response(503)

    app = sns.client.app  # type: ignore[attr-defined]
    app.state.sns_certificates = CertificateStore(
        http=httpx.AsyncClient(transport=httpx.MockTransport(aws_is_down))
    )
    other_cert = f"https://sns.{REGION}.amazonaws.com/SimpleNotificationService-abcdef.pem"
    message = sns.notification(
        ses_event("eventpub-bounce-permanent-general.json", to="later@example.com"),
        SigningCertURL=other_cert,
    )
    for _ in range(3):  # SNS retrying, or a forger replaying the name
        answer = await sns.post(message)
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "certificate_unavailable"
    assert attempts == [other_cert]
