"""Logs never carry an address in clear, a link token or a secret."""

from __future__ import annotations

import logging

import pytest

from app.ops.logging import JsonFormatter
from tests.sns.test_router import sent_mail
from tests.sns_messages import Sns, ses_event


async def test_a_mail_and_its_bounce_log_no_address_token_or_secret(
    sns: Sns, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    # The level production logs at (app.ops.logging.configure_logging).
    caplog.set_level(logging.INFO)
    address = "secret.person@example.com"
    _, ses_id = await sent_mail(sns, auth, address)
    await sns.deliver(
        ses_event("eventpub-bounce-permanent-general.json", to=address, ses_message_id=ses_id)
    )
    await sns.client.post(
        "/emails/verify-email",
        json={"to": address, "params": {"verification_url": "https://proworks.jp/verify?token=v1"}},
        headers=auth,
    )

    lines = [JsonFormatter().format(record) for record in caplog.records]
    text = "\n".join(lines)
    assert any("email_sent" in line for line in lines), "the send itself is logged"
    assert "s***@example.com" in text
    assert address not in text
    assert "token=v1" not in text
    assert "/unsubscribe/" not in text
    assert auth["Authorization"].split()[1] not in text
    assert "test-unsubscribe-secret" not in text and "test-address-hash-secret" not in text
