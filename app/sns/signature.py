"""Amazon SNS message verification: shape, canonical string, certificate URL, signature, age.

Follows https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html.
Everything here runs before the router reads ``Message``. ``CertificateStore`` is the one
stateful piece (a bounded cache of signing certificates); the rest is pure.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import functools
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID


class SnsShapeError(ValueError):
    """The body is not an SNS message (answered with 400)."""


class SnsVerificationError(Exception):
    """The message failed verification (answered with 403); ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class _Busy(SnsVerificationError):
    """No download slot came free in time: an answer about the moment, not about the URL."""


class MessageType(StrEnum):
    """SNS's ``Type``: what the router does with a verified message."""

    NOTIFICATION = "Notification"
    SUBSCRIPTION_CONFIRMATION = "SubscriptionConfirmation"
    UNSUBSCRIBE_CONFIRMATION = "UnsubscribeConfirmation"


MESSAGE_TYPES: Final = tuple(MessageType)

# Signed fields per Type, in the byte order AWS signs them (sorted by name).
_NOTIFICATION_FIELDS: Final = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_FIELDS: Final = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)
_SIGNED_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    MessageType.NOTIFICATION: _NOTIFICATION_FIELDS,
    MessageType.SUBSCRIPTION_CONFIRMATION: _CONFIRMATION_FIELDS,
    MessageType.UNSUBSCRIBE_CONFIRMATION: _CONFIRMATION_FIELDS,
}
_ENVELOPE_FIELDS: Final = ("SignatureVersion", "Signature", "SigningCertURL")
_OPTIONAL_FIELDS: Final = frozenset({"Subject"})

_HASHES: Final[dict[str, type[hashes.HashAlgorithm]]] = {"1": hashes.SHA1, "2": hashes.SHA256}

# Future timestamps beyond this are refused: SNS stamps at send time, so only a clock gone
# wrong (ours or a forger's) produces them.
MAX_FUTURE_SKEW: Final = dt.timedelta(minutes=5)

# Regexes run on the raw string (not a parsed URL) so that parser leniency (backslashes,
# percent-escapes, userinfo, IDNA) cannot smuggle another host past them. ASCII only, no
# IGNORECASE: AWS hosts are lowercase.
_REGION: Final = r"[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}"
_HOST: Final = rf"sns\.(?P<region>{_REGION})\.amazonaws\.com(?P<cn>\.cn)?"
_CERT_URL_RE: Final = re.compile(
    rf"https://{_HOST}/(?P<name>SimpleNotificationService-[0-9a-f]+\.pem)", re.ASCII
)
_SUBSCRIBE_URL_RE: Final = re.compile(
    rf"https://{_HOST}/\?(?P<query>[A-Za-z0-9._~%&=:+\-]+)", re.ASCII
)
_CERT_NAME_RE: Final = re.compile(r"SimpleNotificationService-[0-9a-f]+\.pem", re.ASCII)
_TOPIC_ARN_RE: Final = re.compile(
    rf"arn:(?P<partition>aws|aws-cn|aws-us-gov):sns:(?P<region>{_REGION}):[0-9]{{12}}:[^:\s]+",
    re.ASCII,
)
_TIMESTAMP_RE: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z", re.ASCII
)


# --- shape -------------------------------------------------------------------------------


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers could disagree on which duplicate wins; refuse the ambiguity outright.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise SnsShapeError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _require_strings(message: Mapping[str, Any], *, envelope: bool = True) -> str:
    """Check Type and every field it requires are strings; return the Type.

    ``envelope=False`` checks only the signed fields (what signing needs).
    """
    kind = message.get("Type")
    if not isinstance(kind, str):
        raise SnsShapeError("Type missing or not a string")
    if kind not in _SIGNED_FIELDS:
        raise SnsShapeError(f"unknown Type {kind!r}")
    fields = (*_SIGNED_FIELDS[kind], *_ENVELOPE_FIELDS) if envelope else _SIGNED_FIELDS[kind]
    for field in fields:
        if field in _OPTIONAL_FIELDS and field not in message:
            continue
        if not isinstance(message.get(field), str):
            raise SnsShapeError(f"{field} missing or not a string")
    return kind


def _parse_timestamp(value: object) -> dt.datetime | None:
    if not isinstance(value, str) or not _TIMESTAMP_RE.fullmatch(value):
        return None
    try:
        return dt.datetime.fromisoformat(value)  # "Z" is understood from Python 3.11
    except ValueError:  # well-formed but impossible, like month 13
        return None


def _timestamp(message: Mapping[str, Any]) -> dt.datetime:
    parsed = _parse_timestamp(message.get("Timestamp"))
    if parsed is None:
        raise SnsVerificationError("bad_timestamp")
    return parsed


def parse_message(body: bytes | str) -> dict[str, Any]:
    """Parse a request body into an SNS message dict, or raise ``SnsShapeError``."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        message = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except RecursionError:
        raise SnsShapeError("not JSON: nested too deeply") from None
    except ValueError as exc:
        # Invalid UTF-8, malformed JSON, and integers of more digits than Python converts
        # (sys.get_int_max_str_digits) are all ValueErrors.
        raise SnsShapeError(f"not JSON: {str(exc)[:200]}") from None
    if not isinstance(message, dict):
        raise SnsShapeError("not a JSON object")
    _require_strings(message)
    # SNS escapes what it carries; a NUL in a field cannot be stored and is no SNS message.
    if any("\x00" in value for value in message.values() if isinstance(value, str)):
        raise SnsShapeError("a field holds a NUL character")
    if _parse_timestamp(message["Timestamp"]) is None:
        raise SnsShapeError("Timestamp is not ISO-8601 UTC")
    return message


def canonical_string(message: Mapping[str, Any]) -> bytes:
    """The bytes AWS signs: ``Key\\nValue\\n`` for each signed field of the message's Type."""
    kind = _require_strings(message, envelope=False)
    parts: list[str] = []
    for field in _SIGNED_FIELDS[kind]:
        if field in message:  # only Subject can be absent (checked above)
            parts.append(f"{field}\n{message[field]}\n")
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate (JSON "\ud800"): not text AWS signs
        raise SnsShapeError("a signed field is not valid Unicode") from exc


# --- URLs --------------------------------------------------------------------------------


def _region_matches(match: re.Match[str], topic_arn: str) -> bool:
    arn = _TOPIC_ARN_RE.fullmatch(topic_arn)
    if arn is None or arn["region"] != match["region"]:
        return False
    in_china = match["region"].startswith("cn-")
    # China regions live on amazonaws.com.cn and in the aws-cn partition; nothing else does.
    if in_china != bool(match["cn"]) or in_china != (arn["partition"] == "aws-cn"):
        return False
    return (arn["partition"] == "aws-us-gov") == match["region"].startswith("us-gov-")


def check_cert_url(url: str, *, topic_arn: str) -> None:
    """Refuse a SigningCertURL that is not an SNS certificate in the topic's region."""
    match = _CERT_URL_RE.fullmatch(url)
    if match is None or not _region_matches(match, topic_arn):
        raise SnsVerificationError("cert_url", url[:200])


def check_subscribe_url(url: str, *, topic_arn: str) -> None:
    """Refuse a SubscribeURL that is not an SNS ConfirmSubscription call for this topic."""
    match = _SUBSCRIBE_URL_RE.fullmatch(url)
    if match is None or not _region_matches(match, topic_arn):
        raise SnsVerificationError("subscribe_url", url[:200])
    try:
        query = parse_qs(match["query"], strict_parsing=True)
    except ValueError as exc:
        raise SnsVerificationError("subscribe_url", url[:200]) from exc
    # Only ever follow a confirmation: an Unsubscribe action here would drop our subscription.
    if query.get("Action") != ["ConfirmSubscription"] or query.get("TopicArn", [topic_arn]) != [
        topic_arn
    ]:
        raise SnsVerificationError("subscribe_url", url[:200])


# --- signature and age -------------------------------------------------------------------


def verify_signature(message: Mapping[str, Any], certificate: x509.Certificate) -> None:
    """Check ``Signature`` over the canonical string with the certificate's RSA key.

    Certificate expiry is judged at the message's (signed) Timestamp, not now, so the
    genuine 2022 fixtures still verify; an expired certificate then only verifies messages
    from its lifetime, and those the age check refuses as too old.
    """
    version = message.get("SignatureVersion")
    algorithm = _HASHES.get(version) if isinstance(version, str) else None
    if algorithm is None:
        raise SnsVerificationError("signature_version", repr(version)[:20])
    signature = message.get("Signature")
    if not isinstance(signature, str):
        raise SnsShapeError("Signature missing or not a string")
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SnsVerificationError("bad_signature", "not base64") from exc
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SnsVerificationError("bad_signature", "certificate key is not RSA")
    try:
        key.verify(raw, canonical_string(message), padding.PKCS1v15(), algorithm())
    except InvalidSignature as exc:
        raise SnsVerificationError("bad_signature") from exc
    signed_at = _timestamp(message)
    if not certificate.not_valid_before_utc <= signed_at <= certificate.not_valid_after_utc:
        raise SnsVerificationError("cert_not_valid", "certificate not valid at Timestamp")


def check_age(message: Mapping[str, Any], *, now: dt.datetime, max_age_seconds: int) -> None:
    """Refuse messages older than ``max_age_seconds`` or from the future; 0 turns this off.

    The skew allowance for old messages is part of ``max_age_seconds`` (the setting's
    default, 3900, is an hour plus five minutes); future ones get ``MAX_FUTURE_SKEW``.
    """
    if max_age_seconds < 0:
        raise ValueError("max_age_seconds must be >= 0")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if max_age_seconds == 0:
        return
    age = now - _timestamp(message)
    if age > dt.timedelta(seconds=max_age_seconds):
        raise SnsVerificationError("too_old", f"{age.total_seconds():.0f}s")
    if -age > MAX_FUTURE_SKEW:
        raise SnsVerificationError("in_future", f"{-age.total_seconds():.0f}s ahead")


# --- certificates ------------------------------------------------------------------------


# A certificate that could not be fetched is not asked for again for this long: SNS retries a
# failed delivery within seconds, and forged certificate names (any hex passes the URL rule)
# must not turn each request into a download from AWS.
CERT_FAILURE_SECONDS: Final = 30.0
# Downloads in flight at once, over all URLs; the same URL is only ever downloaded once at a time.
CERT_DOWNLOADS_AT_ONCE: Final = 4


class CertificateStore:
    """Signing certificates by URL: from ``cert_dir`` when there, else downloaded once.

    Bounded LRU of certificates; failures remembered for ``failure_seconds`` (bounded too);
    concurrent gets for one URL share one download; at most ``downloads_at_once`` downloads
    run together, and a get that waits longer than ``slot_timeout`` (default ``timeout``) for
    a turn gives up.
    """

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        cert_dir: Path | None = None,
        max_entries: int = 64,
        timeout: float = 5.0,
        max_bytes: int = 64 * 1024,
        failure_seconds: float = CERT_FAILURE_SECONDS,
        max_failures: int = 1024,
        downloads_at_once: int = CERT_DOWNLOADS_AT_ONCE,
        slot_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._cert_dir = cert_dir
        self._max_entries = max_entries
        self._timeout = timeout
        self._slot_timeout = timeout if slot_timeout is None else slot_timeout
        self._max_bytes = max_bytes
        self._failure_seconds = failure_seconds
        self._max_failures = max_failures
        self._clock = clock
        self._downloads = asyncio.Semaphore(downloads_at_once)
        self._cache: OrderedDict[str, x509.Certificate] = OrderedDict()
        # url -> (clock time until which it is not tried again, what went wrong)
        self._failed: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._pending: dict[str, asyncio.Task[x509.Certificate]] = {}

    async def get(self, url: str) -> x509.Certificate:
        cached = self._cache.get(url)
        if cached is not None:
            self._cache.move_to_end(url)
            return cached
        failed = self._failed.get(url)
        if failed is not None:
            until, detail = failed
            if self._clock() < until:
                raise SnsVerificationError("cert_unavailable", f"recently failed ({detail})")
            del self._failed[url]
        task = self._pending.get(url)
        if task is None:
            task = asyncio.create_task(self._load(url))
            self._pending[url] = task
            task.add_done_callback(lambda done: self._finished(url, done))
        # Shielded: one caller giving up must not cancel the download for the others.
        return await asyncio.shield(task)

    def _finished(self, url: str, task: asyncio.Task[x509.Certificate]) -> None:
        if self._pending.get(url) is task:
            del self._pending[url]
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            self._cache[url] = task.result()
            self._cache.move_to_end(url)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        elif isinstance(error, SnsVerificationError) and not isinstance(error, _Busy):
            self._failed[url] = (self._clock() + self._failure_seconds, str(error)[:200])
            self._failed.move_to_end(url)
            while len(self._failed) > self._max_failures:
                self._failed.popitem(last=False)

    async def _load(self, url: str) -> x509.Certificate:
        pem = self._from_dir(url)
        if pem is None:
            try:
                async with asyncio.timeout(self._slot_timeout):
                    await self._downloads.acquire()
            except TimeoutError:
                # Says nothing about this URL: not remembered as its failure.
                raise _Busy("cert_unavailable", "too many certificate downloads") from None
            try:
                pem = await self._download(url)
            finally:
                self._downloads.release()
        try:
            return x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise SnsVerificationError("cert_unavailable", "not a PEM certificate") from exc

    def _from_dir(self, url: str) -> bytes | None:
        if self._cert_dir is None:
            return None
        name = url.rsplit("/", 1)[-1]
        if not _CERT_NAME_RE.fullmatch(name):  # the name becomes a path: no traversal
            return None
        path = self._cert_dir / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    async def _download(self, url: str) -> bytes:
        try:
            # One deadline for the whole exchange: httpx's timeout is per read, so a
            # server dripping bytes could otherwise hold the request open.
            async with asyncio.timeout(self._timeout):
                async with self._http.stream(
                    "GET", url, timeout=self._timeout, follow_redirects=False
                ) as response:
                    if response.status_code != 200:
                        raise SnsVerificationError(
                            "cert_unavailable", f"HTTP {response.status_code}"
                        )
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > self._max_bytes:
                            raise SnsVerificationError("cert_unavailable", "too large")
                    return bytes(body)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise SnsVerificationError("cert_unavailable", type(exc).__name__) from exc


# --- the whole check ---------------------------------------------------------------------


async def verify_message(
    message: Mapping[str, Any],
    *,
    certificates: CertificateStore,
    allowed_topics: Collection[str],
    max_age_seconds: int,
    now: dt.datetime,
) -> None:
    """Verify an SNS message end to end; raise ``SnsVerificationError`` when it fails.

    Topic first: a valid signature proves only that *some* AWS account sent the message,
    and checking the topic first avoids downloading certificates for strangers.
    """
    _require_strings(message)
    topic_arn = message["TopicArn"]
    if topic_arn not in allowed_topics:
        raise SnsVerificationError("topic_not_allowed", topic_arn[:200])
    cert_url = message["SigningCertURL"]
    check_cert_url(cert_url, topic_arn=topic_arn)
    certificate = await certificates.get(cert_url)
    verify_signature(message, certificate)
    check_age(message, now=now, max_age_seconds=max_age_seconds)


# --- signing (tests and `tegami simulate`) -----------------------------------------------


def make_signing_identity(
    *, common_name: str = "sns.us-east-1.amazonaws.com"
) -> tuple[bytes, bytes]:
    """A throwaway RSA 2048 key and self-signed certificate, both PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Wide validity: expiry is judged at the message Timestamp, and tests sign
        # messages with fixture timestamps from years ago.
        .not_valid_before(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(now + dt.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


@functools.lru_cache(maxsize=8)
def _signing_key(private_key_pem: bytes) -> rsa.RSAPrivateKey:
    # Loading checks the RSA key, which takes tens of milliseconds; simulate and tests
    # sign many messages with one key.
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError("SNS signing keys are RSA")
    return key


def sign_message(
    message: Mapping[str, Any], private_key_pem: bytes, *, signature_version: str = "1"
) -> dict[str, Any]:
    """A copy of ``message`` with ``SignatureVersion`` and ``Signature`` set, as SNS signs."""
    algorithm = _HASHES.get(signature_version)
    if algorithm is None:
        raise ValueError(f"unsupported SignatureVersion {signature_version!r}")
    key = _signing_key(private_key_pem)
    signed = dict(message)
    signed["SignatureVersion"] = signature_version
    raw = key.sign(canonical_string(signed), padding.PKCS1v15(), algorithm())
    signed["Signature"] = base64.b64encode(raw).decode("ascii")
    return signed
