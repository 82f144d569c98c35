"""The tegami command, run as a user runs it."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api_keys import KeyCache
from app.cli import COMMANDS, build_parser
from app.serve import dev_api_key
from tests.conditions import eventually
from tests.conftest import AppFactory, make_settings

NO_MAIL = "/emails/00000000-0000-0000-0000-000000000000"


def tegami(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    """Run `tegami ARGS` with TEGAMI_DATABASE_URL as the only TEGAMI_ setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEGAMI_")}
    env["TEGAMI_DATABASE_URL"] = database_url
    return subprocess.run(  # noqa: S603  (our own command)
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def create(name: str, *, database_url: str, scope: str = "app") -> str:
    done = tegami("api-key", "create", name, "--scope", scope, database_url=database_url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tgm_")
    return lines[0]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_api_key_create_needs_only_the_database_url_and_prints_a_working_key_alone(
    database_url: str, client: httpx.AsyncClient
) -> None:
    key = create("nextjs-app", database_url=database_url)

    answer = await client.get(NO_MAIL, headers=bearer(key))
    assert answer.status_code == 404  # authorised: the key works


async def test_a_taken_name_is_a_one_line_error(database_url: str, engine: object) -> None:
    create("nextjs-app", database_url=database_url)

    again = tegami("api-key", "create", "nextjs-app", database_url=database_url)

    assert again.returncode != 0
    assert again.stdout == ""
    assert again.stderr.splitlines() == [
        "tegami: an API key named 'nextjs-app' already exists (revoked keys keep theirs)"
    ]


async def test_list_shows_scope_and_last_use_but_never_the_key(
    database_url: str, client: httpx.AsyncClient
) -> None:
    app_key = create("nextjs-app", database_url=database_url)
    admin_key = create("ops", database_url=database_url, scope="admin")
    assert (await client.get(NO_MAIL, headers=bearer(app_key))).status_code == 404

    listed = tegami("api-key", "list", database_url=database_url)

    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:2] == ["NAME", "SCOPE"]
    by_name = {row.split()[0]: row for row in rows}
    assert by_name["nextjs-app"].split()[1] == "app"
    assert by_name["ops"].split()[1] == "admin"
    # Used once: its last use shows (a date and a time); the other key was never used.
    assert by_name["nextjs-app"].count("UTC") == 2
    assert by_name["ops"].count("UTC") == 1
    for secret in (app_key, admin_key, app_key[4:12]):
        assert secret not in listed.stdout


async def test_a_revoked_key_is_refused_once_the_cache_window_passes(
    database_url: str, start_app: AppFactory
) -> None:
    client = await start_app()
    client.app.state.api_key_cache = KeyCache(ttl=0.2)  # type: ignore[attr-defined]
    key = create("nextjs-app", database_url=database_url)
    assert (await client.get(NO_MAIL, headers=bearer(key))).status_code == 404

    revoked = tegami("api-key", "revoke", "nextjs-app", database_url=database_url)
    assert revoked.returncode == 0, revoked.stderr

    async def refused() -> bool:
        return (await client.get(NO_MAIL, headers=bearer(key))).status_code == 401

    await eventually(refused, within=5)
    assert "UTC" in tegami("api-key", "list", database_url=database_url).stdout.splitlines()[1]


async def test_a_rotated_key_works_during_its_grace_period_and_not_after(
    database_url: str, start_app: AppFactory
) -> None:
    client = await start_app()
    old = create("nextjs-app", database_url=database_url)
    assert (await client.get(NO_MAIL, headers=bearer(old))).status_code == 404

    rotated = tegami("api-key", "rotate", "nextjs-app", "--grace", "3s", database_url=database_url)

    assert rotated.returncode == 0, rotated.stderr
    [new] = rotated.stdout.splitlines()
    assert new.startswith("tgm_") and new != old
    assert "accepted until" in rotated.stderr
    assert (await client.get(NO_MAIL, headers=bearer(new))).status_code == 404
    assert (await client.get(NO_MAIL, headers=bearer(old))).status_code == 404  # grace

    async def old_refused() -> bool:
        return (await client.get(NO_MAIL, headers=bearer(old))).status_code == 401

    await eventually(old_refused, within=10)
    assert (await client.get(NO_MAIL, headers=bearer(new))).status_code == 404


async def test_rotating_or_revoking_an_unknown_name_is_a_one_line_error(
    database_url: str, engine: object
) -> None:
    for command in ("rotate", "revoke"):
        done = tegami("api-key", command, "nobody", database_url=database_url)
        assert done.returncode == 1
        assert done.stderr.splitlines() == ["tegami: no API key named 'nobody'"]


@pytest.mark.parametrize("grace", ["soon", "5x", "-1h"])
def test_a_grace_that_is_not_a_duration_is_refused(database_url: str, grace: str) -> None:
    done = tegami("api-key", "rotate", "x", f"--grace={grace}", database_url=database_url)
    assert done.returncode == 2
    assert "is not a duration" in done.stderr and "Traceback" not in done.stderr


async def test_dev_reuses_its_key_kept_private_in_the_state_dir(
    database_url: str, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    settings = make_settings(database_url)
    key_file = tmp_path / "dev-api-key"

    first = await asyncio.to_thread(dev_api_key, settings, key_file)
    second = await asyncio.to_thread(dev_api_key, settings, key_file)

    assert first == second
    assert key_file.stat().st_mode & 0o777 == 0o600
    listed = tegami("api-key", "list", database_url=database_url).stdout.splitlines()
    assert [row.split()[:2] for row in listed[1:]] == [["dev", "admin"]]
    assert (await client.get("/status/reputation", headers=bearer(first))).status_code == 200

    key_file.unlink()  # lost: a new key under the same name, no second key
    third = await asyncio.to_thread(dev_api_key, settings, key_file)
    assert third != first
    assert (await client.get(NO_MAIL, headers=bearer(third))).status_code == 404
    assert len(tegami("api-key", "list", database_url=database_url).stdout.splitlines()) == 2


def test_version_is_printed() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == f"tegami {version('tegami')}"


# The least each command parses with.
SMALLEST = {
    "api-key": ["list"],
    "simulate": ["bounce", "taro@example.com"],
    "domain": ["check", "proworks.jp"],
    "held": ["list"],
    "webhooks": ["test"],
    "emails": ["find"],
    "why": ["taro@example.com"],
    "suppressions": ["import-from-ses"],
}


def test_each_command_is_handed_to_the_command_that_declared_it() -> None:
    """No ladder in app/cli.py: the parser names the Command whose handler runs."""
    names = [command.name for command in COMMANDS]
    assert len(names) == len(set(names))
    for command in COMMANDS:
        args = build_parser().parse_args([command.name, *SMALLEST.get(command.name, [])])
        assert args.tegami_command is command


def test_every_option_of_every_command_has_help() -> None:
    undocumented = []
    parsers = [("tegami", build_parser())]
    while parsers:
        name, parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += [(f"{name} {sub}", p) for sub, p in action.choices.items()]
                undocumented += [
                    f"{name} {choice.dest}" for choice in action._choices_actions if not choice.help
                ]
            elif not action.help:
                undocumented.append(f"{name} {action.dest}")
    assert undocumented == []
    shown = subprocess.run(
        [sys.executable, "-m", "app.cli", "api-key", "rotate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "default: 24h" in shown


async def test_held_mail_is_listed_released_and_discarded_by_the_operator(
    database_url: str, client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine
) -> None:
    from app.emails import outbox
    from app.models import OPTIONAL_CATEGORIES
    from tests.emails.test_router import body

    ids = []
    for to in ("a@example.com", "b@example.com"):
        answer = await client.post(
            "/emails/matching-notification", json=body(to, "matching-notification"), headers=auth
        )
        ids.append(answer.json()["id"])
    async with engine.begin() as conn:  # the guard holds them
        assert await outbox.hold_optional(conn, categories=OPTIONAL_CATEGORIES) == 2

    listed = tegami("held", "list", database_url=database_url)
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()
    assert {line.split()[0] for line in rows[:2]} == set(ids)
    # Each row: the type, the masked recipient, since when and why.
    assert {line.split()[2] for line in rows[:2]} == {"a***@example.com", "b***@example.com"}
    assert all("over SES's review level" in line for line in rows[:2])
    assert "@example.com" not in " ".join(rows[:2]).replace("***@example.com", "")
    assert rows[2] == "2 held"
    # ... and what the guard will do (no sends counted yet: it holds nothing).
    assert rows[3].startswith("The guard will not hold it again while the rates stay low")

    released = tegami("held", "release", ids[0], database_url=database_url)
    assert released.returncode == 0, released.stderr
    assert released.stdout.splitlines()[0] == "1 released"
    assert "The guard will not hold it again" in released.stdout
    discarded = tegami("held", "discard", "--all", database_url=database_url)
    assert (discarded.returncode, discarded.stdout) == (0, "1 discarded\n")
    neither = tegami("held", "discard", database_url=database_url)
    assert neither.returncode == 2
    assert neither.stderr == "tegami: name the email ids, or --all (not both)\n"

    first = (await client.get(f"/emails/{ids[0]}", headers=auth)).json()
    second = (await client.get(f"/emails/{ids[1]}", headers=auth)).json()
    assert (first["status"], first["events"][-1]["cause"]) == ("queued", "cli:held")
    assert (second["status"], second["last_error"]) == ("failed", "discarded by an operator")
