"""The fake SES the tests and the bench share (tests/fake_ses.py) answers as SES does, through
botocore: what a test scripts, the rate it enforces, the account and the suppression list."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.fake_ses import Answer, FakeSes, Late


@pytest.fixture
def fake() -> Iterator[FakeSes]:
    ses = FakeSes().start()
    yield ses
    ses.stop()


def client(fake: FakeSes) -> Any:
    return client_for(fake.endpoint)


def client_for(endpoint: str) -> Any:
    return boto3.client(
        "sesv2",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


def send(ses: Any, to: str) -> str:
    answer = ses.send_email(
        FromEmailAddress="no-reply@proworks.jp",
        Destination={"ToAddresses": [to]},
        Content={"Simple": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "b"}}}},
        EmailTags=[{"Name": "tegami_id", "Value": to.split("@")[0]}],
    )
    return str(answer["MessageId"])


def error_code(call: Any) -> str:
    with pytest.raises(ClientError) as raised:
        call()
    return str(raised.value.response["Error"]["Code"])


def test_scripted_answers_come_in_order_then_the_default(fake: FakeSes) -> None:
    ses = client(fake)
    fake.script(Answer.THROTTLED, Late(0.3), Answer.PAUSED)

    assert error_code(lambda: send(ses, "a@example.com")) == "TooManyRequestsException"
    started = time.monotonic()
    send(ses, "b@example.com")
    assert time.monotonic() - started >= 0.3
    assert error_code(lambda: send(ses, "c@example.com")) == "SendingPausedException"
    send(ses, "d@example.com")

    assert fake.sent_ids() == {"b": 1, "d": 1}
    assert fake.answers() == {Answer.OK: 2, Answer.THROTTLED: 1, Answer.PAUSED: 1}


def test_sends_over_max_send_rate_are_throttled_as_ses_does(fake: FakeSes) -> None:
    fake.max_send_rate, fake.burst = 2.0, 2.0
    fake.reset()  # the bucket full at its new size
    ses = client(fake)

    send(ses, "a@example.com")
    send(ses, "b@example.com")
    assert error_code(lambda: send(ses, "c@example.com")) == "TooManyRequestsException"
    assert len(fake.throttled_at) == 1
    time.sleep(0.6)  # the bucket refills at 2/s: one more send
    send(ses, "d@example.com")


def test_the_account_says_paused_and_counts_what_went_out(fake: FakeSes) -> None:
    ses = client(fake)
    send(ses, "a@example.com")
    fake.sending_enabled = False

    account = ses.get_account()

    assert account["SendingEnabled"] is False
    assert account["EnforcementStatus"] == "SHUTDOWN"
    assert account["SendQuota"]["SentLast24Hours"] == 1.0
    assert account["SendQuota"]["MaxSendRate"] == fake.max_send_rate


def test_the_suppression_list_is_kept_and_paged(fake: FakeSes) -> None:
    ses = client(fake)
    for address in ("b@example.com", "A@example.com"):
        ses.put_suppressed_destination(EmailAddress=address, Reason="BOUNCE")

    found = ses.get_suppressed_destination(EmailAddress="a@example.com")
    first = ses.list_suppressed_destinations()
    second = ses.list_suppressed_destinations(NextToken=first["NextToken"])
    ses.delete_suppressed_destination(EmailAddress="a@example.com")

    assert found["SuppressedDestination"]["Reason"] == "BOUNCE"
    listed = first["SuppressedDestinationSummaries"] + second["SuppressedDestinationSummaries"]
    assert [s["EmailAddress"] for s in listed] == ["a@example.com", "b@example.com"]
    assert list(fake.suppressed) == ["b@example.com"]
    code = error_code(lambda: ses.delete_suppressed_destination(EmailAddress="a@example.com"))
    assert code == "NotFoundException"


def test_stopped_it_refuses_and_started_again_it_answers_on_the_same_port(
    fake: FakeSes,
) -> None:
    endpoint = fake.endpoint
    fake.stop()
    with pytest.raises(Exception, match="Could not connect"):
        client_for(endpoint).get_account()

    fake.start()

    assert fake.endpoint == endpoint
    assert client(fake).get_account()["SendingEnabled"] is True
