"""The tegami command, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from tests.conftest import make_settings


async def test_api_key_create_prints_a_working_key_alone(
    database_url: str, client: httpx.AsyncClient
) -> None:
    settings = make_settings(database_url)
    env = {
        **os.environ,
        "TEGAMI_DATABASE_URL": database_url,
        "TEGAMI_PUBLIC_BASE_URL": settings.public_base_url,
        "TEGAMI_UNSUBSCRIBE_SECRET": settings.unsubscribe_secret[0].get_secret_value(),
        "TEGAMI_ADDRESS_HASH_SECRET": settings.address_hash_secret.get_secret_value(),
        "TEGAMI_LINK_HOSTS": "proworks.jp",
        "TEGAMI_SENDER_POSTAL_ADDRESS": "東京都",
        "TEGAMI_SENDER_CONTACT": "support@proworks.jp",
    }
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
