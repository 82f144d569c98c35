"""`tegami doctor` catches two silent losses (a raw-delivery SNS subscription; SPF missing on
the From domain, which au and SoftBank check), and GET /status/setup keeps its answer ~30 s.
Against the fake SES v2/SNS over HTTP and the local DNS server of tests/setup/test_doctor.py."""

from __future__ import annotations

import httpx
import pytest

from app.status import router as status
from tests.conftest import AppFactory
from tests.fake_ses import TOPIC, FakeSes
from tests.setup.dns_server import DnsServer, serving, zone_from_text
from tests.setup.test_doctor import (
    DOMAIN,
    aws,
    dns,
    doctor,
    doctor_settings,
    only_failure,
    published_zone,
)

__all__ = ["aws", "dns"]  # fixtures, used by name


def test_a_raw_message_delivery_subscription_fails(
    aws: FakeSes, dns: DnsServer, database_url: str
) -> None:
    aws.topics[TOPIC][0].raw_message_delivery = True

    code, out = doctor(doctor_settings(database_url, dns))

    assert code == 1
    failure = only_failure(out, "subscription")
    assert "raw message delivery is on" in failure
    assert "--attribute-name RawMessageDelivery --attribute-value false" in failure
    assert "GetSubscriptionAttributes" in aws.calls


def test_spf_missing_on_the_from_domain_fails(aws: FakeSes, database_url: str) -> None:
    # Every other record (MAIL FROM's SPF included) is in place.
    with serving(zone_from_text(published_zone(without=DOMAIN), DOMAIN)) as dns:
        code, out = doctor(doctor_settings(database_url, dns))

    assert code == 1
    failure = only_failure(out, "dns")
    assert f"SPF missing: {DOMAIN} TXT" in failure
    assert f"add TXT {DOMAIN} 'v=spf1 include:amazonses.com ~all'" in failure


def test_spf_on_the_from_domain_without_amazonses_fails(aws: FakeSes, database_url: str) -> None:
    zone = published_zone(without=DOMAIN) + f'{DOMAIN}. 3600 IN TXT "v=spf1 mx ~all"\n'
    with serving(zone_from_text(zone, DOMAIN)) as dns:
        code, out = doctor(doctor_settings(database_url, dns))

    assert code == 1
    failure = only_failure(out, "dns")
    assert f"SPF wrong: {DOMAIN} TXT" in failure
    assert "add include:amazonses.com" in failure


def test_spf_missing_on_the_mail_from_domain_fails(aws: FakeSes, database_url: str) -> None:
    mail_from = f"bounce.{DOMAIN}"
    zone = "\n".join(
        line
        for line in published_zone().splitlines()
        if not (line.startswith(f"{mail_from}.") and " TXT " in line)
    )
    with serving(zone_from_text(zone + "\n", DOMAIN)) as dns:
        code, out = doctor(doctor_settings(database_url, dns))

    assert code == 1
    failure = only_failure(out, "dns")
    assert f"MAIL FROM SPF missing: {mail_from} TXT" in failure


async def test_status_setup_keeps_its_answer_for_a_while(
    aws: FakeSes,
    dns: DnsServer,
    start_app: AppFactory,
    auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(status, "_clock", lambda: now[0])
    client = await start_app(
        ses_configuration_set="tegami", sns_topic_arns=[TOPIC], dns_nameserver=dns.address
    )
    app = client.app  # type: ignore[attr-defined]
    app.state.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))

    first = await client.get("/status/setup", headers=auth)
    asked = (len(aws.calls), len(dns.queries))
    assert first.status_code == 200 and asked[0] > 0 and asked[1] > 0

    now[0] += status.SETUP_CACHE_SECONDS - 1
    second = await client.get("/status/setup", headers=auth)
    assert second.json() == first.json()
    assert (len(aws.calls), len(dns.queries)) == asked  # nothing asked again

    aws.topics[TOPIC][0].confirmed = False
    now[0] += 2  # the answer is now older than the window
    third = await client.get("/status/setup", headers=auth)
    assert len(aws.calls) > asked[0] and len(dns.queries) > asked[1]
    assert third.json()["ready"] is False  # a fresh answer
    await app.state.http.aclose()
