"""SES feedback payloads: every public fixture parses to the event it describes."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from app.sns.events import EventKind, SesEventError, parse_ses_event

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
SES_EVENTS = FIXTURES / "ses-events"

AWS_EXAMPLE_ID = "EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000"


@dataclass(frozen=True)
class Expected:
    kind: EventKind
    message_id: str
    recipients: tuple[str, ...]
    bounce_type: str | None = None
    bounce_subtype: str | None = None
    complaint_feedback_type: str | None = None


# One row per fixture file: a new fixture without a row fails test_fixture_parses.
EXPECTED: dict[str, Expected] = {
    "eventpub-bounce-permanent-general.json": Expected(
        EventKind.BOUNCE, AWS_EXAMPLE_ID, ("recipient@example.com",), "Permanent", "General"
    ),
    "eventpub-click.json": Expected(EventKind.CLICK, AWS_EXAMPLE_ID, ("recipient@example.com",)),
    "eventpub-complaint-abuse.json": Expected(
        EventKind.COMPLAINT,
        AWS_EXAMPLE_ID,
        ("recipient@example.com",),
        complaint_feedback_type="abuse",
    ),
    "eventpub-delivery.json": Expected(
        EventKind.DELIVERY, AWS_EXAMPLE_ID, ("recipient@example.com",)
    ),
    "eventpub-deliverydelay.json": Expected(
        EventKind.DELIVERY_DELAY, AWS_EXAMPLE_ID, ("recipient@example.com",)
    ),
    "eventpub-open.json": Expected(EventKind.OPEN, AWS_EXAMPLE_ID, ("recipient@example.com",)),
    # AWS's example really sends the reject to the sender (mail.destination).
    "eventpub-reject.json": Expected(EventKind.REJECT, AWS_EXAMPLE_ID, ("sender@example.com",)),
    "eventpub-renderingfailure.json": Expected(
        EventKind.RENDERING_FAILURE, AWS_EXAMPLE_ID, ("recipient@example.com",)
    ),
    "eventpub-send.json": Expected(EventKind.SEND, AWS_EXAMPLE_ID, ("recipient@example.com",)),
    "eventpub-subscription.json": Expected(
        EventKind.SUBSCRIPTION,
        "EXAMPLEe4bccb684-777bc8de-afa7-4970-92b0-f515137b1497-000000",
        ("recipient@example.com",),
    ),
    # Two of the three destinations bounced: only those two are named.
    "notif-bounce-permanent-general-no-dsn.json": Expected(
        EventKind.BOUNCE,
        "00000137860315fd-34208509-5b74-41f3-95c5-22c1edc3c924-000000",
        ("jane@example.com", "richard@example.com"),
        "Permanent",
        "General",
    ),
    "notif-bounce-permanent-general-with-dsn.json": Expected(
        EventKind.BOUNCE,
        "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000",
        ("jane@example.com",),
        "Permanent",
        "General",
    ),
    "notif-complaint-no-feedback.json": Expected(
        EventKind.COMPLAINT,
        "0000013786031775-163e3910-53eb-4c8e-a04a-f29debf88a84-000000",
        ("richard@example.com",),
    ),
    "notif-complaint-with-feedback-abuse.json": Expected(
        EventKind.COMPLAINT,
        "000001378603177f-7a5433e7-8edb-42ae-af10-f0181f34d6ee-000000",
        ("richard@example.com",),
        complaint_feedback_type="abuse",
    ),
    "notif-delivery.json": Expected(
        EventKind.DELIVERY,
        "0000014644fe5ef6-9a483358-9170-4cb4-a269-f5dcdf415321-000000",
        ("jane@example.com",),
    ),
    "real-eventpub-complaint-abuse-simulator-2022.json": Expected(
        EventKind.COMPLAINT,
        "0100017fd2f875c4-c2929163-2767-49b1-8513-1a29e428e134-000000",
        ("complaint@simulator.amazonses.com",),
        complaint_feedback_type="abuse",
    ),
    "real-notif-bounce-permanent-general-simulator-2022.json": Expected(
        EventKind.BOUNCE,
        "0100017fe7043e8e-fc9c357d-a9a4-49bc-a4b4-fa984009d568-000000",
        ("bounce@simulator.amazonses.com",),
        "Permanent",
        "General",
    ),
    "real-notif-bounce-permanent-onaccountsuppressionlist-2020.json": Expected(
        EventKind.BOUNCE,
        "01010173b5e19c9e-2ab453f1-7d94-4c93-b60d-fbe2af3096c5-000000",
        ("s@jakepfaf.dev",),
        "Permanent",
        "OnAccountSuppressionList",
    ),
    "real-notif-bounce-permanent-suppressed-simulator-2018.json": Expected(
        EventKind.BOUNCE,
        "0100016120b897b0-8f5dcb12-d048-4f4a-afa9-622afb089267-000000",
        ("suppressionlist@simulator.amazonses.com",),
        "Permanent",
        "Suppressed",
    ),
    "real-notif-bounce-transient-general-4.4.7-expired-2020.json": Expected(
        EventKind.BOUNCE,
        "01010176b6ce1fe6-7ce4d2f3-e075-4386-8574-f91a811fdd89-000000",
        ("frankie.lee.job@gmailabc.com",),
        "Transient",
        "General",
    ),
    "real-notif-bounce-transient-general-ooto-simulator-2018.json": Expected(
        EventKind.BOUNCE,
        "0100016120b4420e-96079cf6-eccd-4561-b231-684e50fc82fc-000000",
        ("ooto@simulator.amazonses.com",),
        "Transient",
        "General",
    ),
}

FIXTURE_FILES = sorted(SES_EVENTS.glob("*.json"))


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SES_EVENTS / name).read_text())
    return data


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda path: path.name)
def test_fixture_parses(path: Path) -> None:
    assert path.name in EXPECTED, f"add an expectation for the new fixture {path.name}"
    expected = EXPECTED[path.name]

    event = parse_ses_event(path.read_text())

    assert event.kind is expected.kind
    assert event.ses_message_id == expected.message_id
    assert event.recipients == expected.recipients
    assert event.bounce_type == expected.bounce_type
    assert event.bounce_subtype == expected.bounce_subtype
    assert event.complaint_feedback_type == expected.complaint_feedback_type
    assert event.occurred_at.tzinfo is not None


def test_every_expectation_has_a_fixture() -> None:
    assert sorted(EXPECTED) == [path.name for path in FIXTURE_FILES]


def test_permanent_bounce_is_hard_with_its_feedback_id_and_diagnostic() -> None:
    event = parse_ses_event(load("eventpub-bounce-permanent-general.json"))

    assert event.is_hard_bounce
    assert not event.is_soft_bounce
    assert event.feedback_id == "01000157c44f053b-61b59c11-9236-11e6-8f96-7be8aexample-000000"
    assert event.detail == "smtp; 550 5.1.1 user unknown"
    # The bounce's own time, not when the mail was sent.
    assert event.occurred_at == datetime(2017, 8, 5, 0, 41, 2, 669000, tzinfo=UTC)


def test_account_suppression_list_bounce_is_hard() -> None:
    event = parse_ses_event(load("real-notif-bounce-permanent-onaccountsuppressionlist-2020.json"))

    assert event.is_hard_bounce
    assert event.detail is not None
    assert event.detail.startswith("Amazon SES did not send the message")


def test_transient_bounce_is_soft() -> None:
    event = parse_ses_event(load("real-notif-bounce-transient-general-ooto-simulator-2018.json"))

    assert event.is_soft_bounce
    assert not event.is_hard_bounce
    assert event.detail is None  # the simulator gives no diagnosticCode
    assert event.occurred_at == datetime(2018, 1, 23, 1, 49, tzinfo=UTC)


def test_undetermined_bounce_is_soft() -> None:
    data = load("eventpub-bounce-permanent-general.json")
    data["bounce"]["bounceType"] = "Undetermined"
    data["bounce"]["bounceSubType"] = "Undetermined"

    assert parse_ses_event(data).is_soft_bounce


def test_complaint_without_feedback_type_still_names_the_complainer() -> None:
    event = parse_ses_event(load("notif-complaint-no-feedback.json"))

    assert event.complaint_feedback_type is None
    assert event.feedback_id == "0000013786031775-fea503bc-7497-49e1-881b-a0379bb037d3-000000"
    assert not event.is_hard_bounce and not event.is_soft_bounce


def test_null_complaint_subtype_is_tolerated() -> None:
    event = parse_ses_event(load("real-eventpub-complaint-abuse-simulator-2022.json"))

    assert event.complaint_feedback_type == "abuse"
    assert event.tags["ses:configuration-set"] == ("test-set",)


def test_not_spam_complaint_keeps_its_feedback_type() -> None:
    data = load("notif-complaint-with-feedback-abuse.json")
    data["complaint"]["complaintFeedbackType"] = "not-spam"

    assert parse_ses_event(data).complaint_feedback_type == "not-spam"


def test_event_publishing_tags_are_read() -> None:
    data = load("eventpub-delivery.json")
    data["mail"]["tags"]["tegami_id"] = ["42"]

    event = parse_ses_event(json.dumps(data))

    assert event.tags["tegami_id"] == ("42",)
    assert event.tags["ses:outgoing-ip"] == ("192.0.2.0",)


def test_notifications_have_no_tags() -> None:
    assert parse_ses_event(load("notif-delivery.json")).tags == {}


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("eventpub-delivery.json", "250 2.6.0 Message received"),
        ("eventpub-reject.json", "Bad content"),
        (
            "eventpub-renderingfailure.json",
            "Attribute 'attributeName' is not present in the rendering data.",
        ),
        ("eventpub-deliverydelay.json", "TransientCommunicationFailure"),
        ("eventpub-open.json", None),
    ],
)
def test_detail_gives_the_reason(name: str, detail: str | None) -> None:
    assert parse_ses_event(load(name)).detail == detail


def test_rendering_failure_under_its_long_key_is_read() -> None:
    data = load("eventpub-renderingfailure.json")
    data["renderingFailure"] = data.pop("failure")

    event = parse_ses_event(data)

    assert event.kind is EventKind.RENDERING_FAILURE
    assert event.detail == "Attribute 'attributeName' is not present in the rendering data."


def test_event_without_own_timestamp_takes_the_mail_timestamp() -> None:
    event = parse_ses_event(load("eventpub-send.json"))

    assert event.occurred_at == datetime(2016, 10, 14, 5, 2, 16, 645000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2022-04-01T21:24:49Z", datetime(2022, 4, 1, 21, 24, 49, tzinfo=UTC)),
        ("2022-04-01T21:24:49.5Z", datetime(2022, 4, 1, 21, 24, 49, 500000, tzinfo=UTC)),
        ("2022-04-01T21:24:49+00:00", datetime(2022, 4, 1, 21, 24, 49, tzinfo=UTC)),
        ("2022-04-01T21:24:49", datetime(2022, 4, 1, 21, 24, 49, tzinfo=UTC)),
    ],
)
def test_timestamps_with_or_without_milliseconds(raw: str, expected: datetime) -> None:
    data = load("notif-delivery.json")
    data["delivery"]["timestamp"] = raw

    assert parse_ses_event(data).occurred_at == expected


def test_several_recipients_in_one_delivery_named_addresses_stripped() -> None:
    data = load("notif-delivery.json")
    data["delivery"]["recipients"] = [
        "Jane Doe <jane@example.com>",
        '"Doe, Mary" <mary@example.com>',
        " richard@example.com ",
        "jane@example.com",  # named twice, counted once
    ]

    event = parse_ses_event(data)

    assert event.recipients == ("jane@example.com", "mary@example.com", "richard@example.com")


def test_destination_with_display_names_gives_bare_addresses() -> None:
    data = load("eventpub-send.json")
    data["mail"]["destination"] = ["Jane <Jane@Example.com>", "mary@example.com"]

    # Case is kept: mail goes to the address as the app gave it.
    assert parse_ses_event(data).recipients == ("Jane@Example.com", "mary@example.com")


def test_extra_fields_are_ignored() -> None:
    data = load("notif-bounce-permanent-general-with-dsn.json")
    data["somethingNew"] = {"x": 1}
    data["bounce"]["newField"] = [1, 2]
    data["mail"]["another"] = None

    assert parse_ses_event(data).recipients == ("jane@example.com",)


def _mutated(name: str, change: Any) -> dict[str, Any]:
    data = copy.deepcopy(load(name))
    change(data)
    return data


BOUNCE = "notif-bounce-permanent-general-no-dsn.json"
SEND = "eventpub-send.json"


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("{not json", "not JSON"),
        ("", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('"Bounce"', "not a JSON object"),
        ("null", "not a JSON object"),
        ("[" * 100_000, "not JSON"),
        (_mutated(BOUNCE, lambda d: d.pop("mail")), "no mail object"),
        (_mutated(BOUNCE, lambda d: d.update(mail="x")), "no mail object"),
        (_mutated(BOUNCE, lambda d: d["mail"].pop("messageId")), "mail.messageId"),
        (_mutated(BOUNCE, lambda d: d["mail"].update(messageId="")), "mail.messageId"),
        (_mutated(BOUNCE, lambda d: d["mail"].update(messageId=7)), "mail.messageId"),
        (_mutated(BOUNCE, lambda d: d.pop("notificationType")), "neither eventType"),
        (_mutated(BOUNCE, lambda d: d.update(notificationType="Received")), "unknown"),
        (_mutated(SEND, lambda d: d.update(eventType="Explode")), "unknown SES event type"),
        (
            {"notificationType": "AmazonSnsSubscriptionSucceeded", "message": "ok"},
            "unknown SES event type",
        ),
        (_mutated(BOUNCE, lambda d: d.pop("bounce")), "no bounce object"),
        (_mutated(BOUNCE, lambda d: d.update(bounce=[])), "not an object"),
        (_mutated(BOUNCE, lambda d: d["bounce"].pop("bounceType")), "no bounceType"),
        (
            _mutated(BOUNCE, lambda d: d["bounce"].update(bouncedRecipients="jane@example.com")),
            "bounce.bouncedRecipients is not a list",
        ),
        (
            _mutated(BOUNCE, lambda d: d["bounce"].update(bouncedRecipients=[])),
            "is empty",
        ),
        (
            _mutated(BOUNCE, lambda d: d["bounce"].update(bouncedRecipients=[{"status": "5"}])),
            "without an address",
        ),
        (
            _mutated(
                BOUNCE, lambda d: d["bounce"].update(bouncedRecipients=[{"emailAddress": "x"}])
            ),
            "not one address",
        ),
        (
            _mutated(
                BOUNCE,
                lambda d: d["bounce"].update(bouncedRecipients=[{"emailAddress": "a@x, b@y"}]),
            ),
            "not one address",
        ),
        (_mutated(SEND, lambda d: d["mail"].update(destination=None)), "mail.destination"),
        (_mutated(SEND, lambda d: d["mail"].update(destination=[3])), "without an address"),
        (
            _mutated(BOUNCE, lambda d: d["bounce"].update(timestamp="yesterday")),
            "not ISO 8601",
        ),
        (_mutated(SEND, lambda d: d["mail"].pop("timestamp")), "no timestamp"),
        (_mutated(SEND, lambda d: d["mail"].update(tags=["a"])), "mail.tags"),
        (_mutated(SEND, lambda d: d["mail"].update(tags={"tegami_id": "1"})), "mail.tags"),
    ],
)
def test_malformed_input_is_refused(message: str | dict[str, Any], error: str) -> None:
    with pytest.raises(SesEventError, match=error):
        parse_ses_event(message)


def test_error_is_a_value_error() -> None:
    assert issubclass(SesEventError, ValueError)
