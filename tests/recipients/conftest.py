"""Every recipient test that reaches the app reaches an SES with an account suppression list
(lifts and erasures update it), with moto behind it for sending; the pure ones start neither."""

from __future__ import annotations

import pytest

from tests.fake_ses import FakeSes


@pytest.fixture(autouse=True)
def _ses_with_suppression_list(ses_account_for_the_app: FakeSes | None) -> FakeSes | None:
    # Autouse: set up before the app starts, so its SES client goes through the fake.
    return ses_account_for_the_app
