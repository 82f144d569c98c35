"""The documentation follows the code: every setting, command, route, error code and webhook
event is in its page of docs/, and no relative link of a Markdown file points to a missing file
or heading.

Pure: reads files and the command's parser, starts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from pydantic_core import PydanticUndefined

from app.cli import build_parser
from app.config import Settings
from app.models import MailType

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Directories whose Markdown is not ours (installed packages, caches, build output).
NOT_OURS = {".git", ".venv", "node_modules", ".tegami", "build", "dist", "tests/artifacts"}


def _code_free(text: str) -> str:
    """The text without fenced code blocks and inline code (links and headings in them are
    examples, not the page's own)."""
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def _table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row (header and rule rows included); `\\|` is a pipe
    inside a cell."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
            rows.append([cell.strip().replace("\\|", "|") for cell in cells])
    return rows


# -- settings ----------------------------------------------------------------------------------


def _documented_settings() -> dict[str, str]:
    """``TEGAMI_X`` → its default cell, from docs/settings.md's table."""
    rows = _table_rows((DOCS / "settings.md").read_text())
    return {
        match[1]: row[1]
        for row in rows
        if len(row) >= 3 and (match := re.fullmatch(r"`(TEGAMI_[A-Z0-9_]+)`", row[0]))
    }


def _as_documented(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


def test_every_setting_is_documented_and_nothing_stale() -> None:
    documented = _documented_settings()
    settings = {f"TEGAMI_{name.upper()}": field for name, field in Settings.model_fields.items()}
    assert sorted(set(settings) - set(documented)) == [], "settings missing from docs/settings.md"
    assert sorted(set(documented) - set(settings)) == [], "docs/settings.md names gone settings"
    for name, field in settings.items():
        cell = documented[name]
        if field.default is PydanticUndefined and field.default_factory is None:
            assert cell.startswith("required"), f"{name} is required: {cell!r}"
        elif field.default not in (None, PydanticUndefined) and field.default != []:
            wanted = f"`{_as_documented(field.default)}`"
            assert wanted in cell, f"{name}'s default is {wanted}, docs say {cell!r}"


# -- commands ----------------------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    children = _subcommands(parser)
    if not children:
        yield path, parser
    for name, child in children.items():
        yield from _leaves(child, (*path, name))


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def _documented_commands() -> dict[tuple[str, ...], str]:
    """Each row of docs/commands.md by the command it names (words the parser knows), with
    its synopsis (the first cell)."""
    root = build_parser()
    rows: dict[tuple[str, ...], str] = {}
    for row in _table_rows((DOCS / "commands.md").read_text()):
        synopsis = row[0]
        if not synopsis.startswith("`tegami ") or synopsis.startswith("`tegami --"):
            continue
        parser, path = root, tuple[str, ...]()
        for word in synopsis.strip("`").split()[1:]:
            children = _subcommands(parser)
            if word not in children:
                break
            parser, path = children[word], (*path, word)
        assert path, f"docs/commands.md: {synopsis} is no tegami command"
        assert not _subcommands(parser), f"docs/commands.md: {synopsis} is not a whole command"
        assert path not in rows, f"docs/commands.md: two rows for tegami {' '.join(path)}"
        rows[path] = synopsis
    return rows


def test_every_command_and_option_is_documented_and_nothing_stale() -> None:
    documented = _documented_commands()
    commands = dict(_leaves(build_parser()))
    missing = sorted(" ".join(path) for path in commands if path not in documented)
    assert missing == [], "commands missing from docs/commands.md"
    for path, synopsis in documented.items():
        options = _options(commands[path])
        named = set(re.findall(r"--[a-z][a-z-]*", synopsis))
        assert sorted(options - named) == [], f"tegami {' '.join(path)}: options not in docs"
        assert sorted(named - options) == [], f"tegami {' '.join(path)}: docs name gone options"


# -- routes and webhook events -----------------------------------------------------------------


def _openapi() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    return document


def test_every_route_is_in_docs_api() -> None:
    page = (DOCS / "api.md").read_text()
    types = "|".join(re.escape(kind.value) for kind in MailType)
    missing = []
    for path in _openapi()["paths"]:
        shape = re.sub(rf"^/emails/({types})(?=/|$)", "/emails/<type>", path)
        if path not in page and shape not in page:
            missing.append(path)
    assert missing == [], "routes missing from docs/api.md"


def test_every_error_code_is_in_docs_api() -> None:
    page = (DOCS / "api.md").read_text()
    codes = _openapi()["components"]["schemas"]["ErrorCode"]["enum"]
    assert [code for code in codes if f"`{code}`" not in page] == [], "codes missing from api.md"


def test_every_webhook_event_and_field_is_in_docs_events() -> None:
    page = (DOCS / "events.md").read_text()
    document = _openapi()
    schemas = document["components"]["schemas"]

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        return resolve(schemas[ref.rsplit("/", 1)[1]]) if ref else schema

    missing = []
    for kind, operations in document["webhooks"].items():
        if f"`{kind}`" not in page:
            missing.append(kind)
        body = operations["post"]["requestBody"]["content"]["application/json"]["schema"]
        data = resolve(resolve(body)["properties"]["data"])
        missing += [f"{kind}: {field}" for field in data["properties"] if f"`{field}`" not in page]
    assert missing == [], "webhook events or fields missing from docs/events.md"


# -- links -------------------------------------------------------------------------------------


def _markdown_files() -> list[Path]:
    found = []
    for directory, subdirectories, files in os.walk(ROOT):
        here = Path(directory)
        subdirectories[:] = [
            name
            for name in subdirectories
            if name not in NOT_OURS
            and not name.endswith(".egg-info")
            and not name.startswith(".")
            and (here / name).relative_to(ROOT).as_posix() not in NOT_OURS
        ]
        found += [here / name for name in files if name.endswith(".md")]
    return sorted(found)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, `-1`, `-2` for
    repeats."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", _code_free_headings(path), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        candidate, repeat = slug, 0
        while candidate in anchors:
            repeat += 1
            candidate = f"{slug}-{repeat}"
        anchors.add(candidate)
    return anchors


def _code_free_headings(path: Path) -> str:
    # Headings keep their inline code's text (GitHub slugs `/metrics` as "metrics").
    text = path.read_text()
    return re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.MULTILINE | re.DOTALL)


MARKDOWN = _markdown_files()


def test_the_readme_and_docs_are_among_the_checked_files() -> None:
    checked = {path.relative_to(ROOT).as_posix() for path in MARKDOWN}
    assert {"README.md", "docs/api.md", "deploy/README.md"} <= checked


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_relative_links_point_to_files_and_headings_that_exist(page: Path) -> None:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _code_free(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:: not ours to check
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    assert broken == [], f"{page.relative_to(ROOT)}: broken links"
