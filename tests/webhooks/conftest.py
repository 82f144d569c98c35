"""The app's webhook endpoint as a fixture (tests/webhooks/receivers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.webhooks.receivers import Receiver


@pytest.fixture
def app_endpoint() -> Iterator[Receiver]:
    """A verifying receiver whose answers the event's address picks (drip…@, huge…@)."""
    receiver = Receiver().start()
    yield receiver
    receiver.stop()
