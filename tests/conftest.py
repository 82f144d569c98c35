"""Shared fixtures: a real PostgreSQL (migrated once), moto's SES over HTTP, the app.

PostgreSQL: ``TEGAMI_TEST_DATABASE_URL`` when set (a fresh database is created beside it),
otherwise an embedded server from ``pgserver``. SES: ``moto.server.ThreadedMotoServer``
reached through ``AWS_ENDPOINT_URL``, exactly as production reaches SES.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import boto3
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api_keys import create_key
from app.config import MailBackend, Settings
from app.db import create_engine, migrate
from app.main import create_app
from app.models import ApiKeyScope
from app.sns.signature import make_signing_identity
from tests.fake_ses import FakeSes
from tests.ses import MotoSes
from tests.sns_messages import CERT_NAME, TOPIC, Sns

TABLES = (
    "api_key, recipient, suppression, opt_out, message, message_event, audit_event, "
    "sns_message, send_pacer, webhook_delivery, send_batch, ses_list_removal"
)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


async def _admin(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh, migrated database for this test run, dropped afterwards."""
    server = None
    base = os.environ.get("TEGAMI_TEST_DATABASE_URL")
    if not base:
        import pgserver

        # Short path: PostgreSQL's socket path must stay under ~100 characters.
        pgdata = tempfile.mkdtemp(prefix="tgm-pg-")
        server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        base = server.get_uri()
    name = f"tegami_test_{secrets.token_hex(4)}"
    asyncio.run(_admin(base, f'CREATE DATABASE "{name}"'))
    url = _with_database(base, name)
    migrate(url)
    yield url
    asyncio.run(_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    if server is not None:
        server.cleanup()


@pytest.fixture(scope="session")
def moto_ses() -> Iterator[MotoSes]:
    ses = MotoSes()
    ses.start()
    saved = {k: os.environ.get(k) for k in ses.environment()}
    os.environ.update(ses.environment())
    yield ses
    ses.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def ses(moto_ses: MotoSes) -> MotoSes:
    """moto's SES, emptied, with proworks.jp verified."""
    moto_ses.ensure_running()
    moto_ses.reset()
    boto3.client("sesv2", **moto_ses.client_kwargs()).create_email_identity(
        EmailIdentity="proworks.jp"
    )
    return moto_ses


@pytest.fixture
def ses_account(ses: MotoSes, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSes]:
    """SES's account suppression list (which moto lacks) in front of moto's SES: SES v2 calls
    the fake does not speak, and the mails it accepts, go on to moto. Set up before the app
    starts."""
    fake = FakeSes(proxy_to=ses.endpoint).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SESV2", fake.endpoint)
    yield fake
    fake.stop()


@pytest.fixture
def ses_account_for_the_app(request: pytest.FixtureRequest) -> FakeSes | None:
    """``ses_account`` for a test that reaches the database or SES (set up first when autouse,
    so the app's SES client goes through it); nothing for a pure test, which starts no server."""
    if not {"database_url", "ses"} & set(request.fixturenames):
        return None
    fake: FakeSes = request.getfixturevalue("ses_account")
    return fake


def make_settings(database_url: str = "postgresql://unused/none", **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "public_base_url": "https://mail.proworks.jp",
        "unsubscribe_secret": ["test-unsubscribe-secret-0123456789"],
        "address_hash_secret": "test-address-hash-secret-0123456789",
        "link_hosts": ["proworks.jp", "*.proworks.jp"],
        "sender_postal_address": "〒100-0001 東京都千代田区千代田1-1",
        "sender_contact": "support@proworks.jp",
        "max_send_rate": 1000.0,
        "run_worker": False,
        "mail_backend": MailBackend.SES,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """The test database, emptied before each test."""
    engine = create_engine(Settings.model_construct(database_url=database_url).sqlalchemy_url)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    yield engine
    await engine.dispose()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


AppFactory = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def start_app(
    engine: AsyncEngine, database_url: str, ses: MotoSes
) -> AsyncIterator[AppFactory]:
    """Start the app (lifespan included) with settings overrides; returns an HTTP client."""
    stack: list[Any] = []

    async def start(settings: Settings | None = None, **overrides: Any) -> httpx.AsyncClient:
        """With ``settings`` as given (say, built past their validation), else overrides."""
        overrides.setdefault("database_url", database_url)
        app = create_app(settings or make_settings(**overrides))
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        stack.append(lifespan)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="https://mail.proworks.jp"
        )
        client.app = app  # type: ignore[attr-defined]
        stack.append(client)
        return client

    yield start
    for item in reversed(stack):
        if isinstance(item, httpx.AsyncClient):
            await item.aclose()
        else:
            await item.__aexit__(None, None, None)


@pytest.fixture
async def client(start_app: AppFactory) -> httpx.AsyncClient:
    return await start_app()


@pytest.fixture
async def api_key(engine: AsyncEngine) -> str:
    """An admin key (every route); tests of scopes make their own."""
    from app.db import create_sessionmaker

    async with create_sessionmaker(engine)() as session:
        key = await create_key(
            session, name=f"test-{secrets.token_hex(3)}", scope=ApiKeyScope.ADMIN
        )
        await session.commit()
    return key


@pytest.fixture
def auth(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


@pytest.fixture(scope="session")
def identity() -> tuple[bytes, bytes]:
    """A throwaway SNS signing key and certificate (served through TEGAMI_SNS_CERT_DIR)."""
    return make_signing_identity(common_name="sns.ap-northeast-1.amazonaws.com")


@pytest.fixture
async def sns(start_app: AppFactory, identity: tuple[bytes, bytes], tmp_path: Path) -> Sns:
    """The app with SNS verification set up for the test key and topic; posts as SNS does."""
    cert_dir = tmp_path / "sns-certs"
    cert_dir.mkdir()
    (cert_dir / CERT_NAME).write_bytes(identity[1])
    client = await start_app(sns_cert_dir=cert_dir, sns_topic_arns=[TOPIC])
    return Sns(client, identity[0])
