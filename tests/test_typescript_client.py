"""The TypeScript client (openapi/typescript) against a real `tegami serve`: its own tests
(`npm test`) run with TEGAMI_URL and an app and an admin key in the environment.

Needs Node 20+ and the package's node_modules (`npm ci` in openapi/typescript, as .ci/run does);
skipped with a message without them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.served import PROJECT, ServedTegami

PACKAGE = PROJECT / "openapi" / "typescript"


@pytest.fixture
def served(database_url: str, engine: AsyncEngine, tmp_path: Path) -> Iterator[ServedTegami]:
    tegami = ServedTegami(database_url, tmp_path)
    try:
        yield tegami.start()
    finally:
        tegami.stop()


def test_typescript_client_against_tegami_serve(served: ServedTegami) -> None:
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node/npm not installed: the TypeScript client's tests need Node 20+")
    if not (PACKAGE / "node_modules").is_dir():
        pytest.skip("openapi/typescript/node_modules missing: run `npm ci` in openapi/typescript")
    env = {
        **os.environ,
        "TEGAMI_URL": served.url,
        "TEGAMI_KEY": served.cli("api-key", "create", "nextjs-app"),
        "TEGAMI_ADMIN_KEY": served.cli("api-key", "create", "ops", "--scope", "admin"),
    }
    run = subprocess.run(  # noqa: S603 (npm, our package's test script)
        [npm, "test"], cwd=PACKAGE, env=env, capture_output=True, text=True, timeout=180
    )
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-3000:]
    # The live tests ran (not skipped for want of a server).
    assert "# SKIP" not in run.stdout and "# fail 0" in run.stdout, run.stdout[-3000:]
    assert "ok 1 - each type of mail is accepted" in run.stdout, run.stdout[-3000:]
