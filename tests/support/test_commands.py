"""`tegami emails find --to` and `tegami why`: the same answers as the API, as tables."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import make_settings
from tests.support.conftest import Desk


def tegami(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    settings = make_settings(database_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEGAMI_")}
    env.update(
        TEGAMI_DATABASE_URL=database_url,
        TEGAMI_PUBLIC_BASE_URL=settings.public_base_url,
        TEGAMI_UNSUBSCRIBE_SECRET=settings.unsubscribe_secret[0].get_secret_value(),
        TEGAMI_ADDRESS_HASH_SECRET=settings.address_hash_secret.get_secret_value(),
        TEGAMI_LINK_HOSTS=",".join(settings.link_hosts),
        TEGAMI_SENDER_POSTAL_ADDRESS=settings.sender_postal_address,
        TEGAMI_SENDER_CONTACT=settings.sender_contact,
    )
    return subprocess.run(  # noqa: S603  (our own command)
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_an_operator_finds_a_persons_mail_and_reads_why(
    desk: Desk, database_url: str
) -> None:
    delivered = await desk.delivered("Taro@docomo.ne.jp")
    queued = await desk.send("taro@docomo.ne.jp", "matching-notification")

    found = tegami("emails", "find", "--to", "TARO@docomo.ne.jp", database_url=database_url)
    assert found.returncode == 0, found.stderr
    rows = found.stdout.splitlines()
    assert rows[0].split()[:3] == ["created", "(UTC)", "id"]
    assert queued in rows[1] and "queued" in rows[1]
    assert delivered in rows[2] and "delivered" in rows[2] and "delivery" in rows[2]
    assert rows[-1] == "2 found"

    why = tegami("why", "taro@docomo.ne.jp", "--type", "password-reset", database_url=database_url)
    assert why.returncode == 0, why.stderr
    assert why.stdout.splitlines()[0].split() == ["verdict", "delivered"]
    assert delivered in why.stdout
    assert "proworks.jp" in why.stdout and "ドコモ" in why.stdout

    bad = tegami("why", "not-an-address", database_url=database_url)
    assert bad.returncode == 2 and bad.stderr.startswith("tegami: ")
