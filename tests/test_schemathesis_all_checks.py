"""schemathesis with all of its checks (`st run --checks all`), every phase (examples,
coverage, fuzzing, stateful), over every operation of openapi/openapi.json, against a real
`tegami serve` with an admin API key: what CI runs to hold the contract and the service to
each other. Per-operation allowances are in tests/schemathesis.toml, each with its reason.

Bounded (``--max-examples``) so that it runs in about half a minute.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.served import PROJECT, ServedTegami

MAX_EXAMPLES = 15


@pytest.fixture
def served(database_url: str, engine: AsyncEngine, tmp_path: Path) -> Iterator[ServedTegami]:
    tegami = ServedTegami(database_url, tmp_path)
    try:
        yield tegami.start()
    finally:
        tegami.stop()


def test_schemathesis_with_all_checks_finds_nothing(served: ServedTegami, tmp_path: Path) -> None:
    key = served.cli("api-key", "create", "schemathesis", "--scope", "admin")
    config = str(PROJECT / "tests" / "schemathesis.toml")
    run = subprocess.run(  # noqa: S603 (schemathesis's CLI, our arguments)
        [
            *(sys.executable, "-m", "schemathesis.cli", "--config-file", config, "run"),
            *("openapi/openapi.json", "--url", served.url, "--checks", "all"),
            *("-H", f"Authorization: Bearer {key}", "--max-examples", str(MAX_EXAMPLES)),
            *("--seed", "1", "--continue-on-failure", "--report-dir", str(tmp_path / "reports")),
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-3000:]
    # Every operation of the document was run.
    assert re.search(r"Operations:\s+(\d+) selected / \1 total", run.stdout), run.stdout[:2000]
