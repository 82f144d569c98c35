"""Settings from the environment: required ones named when missing, RDS URLs accepted."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.config import SettingsError, load_settings, to_asyncpg_url

REQUIRED = {
    "TEGAMI_DATABASE_URL": "postgresql://app:secret@db.example.rds.amazonaws.com:5432/proworks",
    "TEGAMI_PUBLIC_BASE_URL": "https://mail.proworks.jp/",
    "TEGAMI_UNSUBSCRIBE_SECRET": "new-secret-0123456789,old-secret-0123456789",
    "TEGAMI_ADDRESS_HASH_SECRET": "hash-secret-0123456789",
    "TEGAMI_LINK_HOSTS": "proworks.jp, www.proworks.jp",
    "TEGAMI_SENDER_POSTAL_ADDRESS": "東京都",
    "TEGAMI_SENDER_CONTACT": "support@proworks.jp",
}


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in REQUIRED.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(
        "TEGAMI_SNS_TOPIC_ARNS", "arn:aws:sns:ap-northeast-1:1:a,arn:aws:sns:ap-northeast-1:1:b"
    )
    settings = load_settings()
    assert settings.link_hosts == ["proworks.jp", "www.proworks.jp"]
    assert [s.get_secret_value() for s in settings.unsubscribe_secret] == [
        "new-secret-0123456789",
        "old-secret-0123456789",
    ]
    assert settings.public_base_url == "https://mail.proworks.jp"
    assert settings.from_address == "PRO WORKS <noreply@proworks.jp>"
    assert len(settings.sns_topic_arns) == 2
    shown = repr(settings)
    for secret in ("new-secret-0123456789", "hash-secret-0123456789", "app:secret@"):
        assert secret not in shown


def test_missing_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in REQUIRED.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TEGAMI_UNSUBSCRIBE_SECRET")
    with pytest.raises(SettingsError, match="TEGAMI_UNSUBSCRIBE_SECRET is required"):
        load_settings()


def test_serve_without_settings_stops_and_names_them() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEGAMI_")}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    for name in ("TEGAMI_DATABASE_URL", "TEGAMI_PUBLIC_BASE_URL", "TEGAMI_LINK_HOSTS"):
        assert f"{name} is required" in done.stderr


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgres://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
        ("postgresql://u:p@h/db?sslmode=require", "postgresql+asyncpg://u:p@h/db?ssl=require"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_rds_style_database_urls_are_accepted(given: str, expected: str) -> None:
    assert to_asyncpg_url(given) == expected


def test_other_databases_are_refused() -> None:
    with pytest.raises(ValueError, match="postgresql://"):
        to_asyncpg_url("mysql://u@h/db")


def test_ses_backend_needs_an_https_public_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in REQUIRED.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TEGAMI_PUBLIC_BASE_URL", "http://mail.proworks.jp")
    monkeypatch.setenv("TEGAMI_MAIL_BACKEND", "ses")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert str(refused.value) == (
        "invalid settings: TEGAMI_PUBLIC_BASE_URL must start with https:// when "
        "TEGAMI_MAIL_BACKEND=ses (RFC 8058 one-click unsubscribe links must be HTTPS)"
    )

    monkeypatch.setenv("TEGAMI_MAIL_BACKEND", "mailbox")
    assert load_settings().public_base_url == "http://mail.proworks.jp"


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_start_up_with_ses_and_an_http_base_url_stops_in_one_line(command: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEGAMI_")}
    env.update(REQUIRED, TEGAMI_PUBLIC_BASE_URL="http://mail.proworks.jp")
    done = subprocess.run(  # noqa: S603  (command is one of the two above)
        [sys.executable, "-m", "app.cli", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "tegami: invalid settings: TEGAMI_PUBLIC_BASE_URL must start with https:// when "
        "TEGAMI_MAIL_BACKEND=ses (RFC 8058 one-click unsubscribe links must be HTTPS)"
    ]
    assert done.stdout == ""
