"""openapi/openapi.json is what the app serves.

Regenerate with `tegami openapi --output openapi/openapi.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

from app.serve import export_openapi

COMMITTED = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"


def test_committed_openapi_matches_the_app() -> None:
    assert json.loads(COMMITTED.read_text()) == json.loads(export_openapi()), (
        "openapi/openapi.json is stale: run `tegami openapi --output openapi/openapi.json`"
    )
