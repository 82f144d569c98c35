"""The tegami command, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx


async def test_api_key_create_prints_a_working_key_alone(
    database_url: str, client: httpx.AsyncClient
) -> None:
    # Only the database: the first key is made before the service has its other settings.
    env = {name: value for name, value in os.environ.items() if not name.startswith("TEGAMI_")}
    env["TEGAMI_DATABASE_URL"] = database_url
    done = subprocess.run(  # noqa: ASYNC221  (the CLI runs its own event loop)
        [sys.executable, "-m", "app.cli", "api-key", "create", "nextjs-app"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tgm_")

    answer = await client.get(
        "/emails/00000000-0000-0000-0000-000000000000",
        headers={"Authorization": f"Bearer {lines[0]}"},
    )
    assert answer.status_code == 404  # authorised: the key works


def test_api_key_create_names_a_wrong_database_url_in_one_line() -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("TEGAMI_")}
    env["TEGAMI_DATABASE_URL"] = "mysql://user@host/db"
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "api-key", "create", "nextjs-app"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == ["tegami: TEGAMI_DATABASE_URL must start with postgresql://"]
