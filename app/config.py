"""Settings, read once from the environment (prefix ``TEGAMI_``).

Lists are comma-separated (``TEGAMI_LINK_HOSTS=proworks.jp,www.proworks.jp``).
AWS credentials, region and endpoints come from AWS's own variables.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import time
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]


class MailBackend(StrEnum):
    SES = "ses"
    MAILBOX = "mailbox"


class DatabaseSettings(BaseSettings):
    """What commands that only touch the database need (`tegami api-key ...`)."""

    model_config = SettingsConfigDict(env_prefix="TEGAMI_", extra="ignore", frozen=True)

    database_url: str = Field(repr=False)  # may hold a password
    # Connections each process keeps open, and how many more it may open for a burst (closed
    # after use). Every process (API task, worker task, one-off command) holds its own pool, so
    # pool + overflow times the processes must fit the database's max_connections.
    db_pool_size: int = Field(default=20, ge=1, le=500)
    db_max_overflow: int = Field(default=10, ge=0, le=500)
    # How many tegami processes may run at once (the stack's autoscaling maxima added up), for
    # the start-up check of the connection budget; unset: the check is skipped.
    db_max_processes: int | None = Field(default=None, ge=1)

    @property
    def sqlalchemy_url(self) -> str:
        return to_asyncpg_url(self.database_url)


class GuardSettings(DatabaseSettings):
    """The reputation guard's settings: `tegami held release` reads them to say what the guard
    will do next, with only the database configured."""

    reputation_guard: bool = True
    reputation_window: int = Field(default=1000, ge=1)
    reputation_min_sends: int = Field(default=200, ge=1)


class Settings(GuardSettings):
    # Required: the service cannot run safely without them.
    public_base_url: str
    unsubscribe_secret: Annotated[list[SecretStr], NoDecode]
    address_hash_secret: SecretStr
    link_hosts: CommaList
    sender_postal_address: str
    sender_contact: str

    from_address: str = "PRO WORKS <noreply@proworks.jp>"
    sender_name: str = "PRO WORKS"
    mail_backend: MailBackend = MailBackend.SES
    mailbox_dir: Path = Path(".tegami/mailbox")
    ses_configuration_set: str | None = None
    max_send_rate: float | None = Field(default=None, gt=0)
    send_concurrency: int = Field(default=32, ge=1, le=1000)
    # How long a claimed mail stays one worker's before another may take it over (a worker
    # that died). Claims hold about a second of sending, so this only needs to outlast one
    # slow SES call.
    send_lease_seconds: float = Field(default=60.0, ge=2.0, le=3600.0)
    sns_topic_arns: CommaList = []
    # HOST[:PORT] that `tegami doctor` and GET /status/setup ask for the domain's records.
    dns_nameserver: str | None = None
    sns_cert_dir: Path | None = None
    sns_max_age_seconds: int = Field(default=3900, ge=0)
    alert_webhook_url: str | None = None
    cloudwatch_emf: bool = False
    # The CloudWatch namespace of the EMF figures (one per stack, so two stacks in one account
    # do not add up in one graph).
    cloudwatch_emf_namespace: str = Field(default="tegami", min_length=1, max_length=255)
    # GET /metrics answers only `Authorization: Bearer <token>` when set (Prometheus's
    # `authorization` / `bearer_token_file`); unset: open, as on a developer's machine.
    metrics_token: SecretStr | None = None
    retention_days: int = Field(default=400, ge=1)
    # An erased address SES could not take off its account suppression list is tried again
    # after this, then at doubling intervals up to an hour (app/recipients/ses_list.py).
    ses_list_retry_seconds: float = Field(default=60.0, gt=0, le=3600)
    run_worker: bool = True
    # Events for the app (app/webhooks): none are recorded while no URL is set. The secret is
    # a comma-separated list of `whsec_` + base64 keys: the first signs; during a rotation the
    # app verifies with all of them.
    webhook_url: str | None = None
    webhook_secret: Annotated[list[SecretStr], NoDecode] = []
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    webhook_concurrency: int = Field(default=8, ge=1, le=100)
    # The retry schedule's first step (the Standard Webhooks schedule starts at 5 s).
    webhook_first_retry_seconds: float = Field(default=5.0, gt=0, le=300)
    # /docs, /redoc and /openapi.json; false serves none of them (the document stays in
    # openapi/openapi.json and `tegami openapi`).
    docs: bool = True
    # The support console (/console); false: every /console path is 404.
    console: bool = True
    # How long a console sign-in lasts.
    console_session_minutes: int = Field(default=480, ge=5, le=7 * 24 * 60)
    # Optional mail due inside this window (`22:00-08:00`, in `timezone`) waits to its end;
    # unset: no quiet hours. Account mail never waits.
    quiet_hours: Annotated[tuple[time, time] | None, NoDecode] = None
    timezone: str = "Asia/Tokyo"

    @field_validator(
        "link_hosts", "sns_topic_arns", "unsubscribe_secret", "webhook_secret", mode="before"
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("quiet_hours", mode="before")
    @classmethod
    def _quiet_window(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_window(value) if value.strip() else None
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (like Asia/Tokyo)") from None
        return value

    @field_validator("unsubscribe_secret")
    @classmethod
    def _secrets_long_enough(cls, value: list[SecretStr]) -> list[SecretStr]:
        if not value:
            raise ValueError("needs at least one secret")
        if any(len(secret.get_secret_value()) < 16 for secret in value):
            raise ValueError("each secret needs at least 16 characters")
        return value

    @field_validator("link_hosts")
    @classmethod
    def _hosts_lowercase(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one host")
        return [host.lower() for host in value]

    @field_validator("public_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for local development)")
        return value.rstrip("/")

    @field_validator("webhook_secret")
    @classmethod
    def _standard_webhooks_secrets(cls, value: list[SecretStr]) -> list[SecretStr]:
        for secret in value:
            if not _is_webhook_secret(secret.get_secret_value()):
                raise ValueError("each secret must be whsec_ followed by base64 (24 bytes or more)")
        return value

    @model_validator(mode="after")
    def _webhooks_complete(self) -> Settings:
        if self.webhook_url is None:
            return self
        if not self.webhook_secret:
            raise ValueError("TEGAMI_WEBHOOK_SECRET is required when TEGAMI_WEBHOOK_URL is set")
        scheme = "https://" if self.mail_backend is MailBackend.SES else ("https://", "http://")
        if not self.webhook_url.startswith(scheme):
            raise ValueError(
                "TEGAMI_WEBHOOK_URL must start with https:// when TEGAMI_MAIL_BACKEND=ses "
                "(events name addresses)"
                if self.mail_backend is MailBackend.SES
                else "TEGAMI_WEBHOOK_URL must start with https:// or http://"
            )
        return self

    @model_validator(mode="after")
    def _https_for_ses(self) -> Settings:
        # RFC 8058: the one-click List-Unsubscribe URI must be HTTPS, or mailbox providers
        # ignore it. Real mail goes out only through SES; the mailbox backend stays local.
        if self.mail_backend is MailBackend.SES and not self.public_base_url.startswith("https://"):
            raise ValueError(
                "TEGAMI_PUBLIC_BASE_URL must start with https:// when TEGAMI_MAIL_BACKEND=ses "
                "(RFC 8058 one-click unsubscribe links must be HTTPS)"
            )
        return self


_WINDOW = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)")


def parse_window(value: str) -> tuple[time, time]:
    """``22:00-08:00`` as (start, end); the window may cross midnight."""
    match = _WINDOW.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{value!r} must be HH:MM-HH:MM, like 22:00-08:00")
    start = time(int(match[1]), int(match[2]))
    end = time(int(match[3]), int(match[4]))
    if start == end:
        raise ValueError(f"{value!r} starts and ends at the same time")
    return start, end


def _is_webhook_secret(value: str) -> bool:
    if not value.startswith("whsec_"):
        return False
    try:
        key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(key) >= 24


def to_asyncpg_url(url: str) -> str:
    """Accept the plain ``postgresql://user:pass@host/db`` form that RDS shows.

    asyncpg spells libpq's ``sslmode`` as ``ssl``; the rest of the URL passes through.
    """
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+asyncpg://" + url[len(prefix) :]
            break
    else:
        raise ValueError("TEGAMI_DATABASE_URL must start with postgresql://")
    return url.replace("sslmode=", "ssl=")


class SettingsError(Exception):
    """Settings are missing or wrong; the message names each setting."""


def load_settings() -> Settings:
    try:
        return Settings()  # filled from the environment
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None


def load_database_settings() -> DatabaseSettings:
    try:
        return DatabaseSettings()  # filled from the environment
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        if not error["loc"]:
            # A check across settings: its message names them itself.
            lines.append(str(error.get("ctx", {}).get("error", error["msg"])))
            continue
        name = "TEGAMI_" + str(error["loc"][0]).upper()
        problem = "is required" if error["type"] == "missing" else error["msg"]
        lines.append(f"{name} {problem}")
    if len(lines) == 1:
        return f"invalid settings: {lines[0]}"
    return "invalid settings:\n  " + "\n  ".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
