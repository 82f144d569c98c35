"""SNS verification: genuine AWS messages, tampering, certificate URLs, certificates, age."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from app.sns.signature import (
    CERT_FAILURE_SECONDS,
    MESSAGE_TYPES,
    CertificateStore,
    SnsShapeError,
    SnsVerificationError,
    canonical_string,
    check_age,
    check_cert_url,
    check_subscribe_url,
    make_signing_identity,
    parse_message,
    sign_message,
    verify_message,
    verify_signature,
)
from tests.conditions import eventually

GENUINE_DIR = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "sns-genuine"
GENUINE_CERT_NAME = "SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem"
GENUINE_FILES = ["http-0-v1-nosubject.json", "http-3-v2-subject.json"]
GENUINE_CERT_PEM = (GENUINE_DIR / GENUINE_CERT_NAME).read_bytes()
GENUINE_CERT = x509.load_pem_x509_certificate(GENUINE_CERT_PEM)

DEV_TOPIC = "arn:aws:sns:us-east-1:123456789012:tegami-ses-events"
DEV_CERT_NAME = "SimpleNotificationService-0123456789abcdef0123456789abcdef.pem"
DEV_CERT_URL = f"https://sns.us-east-1.amazonaws.com/{DEV_CERT_NAME}"
DEV_NOW = dt.datetime(2025, 3, 1, 12, 0, 0, 500000, tzinfo=dt.UTC)

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def genuine(name: str) -> dict[str, Any]:
    return parse_message((GENUINE_DIR / name).read_bytes())


def signed_fields(message: dict[str, Any]) -> list[str]:
    return [line for line in canonical_string(message).decode().split("\n")[::2] if line]


def timestamp_of(message: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(message["Timestamp"])


class Downloads:
    """An httpx transport handler that counts requests."""

    def __init__(self, respond: Handler | None = None) -> None:
        self.calls = 0
        self._respond = respond

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self._respond is None:
            return httpx.Response(200, content=GENUINE_CERT_PEM)
        return await self._respond(request)


def cert_url(hex_name: str) -> str:
    return f"https://sns.us-east-2.amazonaws.com/SimpleNotificationService-{hex_name}.pem"


@pytest.fixture
def cert_dir(tmp_path: Path) -> Path:
    shutil.copy(GENUINE_DIR / GENUINE_CERT_NAME, tmp_path / GENUINE_CERT_NAME)
    return tmp_path


@pytest.fixture(scope="module")
def dev_identity() -> tuple[bytes, bytes]:
    return make_signing_identity()


@pytest.fixture
def dev_cert_dir(tmp_path: Path, dev_identity: tuple[bytes, bytes]) -> Path:
    (tmp_path / DEV_CERT_NAME).write_bytes(dev_identity[1])
    return tmp_path


def dev_message(kind: str = "Notification", **fields: str) -> dict[str, Any]:
    message: dict[str, Any] = {
        "Type": kind,
        "MessageId": "0f5b1c7e-2c2a-4d8e-9c1e-6f1e2b3c4d5e",
        "TopicArn": DEV_TOPIC,
        "Message": '{"eventType":"Bounce"}',
        "Timestamp": "2025-03-01T12:00:00.500Z",
        "SigningCertURL": DEV_CERT_URL,
    }
    if kind != "Notification":
        message["Token"] = "2336412f37fb687f5d51e6e241d164b0533302ec696efc8f113cd2252ce8a925"
        message["SubscribeURL"] = (
            "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription"
            f"&TopicArn={DEV_TOPIC}&Token=2336412f37fb687f"
        )
    message.update(fields)
    return message


async def verify(
    message: dict[str, Any],
    directory: Path | None,
    *,
    allowed: set[str] | None = None,
    now: dt.datetime | None = None,
    max_age_seconds: int = 3900,
    downloads: Downloads | None = None,
) -> None:
    transport = httpx.MockTransport(downloads or Downloads(_not_found))
    async with httpx.AsyncClient(transport=transport) as http:
        await verify_message(
            message,
            certificates=CertificateStore(http=http, cert_dir=directory),
            allowed_topics=allowed if allowed is not None else {message["TopicArn"]},
            max_age_seconds=max_age_seconds,
            now=now or timestamp_of(message),
        )


async def _not_found(request: httpx.Request) -> httpx.Response:
    return httpx.Response(404)


# --- genuine AWS messages ----------------------------------------------------------------


@pytest.mark.parametrize("name", GENUINE_FILES)
async def test_genuine_aws_messages_verify_offline_from_cert_dir(name: str, cert_dir: Path) -> None:
    downloads = Downloads()
    await verify(genuine(name), cert_dir, downloads=downloads)
    assert downloads.calls == 0


@pytest.mark.parametrize("name", GENUINE_FILES)
async def test_genuine_message_is_accepted_within_max_age_and_refused_after(
    name: str, cert_dir: Path
) -> None:
    message = genuine(name)
    sent = timestamp_of(message)
    await verify(message, cert_dir, now=sent + dt.timedelta(seconds=3900))
    with pytest.raises(SnsVerificationError) as caught:
        await verify(message, cert_dir, now=sent + dt.timedelta(seconds=3901))
    assert caught.value.reason == "too_old"


@pytest.mark.parametrize("name", GENUINE_FILES)
def test_one_byte_edit_of_any_signed_field_breaks_the_signature(name: str) -> None:
    original = genuine(name)
    verify_signature(original, GENUINE_CERT)
    edits = 0
    for field in signed_fields(original):
        if field == "Type":  # an edited Type is no SNS Type at all; see the next test
            continue
        value: str = original[field]
        for index in range(len(value)):
            flipped = chr(ord(value[index]) ^ 1)
            tampered = {**original, field: value[:index] + flipped + value[index + 1 :]}
            with pytest.raises(SnsVerificationError) as caught:
                verify_signature(tampered, GENUINE_CERT)
            assert caught.value.reason == "bad_signature"
            edits += 1
    assert edits == sum(len(original[f]) for f in signed_fields(original) if f != "Type")


def test_edited_type_is_not_an_sns_message() -> None:
    tampered = {**genuine(GENUINE_FILES[0]), "Type": "Notificatioo"}
    with pytest.raises(SnsShapeError):
        parse_message(json.dumps(tampered))
    with pytest.raises(SnsShapeError):
        verify_signature(tampered, GENUINE_CERT)


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(GENUINE_FILES),
    field=st.sampled_from(["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]),
    new_value=st.text(max_size=80),
)
def test_any_change_to_a_signed_field_is_refused(name: str, field: str, new_value: str) -> None:
    original = genuine(name)
    tampered = {**original, field: new_value}
    if tampered == original:
        return
    directory = GENUINE_DIR  # read-only is fine: the store only reads
    allowed = {original["TopicArn"], tampered["TopicArn"]}  # reach the signature check
    with pytest.raises((SnsShapeError, SnsVerificationError)):
        message = parse_message(json.dumps(tampered))
        asyncio.run(verify(message, directory, allowed=allowed, now=timestamp_of(original)))


@pytest.mark.parametrize(
    "edit",
    [
        {"UnsubscribeURL": "https://sns.us-east-2.amazonaws.com/?Action=Unsubscribe&x=1"},
        {"MessageAttributes": {"k": {"Type": "String", "Value": "v"}}},
    ],
)
async def test_unsigned_fields_are_not_covered_by_the_signature(
    edit: dict[str, Any], cert_dir: Path
) -> None:
    # As AWS documents: UnsubscribeURL and extras are outside the canonical string, which is
    # why nothing in tegami ever follows UnsubscribeURL.
    await verify({**genuine(GENUINE_FILES[0]), **edit}, cert_dir)


async def test_signing_cert_url_pointing_at_another_certificate_is_refused(
    cert_dir: Path,
) -> None:
    # SigningCertURL is unsigned; swapping it only changes which certificate is fetched.
    message = {**genuine(GENUINE_FILES[0]), "SigningCertURL": cert_url("abcdef")}
    downloads = Downloads(_not_found)
    with pytest.raises(SnsVerificationError) as caught:
        await verify(message, cert_dir, downloads=downloads)
    assert (caught.value.reason, downloads.calls) == ("cert_unavailable", 1)


async def test_genuine_message_with_http_cert_url_is_refused(cert_dir: Path) -> None:
    original = genuine(GENUINE_FILES[1])
    message = {**original, "SigningCertURL": "http" + original["SigningCertURL"][5:]}
    with pytest.raises(SnsVerificationError) as caught:
        await verify(message, cert_dir)
    assert caught.value.reason == "cert_url"


async def test_topic_outside_allow_list_is_refused_before_any_download() -> None:
    downloads = Downloads()
    with pytest.raises(SnsVerificationError) as caught:
        await verify(genuine(GENUINE_FILES[0]), None, allowed={DEV_TOPIC}, downloads=downloads)
    assert (caught.value.reason, downloads.calls) == ("topic_not_allowed", 0)


# --- certificate and subscribe URLs ------------------------------------------------------

GENUINE_TOPIC = "arn:aws:sns:us-east-2:295079676684:ses-events"
HEX = "7ff5318490ec183fbaddaa2a969abfda"


@pytest.mark.parametrize(
    ("url", "topic_arn"),
    [
        (cert_url(HEX), GENUINE_TOPIC),
        (
            f"https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-{HEX}.pem",
            "arn:aws-cn:sns:cn-north-1:123456789012:events",
        ),
        (
            f"https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-{HEX}.pem",
            "arn:aws-us-gov:sns:us-gov-west-1:123456789012:events",
        ),
    ],
)
def test_sns_certificate_urls_in_the_topic_region_are_accepted(url: str, topic_arn: str) -> None:
    check_cert_url(url, topic_arn=topic_arn)


@pytest.mark.parametrize(
    "url",
    [
        f"http://sns.us-east-2.amazonaws.com/SimpleNotificationService-{HEX}.pem",
        f"https://sns.us-east-2.amazonaws.com:443/SimpleNotificationService-{HEX}.pem",
        f"https://sns.us-east-2.amazonaws.com.evil.com/SimpleNotificationService-{HEX}.pem",
        f"https://evil.com/sns.us-east-2.amazonaws.com/SimpleNotificationService-{HEX}.pem",
        f"https://evil.com/?https://sns.us-east-2.amazonaws.com/SimpleNotificationService-{HEX}.pem",
        f"https://sns.us-east-2.amazonaws.com@evil.com/SimpleNotificationService-{HEX}.pem",
        f"https://user@sns.us-east-2.amazonaws.com/SimpleNotificationService-{HEX}.pem",
        f"https://sns.us-east-2.amazonaws.com\\@evil.com/SimpleNotificationService-{HEX}.pem",
        f"https://sns.us-east-2.amazonaws.com\\SimpleNotificationService-{HEX}.pem",
        f"https://sns.us-east-2.amazonaws%2ecom/SimpleNotificationService-{HEX}.pem",
        f"https://sns%2Eus-east-2.amazonaws.com/SimpleNotificationService-{HEX}.pem",
        f"https://sns.us-east-2.amazonaws\u3002com/SimpleNotificationService-{HEX}.pem",
        f"https://xn--sns-9la.us-east-2.amazonaws.com/SimpleNotificationService-{HEX}.pem",
        f"https://sns.xn--us-east-2.amazonaws.com/SimpleNotificationService-{HEX}.pem",
        f"https://SNS.us-east-2.amazonaws.com/SimpleNotificationService-{HEX}.pem",
        f"https://sns.US-EAST-2.amazonaws.com/SimpleNotificationService-{HEX}.pem",
        f"HTTPS://sns.us-east-2.amazonaws.com/SimpleNotificationService-{HEX}.pem",
        f"https://sns.us-east-2.amazonaws.com./SimpleNotificationService-{HEX}.pem",
        f"https://sns.us-east-2.amazonaws.co/SimpleNotificationService-{HEX}.pem",
        f"https://sqs.us-east-2.amazonaws.com/SimpleNotificationService-{HEX}.pem",
        f"https://sns.evil.amazonaws.com/SimpleNotificationService-{HEX}.pem",
        f"https://sns.us-east-2.amazonaws.com.cn/SimpleNotificationService-{HEX}.pem",
        f"https://sns.us-east-2.amazonaws.com/SimpleNotificationService-{HEX}.pem?x=1",
        f"https://sns.us-east-2.amazonaws.com/SimpleNotificationService-{HEX}.pem#x",
        f"https://sns.us-east-2.amazonaws.com/SimpleNotificationService-{HEX}.pem\n",
        f" https://sns.us-east-2.amazonaws.com/SimpleNotificationService-{HEX}.pem",
        f"https://sns.us-east-2.amazonaws.com/x/../SimpleNotificationService-{HEX}.pem",
        f"https://sns.us-east-2.amazonaws.com/evil/SimpleNotificationService-{HEX}.pem",
        f"https://sns.us-east-2.amazonaws.com/SimpleNotificationService-{HEX}.pem%00",
        "https://sns.us-east-2.amazonaws.com/SimpleNotificationService-notahex.pem",
        "https://sns.us-east-2.amazonaws.com/SimpleNotificationService-.pem",
        "https://sns.us-east-2.amazonaws.com/?Action=GetCertificate",
        "",
    ],
)
def test_lookalike_and_malformed_certificate_urls_are_refused(url: str) -> None:
    with pytest.raises(SnsVerificationError) as caught:
        check_cert_url(url, topic_arn=GENUINE_TOPIC)
    assert caught.value.reason == "cert_url"


@pytest.mark.parametrize(
    "topic_arn",
    [
        "arn:aws:sns:us-east-1:295079676684:ses-events",  # other region
        "arn:aws-cn:sns:us-east-2:295079676684:ses-events",  # partition does not fit region
        "arn:aws:sqs:us-east-2:295079676684:ses-events",
        "not an arn",
    ],
)
def test_certificate_url_outside_the_topic_region_is_refused(topic_arn: str) -> None:
    with pytest.raises(SnsVerificationError) as caught:
        check_cert_url(cert_url(HEX), topic_arn=topic_arn)
    assert caught.value.reason == "cert_url"


SUBSCRIBE = "https://sns.us-east-2.amazonaws.com/?Action=ConfirmSubscription"


def test_subscribe_url_for_the_topic_is_accepted() -> None:
    check_subscribe_url(
        f"{SUBSCRIBE}&TopicArn={GENUINE_TOPIC}&Token=2336ab", topic_arn=GENUINE_TOPIC
    )


@pytest.mark.parametrize(
    "url",
    [
        f"http://sns.us-east-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn={GENUINE_TOPIC}",
        "https://sns.us-east-2.amazonaws.com:443/?Action=ConfirmSubscription&Token=1",
        "https://u@sns.us-east-2.amazonaws.com/?Action=ConfirmSubscription&Token=1",
        f"{SUBSCRIBE}&Token=1#frag",
        "https://sns.us-east-2.amazonaws.com.evil.com/?Action=ConfirmSubscription&Token=1",
        "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=1",
        f"https://sns.us-east-2.amazonaws.com/?Action=Unsubscribe&TopicArn={GENUINE_TOPIC}",
        f"{SUBSCRIBE}&Action=Unsubscribe",
        f"{SUBSCRIBE}&TopicArn=arn:aws:sns:us-east-2:295079676684:other",
        f"{SUBSCRIBE}&Token=1@evil.com",
        "https://sns.us-east-2.amazonaws.com/evil?Action=ConfirmSubscription",
        "https://sns.us-east-2.amazonaws.com/",
    ],
)
def test_other_subscribe_urls_are_refused(url: str) -> None:
    with pytest.raises(SnsVerificationError) as caught:
        check_subscribe_url(url, topic_arn=GENUINE_TOPIC)
    assert caught.value.reason == "subscribe_url"


# --- signing round trip and signature versions -------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize(
    "message",
    [
        dev_message("Notification"),
        dev_message("Notification", Subject="Amazon SES Email Event Notification"),
        dev_message("SubscriptionConfirmation"),
        dev_message("UnsubscribeConfirmation"),
    ],
    ids=["notification", "notification-subject", "subscribe", "unsubscribe"],
)
async def test_messages_signed_with_a_dev_identity_verify(
    message: dict[str, Any],
    version: str,
    dev_identity: tuple[bytes, bytes],
    dev_cert_dir: Path,
) -> None:
    signed = sign_message(message, dev_identity[0], signature_version=version)
    assert signed["SignatureVersion"] == version
    assert "Signature" not in message  # the input is left alone
    await verify(parse_message(json.dumps(signed)), dev_cert_dir, now=DEV_NOW)


@pytest.mark.parametrize("version", ["3", "", "01", None])
async def test_unknown_signature_versions_are_refused(
    version: str | None, dev_identity: tuple[bytes, bytes], dev_cert_dir: Path
) -> None:
    signed = {**sign_message(dev_message(), dev_identity[0]), "SignatureVersion": version}
    with pytest.raises((SnsVerificationError, SnsShapeError)) as caught:
        await verify(signed, dev_cert_dir, now=DEV_NOW)
    if version is not None:
        assert isinstance(caught.value, SnsVerificationError)
        assert caught.value.reason == "signature_version"


def test_signing_with_an_unknown_version_is_an_error(dev_identity: tuple[bytes, bytes]) -> None:
    with pytest.raises(ValueError, match="SignatureVersion"):
        sign_message(dev_message(), dev_identity[0], signature_version="3")


def test_v1_signature_presented_as_v2_is_refused(dev_identity: tuple[bytes, bytes]) -> None:
    signed = {**sign_message(dev_message(), dev_identity[0]), "SignatureVersion": "2"}
    cert = x509.load_pem_x509_certificate(dev_identity[1])
    with pytest.raises(SnsVerificationError, match="bad_signature"):
        verify_signature(signed, cert)


def test_signature_from_another_key_is_refused(dev_identity: tuple[bytes, bytes]) -> None:
    signed = sign_message(dev_message(), dev_identity[0])
    with pytest.raises(SnsVerificationError, match="bad_signature"):
        verify_signature(signed, GENUINE_CERT)


@pytest.mark.parametrize("signature", ["not base64!", "", "QUJD"])
def test_malformed_signature_is_refused(signature: str, dev_identity: tuple[bytes, bytes]) -> None:
    message = {**sign_message(dev_message(), dev_identity[0]), "Signature": signature}
    cert = x509.load_pem_x509_certificate(dev_identity[1])
    with pytest.raises(SnsVerificationError, match="bad_signature"):
        verify_signature(message, cert)


def test_certificate_is_judged_at_the_message_timestamp(
    dev_identity: tuple[bytes, bytes],
) -> None:
    cert = x509.load_pem_x509_certificate(dev_identity[1])
    signed = sign_message(dev_message(Timestamp="1999-12-31T23:59:59.000Z"), dev_identity[0])
    with pytest.raises(SnsVerificationError) as caught:
        verify_signature(signed, cert)
    assert caught.value.reason == "cert_not_valid"
    # The genuine certificate has expired by now, but was valid when AWS signed with it.
    verify_signature(genuine(GENUINE_FILES[0]), GENUINE_CERT)
    assert GENUINE_CERT.not_valid_after_utc < dt.datetime.now(dt.UTC)


def test_canonical_string_follows_the_documented_field_order() -> None:
    message = dev_message(Subject="Hi")
    assert (
        canonical_string(message)
        == (
            'Message\n{"eventType":"Bounce"}\n'
            "MessageId\n0f5b1c7e-2c2a-4d8e-9c1e-6f1e2b3c4d5e\n"
            "Subject\nHi\n"
            "Timestamp\n2025-03-01T12:00:00.500Z\n"
            f"TopicArn\n{DEV_TOPIC}\n"
            "Type\nNotification\n"
        ).encode()
    )
    assert b"Subject" not in canonical_string(dev_message())
    confirmation = dev_message("SubscriptionConfirmation")
    assert signed_fields(confirmation) == [
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ]


# --- age ---------------------------------------------------------------------------------

SENT = {"Timestamp": "2022-06-22T09:24:13.389Z"}
SENT_AT = dt.datetime(2022, 6, 22, 9, 24, 13, 389000, tzinfo=dt.UTC)


def test_message_older_than_max_age_is_refused() -> None:
    check_age(SENT, now=SENT_AT + dt.timedelta(seconds=60), max_age_seconds=60)
    with pytest.raises(SnsVerificationError, match="too_old"):
        check_age(SENT, now=SENT_AT + dt.timedelta(seconds=61), max_age_seconds=60)


def test_message_from_more_than_five_minutes_ahead_is_refused() -> None:
    check_age(SENT, now=SENT_AT - dt.timedelta(minutes=5), max_age_seconds=3900)
    with pytest.raises(SnsVerificationError, match="in_future"):
        check_age(SENT, now=SENT_AT - dt.timedelta(minutes=5, seconds=1), max_age_seconds=3900)


def test_max_age_zero_turns_the_age_check_off() -> None:
    check_age(SENT, now=SENT_AT + dt.timedelta(days=3650), max_age_seconds=0)
    check_age(SENT, now=SENT_AT - dt.timedelta(days=1), max_age_seconds=0)


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone"):
        check_age(SENT, now=SENT_AT.replace(tzinfo=None), max_age_seconds=60)


# --- certificate store -------------------------------------------------------------------


def store_with(downloads: Downloads, **options: Any) -> tuple[CertificateStore, httpx.AsyncClient]:
    http = httpx.AsyncClient(transport=httpx.MockTransport(downloads))
    return CertificateStore(http=http, **options), http


async def test_store_downloads_a_certificate_once_and_serves_it_from_cache() -> None:
    downloads = Downloads()
    store, http = store_with(downloads)
    async with http:
        first = await store.get(cert_url(HEX))
        second = await store.get(cert_url(HEX))
    assert first == second == GENUINE_CERT
    assert downloads.calls == 1


async def test_concurrent_gets_for_one_url_share_one_download() -> None:
    downloads = Downloads()
    store, http = store_with(downloads)
    async with http:
        certs = await asyncio.gather(*(store.get(cert_url(HEX)) for _ in range(5)))
    assert all(cert == GENUINE_CERT for cert in certs)
    assert downloads.calls == 1


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_store_remembers_a_failure_briefly_then_tries_again() -> None:
    answers = iter([httpx.Response(503), httpx.Response(200, content=GENUINE_CERT_PEM)])

    async def flaky(request: httpx.Request) -> httpx.Response:
        return next(answers)

    downloads = Downloads(flaky)
    clock = Clock()
    store, http = store_with(downloads, clock=clock)
    async with http:
        with pytest.raises(SnsVerificationError, match=r"cert_unavailable.*HTTP 503"):
            await store.get(cert_url(HEX))
        clock.now += CERT_FAILURE_SECONDS - 1
        with pytest.raises(SnsVerificationError, match="cert_unavailable: recently failed"):
            await store.get(cert_url(HEX))
        assert downloads.calls == 1  # the repeat within the window asked nobody
        clock.now += 1
        assert await store.get(cert_url(HEX)) == GENUINE_CERT
        assert await store.get(cert_url(HEX)) == GENUINE_CERT
    assert downloads.calls == 2


async def test_forged_certificate_names_cost_one_download_each_per_window() -> None:
    async def not_found(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404)

    downloads = Downloads(not_found)
    store, http = store_with(downloads, clock=Clock())
    names = [f"{n:04x}" for n in range(20)]
    async with http:
        for _ in range(5):
            results = await asyncio.gather(
                *(store.get(cert_url(name)) for name in names), return_exceptions=True
            )
            assert all(isinstance(r, SnsVerificationError) for r in results)
    assert downloads.calls == len(names)


async def test_downloads_in_flight_are_bounded_and_one_url_is_fetched_once_at_a_time() -> None:
    in_flight: dict[str, int] = {}
    most = 0
    released = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal most
        url = str(request.url)
        in_flight[url] = in_flight.get(url, 0) + 1
        most = max(most, sum(in_flight.values()))
        assert in_flight[url] == 1
        await released.wait()
        in_flight[url] -= 1
        return httpx.Response(200, content=GENUINE_CERT_PEM)

    downloads = Downloads(slow)
    store, http = store_with(downloads, downloads_at_once=3)
    urls = [cert_url(f"{n:02x}") for n in range(8)]
    async with http:
        gets = asyncio.gather(*(store.get(url) for url in urls * 3))

        async def three_in_flight() -> bool:
            return sum(in_flight.values()) == 3

        await eventually(three_in_flight)
        assert downloads.calls == 3  # the others wait for a slot
        released.set()
        assert all(cert == GENUINE_CERT for cert in await gets)
    assert most == 3
    assert downloads.calls == len(urls)


async def test_a_get_that_finds_no_download_slot_in_time_gives_up_without_blaming_the_url() -> None:
    hold = asyncio.Event()

    async def stuck(request: httpx.Request) -> httpx.Response:
        await hold.wait()
        return httpx.Response(200, content=GENUINE_CERT_PEM)

    downloads = Downloads(stuck)
    store, http = store_with(downloads, downloads_at_once=1, slot_timeout=0.1)
    async with http:
        first = asyncio.ensure_future(store.get(cert_url("aa")))

        async def downloading() -> bool:
            return downloads.calls == 1

        await eventually(downloading)
        with pytest.raises(SnsVerificationError, match="too many certificate downloads"):
            await store.get(cert_url("bb"))
        hold.set()
        assert await first == GENUINE_CERT
        # "bb" was not remembered as failed: it is fetched now that a slot is free.
        assert await store.get(cert_url("bb")) == GENUINE_CERT
    assert downloads.calls == 2


async def test_store_forgets_the_least_recently_used_certificate_when_full() -> None:
    downloads = Downloads()
    store, http = store_with(downloads, max_entries=2)
    async with http:
        for name in ["aa", "bb", "aa", "cc"]:  # "bb" is least recently used when "cc" arrives
            await store.get(cert_url(name))
        assert downloads.calls == 3
        await store.get(cert_url("aa"))
        assert downloads.calls == 3
        await store.get(cert_url("bb"))
        assert downloads.calls == 4


async def test_store_stops_reading_a_body_past_the_size_cap() -> None:
    chunks_sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal chunks_sent
        while True:
            chunks_sent += 1
            yield b"A" * 1024

    async def huge(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())

    store, http = store_with(Downloads(huge), max_bytes=8 * 1024)
    async with http:
        with pytest.raises(SnsVerificationError, match="cert_unavailable"):
            await store.get(cert_url(HEX))
    assert chunks_sent <= 10


async def test_store_gives_up_on_a_server_that_never_answers() -> None:
    async def silent(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    store, http = store_with(Downloads(silent), timeout=0.05)
    async with http:
        with pytest.raises(SnsVerificationError, match="cert_unavailable"):
            await store.get(cert_url(HEX))


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b"<html>not a certificate</html>"),
        httpx.Response(302, headers={"Location": "https://evil.com/cert.pem"}),
        httpx.Response(404),
    ],
    ids=["not-pem", "redirect", "not-found"],
)
async def test_store_reports_unusable_answers_as_cert_unavailable(
    response: httpx.Response,
) -> None:
    async def answer(request: httpx.Request) -> httpx.Response:
        return response

    downloads = Downloads(answer)
    store, http = store_with(downloads)
    async with http:
        with pytest.raises(SnsVerificationError, match="cert_unavailable"):
            await store.get(cert_url(HEX))
    assert downloads.calls == 1  # redirects are not followed


async def test_store_reports_network_errors_as_cert_unavailable() -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    store, http = store_with(Downloads(refuse))
    async with http:
        with pytest.raises(SnsVerificationError, match="cert_unavailable"):
            await store.get(cert_url(HEX))


async def test_store_uses_cert_dir_without_downloading(cert_dir: Path) -> None:
    downloads = Downloads()
    store, http = store_with(downloads, cert_dir=cert_dir)
    async with http:
        assert await store.get(cert_url(HEX)) == GENUINE_CERT
        await store.get(cert_url("abc"))  # not in cert_dir: downloaded
    assert downloads.calls == 1


async def test_store_never_reads_outside_cert_dir(tmp_path: Path) -> None:
    (tmp_path / "secret.pem").write_bytes(GENUINE_CERT_PEM)
    downloads = Downloads(_not_found)
    store, http = store_with(downloads, cert_dir=tmp_path / "certs")
    async with http:
        with pytest.raises(SnsVerificationError, match="cert_unavailable"):
            await store.get("https://sns.us-east-2.amazonaws.com/../secret.pem")


# --- shape -------------------------------------------------------------------------------


def test_parse_message_returns_the_fields() -> None:
    message = parse_message((GENUINE_DIR / GENUINE_FILES[1]).read_text())
    assert message["Type"] in MESSAGE_TYPES
    assert message["Subject"] == "Hello world"


def _without(field: str) -> str:
    message = genuine(GENUINE_FILES[0])
    del message[field]
    return json.dumps(message)


def _with(**fields: Any) -> str:
    return json.dumps({**genuine(GENUINE_FILES[0]), **fields})


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json",
        b"\xff\xfe{}",
        b"[]",
        b'"Notification"',
        b"null",
        b"{}",
        _without("Type"),
        _without("MessageId"),
        _without("TopicArn"),
        _without("Message"),
        _without("Timestamp"),
        _without("SignatureVersion"),
        _without("Signature"),
        _without("SigningCertURL"),
        json.dumps(
            {k: v for k, v in dev_message("SubscriptionConfirmation").items() if k != "Token"}
        ),
        _with(Type="SubscriptionConfirmation"),  # no Token, no SubscribeURL
        _with(Type="Bounce"),
        _with(Type=None),
        _with(Message={"eventType": "Bounce"}),
        _with(SignatureVersion=1),
        _with(Subject=None),
        _with(Timestamp="yesterday"),
        _with(Timestamp="2022-13-28T21:23:58.317Z"),
        _with(Timestamp="2022-07-28T21:23:58.317+09:00"),
        '{"Type": "Notification", "Type": "SubscriptionConfirmation"}',
    ],
)
def test_bodies_that_are_not_sns_messages_are_shape_errors(body: bytes | str) -> None:
    with pytest.raises(SnsShapeError):
        parse_message(body)
