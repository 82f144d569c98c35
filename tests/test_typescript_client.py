"""The TypeScript client (openapi/typescript) against a real `tegami serve`: its own tests
(`npm test`) run with TEGAMI_URL and an app and an admin key in the environment; and the packed
tarball installed into a fresh CommonJS project and a fresh ESM project, as an app would.

Needs Node 20+ and the package's node_modules (`npm ci` in openapi/typescript, as .ci/run does);
skipped with a message without them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks.webhooks import Webhook

from tests.served import PROJECT, ServedTegami

PACKAGE = PROJECT / "openapi" / "typescript"


@pytest.fixture
def served(database_url: str, engine: AsyncEngine, tmp_path: Path) -> Iterator[ServedTegami]:
    tegami = ServedTegami(database_url, tmp_path)
    try:
        yield tegami.start()
    finally:
        tegami.stop()


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node/npm not installed: the TypeScript client's tests need Node 20+")
    if not (PACKAGE / "node_modules").is_dir():
        pytest.skip("openapi/typescript/node_modules missing: run `npm ci` in openapi/typescript")
    return npm


def test_typescript_client_against_tegami_serve(served: ServedTegami) -> None:
    npm = _npm()
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


WEBHOOK_SECRET = "whsec_dGVnYW1pLXdlYmhvb2stdGVzdC1zZWNyZXQtMzJieXQ="

# What an app's code does with the package: send a password reset to a real tegami, read it
# back, and verify a signed webhook. The same lines, once required and once imported.
_USE = """
const tegami = createTegamiClient({
  baseUrl: process.env.TEGAMI_URL,
  apiKey: process.env.TEGAMI_KEY,
});
const main = async () => {
  const sent = await tegami.send("password-reset", {
    to: "taro@example.com",
    params: { reset_url: "https://proworks.jp/reset?token=abc" },
  });
  const email = await tegami.getEmail(sent.id);
  const hook = JSON.parse(process.env.WEBHOOK);
  const event = verifyWebhook(hook.body, hook.headers, process.env.WEBHOOK_SECRET);
  console.log(JSON.stringify({ kind: sent.kind, type: email.type, event: event.type }));
};
main().catch((error) => { console.error(error); process.exit(1); });
"""
PROJECTS = {
    "commonjs": (
        "index.js",
        'const { createTegamiClient, verifyWebhook } = require("@proworks/tegami-client");\n',
    ),
    "module": (
        "index.js",
        'import { createTegamiClient, verifyWebhook } from "@proworks/tegami-client";\n',
    ),
}

# The functions the route handlers of docs/ call are the app's own; typed strictly here, so that a
# payload field typed looser than the app's code (a string for an enum) does not compile.
_README_STUBS = """
import type { SuppressionReason } from "@proworks/tegami-client";
declare function findUserByEmail(email: string): Promise<{ id: string; email: string } | null>;
declare function createResetToken(userId: string): Promise<string>;
declare function markEmailUndeliverable(
  userId: string | null, reason: SuppressionReason): Promise<void>;
declare function recordMailProblem(
  emailId: string, kind: "email.bounced" | "email.complained"): Promise<void>;
"""


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(  # noqa: S603 (npm, node and tsc on files this test wrote)
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{args}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


def test_packed_client_works_in_fresh_commonjs_and_esm_projects(
    served: ServedTegami, tmp_path: Path
) -> None:
    npm = _npm()
    _run([npm, "pack", "--pack-destination", str(tmp_path)], PACKAGE)
    (tarball,) = tmp_path.glob("proworks-tegami-client-*.tgz")
    body = json.dumps(
        {
            "type": "webhook.test",
            "timestamp": "2026-12-05T00:00:00.000Z",
            "data": {"message": "hello"},
        }
    )
    signed = Webhook(WEBHOOK_SECRET).sign("msg_1", _now(), body)
    hook = {
        "body": body,
        "headers": {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(int(_now().timestamp())),
            "webhook-signature": signed,
        },
    }
    env = {
        **os.environ,
        "TEGAMI_URL": served.url,
        "TEGAMI_KEY": served.cli("api-key", "create", "fresh-project"),
        "WEBHOOK": json.dumps(hook),
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    for kind, (entry, load) in PROJECTS.items():
        project = tmp_path / kind
        project.mkdir()
        _run([npm, "init", "-y"], project)  # a default project: CommonJS
        if kind == "module":
            _run([npm, "pkg", "set", "type=module"], project)
        _run([npm, "install", "--no-audit", "--no-fund", "--prefer-offline", str(tarball)], project)
        (project / entry).write_text(load + _USE)
        result = json.loads(_run(["node", entry], project, env).strip().splitlines()[-1])
        assert result == {"kind": "accepted", "type": "password-reset", "event": "webhook.test"}, (
            kind
        )

    # The route handlers of docs/ (sending, receiving webhooks), word for word, compile under
    # --strict in the ESM project.
    pages = [PROJECT / "docs" / "api.md", PROJECT / "docs" / "events.md"]
    routes = [r for page in pages for r in re.findall(r"```ts\n(.*?)```", page.read_text(), re.S)]
    assert len(routes) >= 2, "docs/'s TypeScript examples went missing"
    project = tmp_path / "module"
    files = []
    for number, route in enumerate(routes):
        path = project / f"route{number}.ts"
        path.write_text(route + _README_STUBS)
        files.append(path.name)
    tsc = str(PACKAGE / "node_modules" / ".bin" / "tsc")
    _run(
        [
            tsc,
            "--strict",
            "--noEmit",
            "--skipLibCheck",
            "--target",
            "ES2022",
            "--module",
            "NodeNext",
            "--moduleResolution",
            "NodeNext",
            "--lib",
            "ES2022,DOM",
            "--types",
            "node",
            "--typeRoots",
            str(PACKAGE / "node_modules" / "@types"),
            *files,
        ],
        project,
    )


def _now() -> datetime:
    return datetime.now(UTC)
