"""Nothing the app's webhook endpoint does can hold tegami up: a receiver that drips its
answer a byte a second, or answers 300 MB, over real HTTP on 127.0.0.1 (tests/webhooks/
receivers.py). In-process for what the app sees; a served `tegami serve` for its memory and its
shutdown."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conditions import eventually
from tests.conftest import AppFactory, make_settings
from tests.served import ServedTegami
from tests.sns_messages import PARAMS
from tests.webhooks.receivers import HUGE_BYTES, SECRET, Receiver, rss_mib, wait_for


async def start(start_app: AppFactory, database_url: str, url: str, **overrides: Any) -> Any:
    settings = make_settings(
        database_url,
        run_worker=True,
        webhook_secret=[SECRET],
        webhook_first_retry_seconds=0.2,
        **overrides,
    ).model_copy(update={"webhook_url": url})
    return await start_app(settings=settings)


async def accept(client: httpx.AsyncClient, auth: dict[str, str], to: str) -> str:
    answer = await client.post(
        "/emails/verify-email",
        json={"to": to, "params": PARAMS["verify-email"]},
        headers=auth,
    )
    assert answer.status_code == 202, answer.text
    email_id: str = answer.json()["id"]
    return email_id


async def _value(value: Any) -> Any:
    return value


# The endpoint is the last fixture of each test, so it stops first: whatever tegami does with
# a drip still running, the test's own teardown is never held by it.


async def test_a_dripping_receiver_is_cut_off_at_the_deadline(
    start_app: AppFactory, database_url: str, auth: dict[str, str], app_endpoint: Receiver
) -> None:
    client = await start(start_app, database_url, app_endpoint.url, webhook_timeout_seconds=2)
    await accept(client, auth, "drip@example.com")
    await eventually(lambda: _value(app_endpoint.drips_started >= 1), within=15)

    async def cut_off() -> list[dict[str, Any]]:
        listed = await client.get("/webhooks/deliveries", headers=auth)
        return [
            d
            for d in listed.json()["deliveries"]
            if d["data"]["address"] == "drip@example.com" and d["last_error"]
        ]

    # A byte a second never trips a per-read timeout; the whole post's deadline does.
    [delivery] = await eventually(cut_off, within=20)
    assert delivery["status"] == "pending"  # tried again later, on the schedule
    assert delivery["last_status"] is None
    assert delivery["last_error"] == "no answer within 2 s"


async def test_a_dripping_post_holds_up_no_other_event(
    start_app: AppFactory, database_url: str, auth: dict[str, str], app_endpoint: Receiver
) -> None:
    # A long deadline: only posts running side by side can let the next event through.
    client = await start(start_app, database_url, app_endpoint.url, webhook_timeout_seconds=60)
    await accept(client, auth, "drip@example.com")
    await eventually(lambda: _value(app_endpoint.drips_started >= 1), within=15)

    good = await accept(client, auth, "good@example.com")

    await eventually(lambda: _value("good@example.com" in app_endpoint.addresses()), within=10)
    [event] = [e for e in app_endpoint.events if e["data"]["address"] == "good@example.com"]
    assert event["data"]["email_id"] == good


# -- a served process -------------------------------------------------------------------------


@pytest.fixture
def served_with(database_url: str, engine: AsyncEngine, tmp_path: Path) -> Iterator[Any]:
    """Start `tegami serve` posting its events to a receiver; stopped at the end."""
    started: list[ServedTegami] = []

    def serve(receiver: Receiver, **env: str) -> ServedTegami:
        tegami = ServedTegami(
            database_url,
            tmp_path,
            env={
                "TEGAMI_WEBHOOK_URL": receiver.url,
                "TEGAMI_WEBHOOK_SECRET": SECRET,
                "TEGAMI_WEBHOOK_FIRST_RETRY_SECONDS": "0.2",
                **env,
            },
        )
        started.append(tegami.start())
        return tegami

    yield serve
    for tegami in started:
        tegami.stop()


def send(tegami: ServedTegami, key: str, to: str) -> str:
    answer = httpx.post(
        f"{tegami.url}/emails/verify-email",
        json={"to": to, "params": PARAMS["verify-email"]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert answer.status_code == 202, answer.text
    email_id: str = answer.json()["id"]
    return email_id


def test_a_300_mb_answer_leaves_the_memory_of_the_process_flat(
    served_with: Any, app_endpoint: Receiver
) -> None:
    tegami = served_with(app_endpoint)
    assert tegami.process is not None
    key = tegami.cli("api-key", "create", "hooks")
    send(tegami, key, "warm@example.com")
    wait_for(lambda: "warm@example.com" in app_endpoint.addresses(), within=20)
    rss_before, peak_before = rss_mib(tegami.process.pid)

    send(tegami, key, "huge@example.com")
    wait_for(lambda: app_endpoint.huge_ended, within=60)
    send(tegami, key, "after@example.com")
    wait_for(lambda: "after@example.com" in app_endpoint.addresses(), within=20)

    rss_after, peak_after = rss_mib(tegami.process.pid)
    assert peak_after - peak_before < 50, (peak_before, peak_after)
    assert rss_after - rss_before < 50, (rss_before, rss_after)
    # tegami read a few KiB of the answer and hung up.
    assert app_endpoint.huge_ended[0] < HUGE_BYTES


def test_shutdown_is_not_held_by_a_dripping_post_and_the_event_is_posted_again(
    served_with: Any, app_endpoint: Receiver
) -> None:
    # The post's own deadline (60 s) is far off: shutdown must not wait for it.
    tegami = served_with(app_endpoint, TEGAMI_WEBHOOK_TIMEOUT_SECONDS="60")
    process = tegami.process
    assert process is not None
    key = tegami.cli("api-key", "create", "hooks")
    send(tegami, key, "drip@example.com")
    wait_for(lambda: app_endpoint.drips_started >= 1, within=20)

    process.send_signal(signal.SIGTERM)
    wait_for(lambda: process.poll() is not None, within=15)

    # Handed back as it was cut: the next process posts it again at once, not after the lease.
    tegami.start()
    wait_for(lambda: app_endpoint.drips_started >= 2, within=15)
