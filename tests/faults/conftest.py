"""Fixtures of the fault tests: an SES that misbehaves on purpose, and SNS signing.

``ses`` is overridden here: in tests/faults/ the app (``start_app`` of tests/conftest.py) talks
to :class:`tests.fake_ses.FakeSes` over HTTP, through ``AWS_ENDPOINT_URL_SESV2``, instead of
moto's always-willing SES.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.sns.signature import make_signing_identity
from tests.fake_ses import FakeSes
from tests.sns_messages import CERT_NAME, REGION


@pytest.fixture
def ses(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSes]:
    fake = FakeSes().start()
    for name, value in fake.environment().items():
        monkeypatch.setenv(name, value)
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def sns_identity() -> tuple[bytes, bytes]:
    """A throwaway signing key and its certificate, standing in for AWS's."""
    return make_signing_identity(common_name=f"sns.{REGION}.amazonaws.com")


@pytest.fixture
def sns_cert_dir(tmp_path: Path, sns_identity: tuple[bytes, bytes]) -> Path:
    directory = tmp_path / "sns-certs"
    directory.mkdir()
    (directory / CERT_NAME).write_bytes(sns_identity[1])
    return directory
