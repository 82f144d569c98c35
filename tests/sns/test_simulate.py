"""`tegami simulate`: real-shaped SES events, signed with the dev certificate that `tegami dev`
trusts, through the real /sns/ses-events."""

from __future__ import annotations

import asyncio
import json
import stat
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from app import cli
from app.config import Settings
from app.main import create_app
from app.sns.events import EventKind, parse_ses_event
from app.sns.simulate import (
    DEV_TOPIC_ARN,
    SimulatedEvent,
    dev_sns_environment,
    ensure_dev_signer,
    post_notification,
    ses_event,
    sns_notification,
)
from tests.conditions import eventually
from tests.conftest import AppFactory, make_settings
from tests.ses import MotoSes
from tests.sns_messages import FIXTURES

SHAPES = {
    SimulatedEvent.BOUNCE: "eventpub-bounce-permanent-general.json",
    SimulatedEvent.COMPLAINT: "eventpub-complaint-abuse.json",
    SimulatedEvent.DELIVERY: "eventpub-delivery.json",
}
PARAMS = {"verification_url": "https://proworks.jp/verify?token=v1"}


def shape(value: Any) -> Any:
    """Keys and value types, recursively: what a parser of SES events relies on."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


@pytest.mark.parametrize("kind", list(SimulatedEvent))
def test_simulated_events_have_the_shape_of_real_ses_events(kind: SimulatedEvent) -> None:
    fixture = json.loads((FIXTURES / "ses-events" / SHAPES[kind]).read_text())
    simulated = ses_event(kind, "taro@example.com")
    expected = shape(fixture)
    got = shape(simulated)
    # The fixture's example tags and the sender ARN aside, every field is there, same type.
    assert got.keys() == expected.keys()
    payload = kind.value
    assert got[payload] == expected[payload]
    assert got["mail"].keys() - {"tags"} >= expected["mail"].keys() - {"tags", "sourceArn"}


@pytest.mark.parametrize(
    ("kind", "soft", "bounce_type"),
    [
        (SimulatedEvent.BOUNCE, False, "Permanent"),
        (SimulatedEvent.BOUNCE, True, "Transient"),
        (SimulatedEvent.COMPLAINT, False, None),
        (SimulatedEvent.DELIVERY, False, None),
    ],
)
def test_simulated_events_read_as_what_they_simulate(
    kind: SimulatedEvent, soft: bool, bounce_type: str | None
) -> None:
    event = parse_ses_event(json.dumps(ses_event(kind, "Taro@example.com", soft=soft)))
    assert event.kind is EventKind(kind.value)
    assert event.recipients == ("Taro@example.com",)
    assert event.bounce_type == bounce_type


def test_dev_signer_is_made_once_and_named_as_its_url(tmp_path: Path) -> None:
    first = ensure_dev_signer(tmp_path)
    second = ensure_dev_signer(tmp_path)
    assert first == second
    [cert] = first.cert_dir.iterdir()
    assert first.cert_url == f"https://sns.us-east-1.amazonaws.com/{cert.name}"
    key_file = tmp_path / "sns" / "signing-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    environment = dev_sns_environment(tmp_path)
    assert environment == {
        "TEGAMI_SNS_CERT_DIR": str(first.cert_dir),
        "TEGAMI_SNS_TOPIC_ARNS": DEV_TOPIC_ARN,
    }


async def test_simulated_events_apply_the_rules_through_the_endpoint(
    start_app: AppFactory, auth: dict[str, str], tmp_path: Path
) -> None:
    signer = ensure_dev_signer(tmp_path)
    client = await start_app(sns_cert_dir=signer.cert_dir, sns_topic_arns=[DEV_TOPIC_ARN])

    async def simulate(kind: SimulatedEvent, address: str, *, soft: bool = False) -> None:
        notification = sns_notification(ses_event(kind, address, soft=soft), signer=signer)
        answer = await post_notification(client, notification)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outcome"] == "applied"

    async def refused(address: str) -> str | None:
        answer = await client.post(
            "/emails/verify-email", json={"to": address, "params": PARAMS}, headers=auth
        )
        reason: str | None = answer.json()["error"]["reason"] if answer.status_code == 409 else None
        return reason

    await simulate(SimulatedEvent.BOUNCE, "hard@example.com")
    await simulate(SimulatedEvent.COMPLAINT, "complaint@example.com")
    for _ in range(3):
        await simulate(SimulatedEvent.BOUNCE, "soft@example.com", soft=True)
    await simulate(SimulatedEvent.BOUNCE, "once@example.com", soft=True)
    await simulate(SimulatedEvent.DELIVERY, "fine@example.com")

    assert await refused("hard@example.com") == "hard_bounce"
    assert await refused("complaint@example.com") == "complaint"
    assert await refused("soft@example.com") == "soft_bounce_limit"
    assert await refused("once@example.com") is None
    assert await refused("fine@example.com") is None


@pytest.fixture
async def running_server(
    database_url: str, ses: MotoSes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """The app on a real port, as `tegami dev` runs it, trusting ./.tegami/sns/ of tmp_path."""
    monkeypatch.chdir(tmp_path)
    environment = dev_sns_environment(tmp_path / ".tegami")
    settings: Settings = make_settings(
        database_url,
        sns_cert_dir=Path(environment["TEGAMI_SNS_CERT_DIR"]),
        sns_topic_arns=[environment["TEGAMI_SNS_TOPIC_ARNS"]],
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    async def started() -> bool:
        return server.started

    await eventually(started)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.to_thread(thread.join, 30)


async def test_tegami_simulate_posts_to_a_running_server(
    running_server: str, auth: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    await asyncio.to_thread(
        cli.main, ["simulate", "bounce", "taro@example.com", "--url", running_server]
    )
    assert capsys.readouterr().out == "bounce for taro@example.com: applied\n"
    async with httpx.AsyncClient(base_url=running_server) as http:
        answer = await http.post(
            "/emails/verify-email",
            json={"to": "taro@example.com", "params": PARAMS},
            headers=auth,
        )
    assert answer.status_code == 409
    assert answer.json()["error"]["reason"] == "hard_bounce"


def test_tegami_simulate_says_when_nothing_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        cli.main(["simulate", "delivery", "taro@example.com", "--url", "http://127.0.0.1:1"])
    assert exited.value.code == 1
    assert "is `tegami dev` running?" in capsys.readouterr().err


def test_tegami_simulate_soft_goes_with_bounce_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["simulate", "complaint", "taro@example.com", "--soft"])
    assert exited.value.code == 2
    assert "--soft" in capsys.readouterr().err
