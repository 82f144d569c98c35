"""Each table has one owner: only its module holds statements that write it.

Read from the source: SQL text (``INSERT INTO t``, ``UPDATE t``, ``DELETE FROM t``, in any
string) and SQLAlchemy writes (``insert(Model)``, ``update(Model)``, ``delete(Model)``,
``session.add(Model(...))``). The import contracts are in pyproject.toml (``lint-imports``);
below, the packages of app import each other in one direction only, lazy imports included.
"""

from __future__ import annotations

import ast
import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

from app.db import Base

APP = Path(__file__).resolve().parents[1] / "app"

OWNERS: dict[str, str] = {
    "message": "app/emails/outbox.py",
    "message_event": "app/emails/outbox.py",
    "send_pacer": "app/emails/outbox.py",
    "send_batch": "app/emails/outbox.py",
    "recipient": "app/recipients/service.py",
    "suppression": "app/recipients/service.py",
    "opt_out": "app/recipients/service.py",
    "audit_event": "app/recipients/service.py",
    "sns_message": "app/sns/service.py",
    "api_key": "app/api_keys.py",
    "webhook_delivery": "app/webhooks/deliveries.py",
    "ses_list_removal": "app/recipients/ses_list.py",
}

# Combined statements, each one round trip on a hot path, that write a table of another
# owner. Each is named here with its reason; a new one must be too.
COMBINED: set[tuple[str, str]] = {
    # accept: the recipient row a new mail points to, upserted in the same statement.
    ("app/emails/outbox.py", "recipient"),
}

_SQL_WRITE = re.compile(r"\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+([a-z_]+)", re.IGNORECASE)
_TABLE_OF_MODEL = {
    mapper.class_.__name__: mapper.class_.__tablename__ for mapper in Base.registry.mappers
}


def writes(source: str) -> set[str]:
    """The tables a module's source writes."""
    tables: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            tables |= {m.lower() for m in _SQL_WRITE.findall(node.value)}
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            first = node.args[0] if node.args else None
            if name in ("insert", "update", "delete") and isinstance(first, ast.Name):
                tables.add(_TABLE_OF_MODEL.get(first.id, first.id))
            elif name in ("add", "add_all") and isinstance(first, ast.Call):
                model = getattr(first.func, "id", None)
                if model in _TABLE_OF_MODEL:
                    tables.add(_TABLE_OF_MODEL[model])
    return tables & (set(OWNERS) | set(_TABLE_OF_MODEL.values()))


def _written_by_module() -> dict[str, set[str]]:
    return {
        str(path.relative_to(APP.parent)): writes(path.read_text(encoding="utf-8"))
        for path in sorted(APP.rglob("*.py"))
    }


def test_every_table_has_an_owner() -> None:
    assert set(_TABLE_OF_MODEL.values()) <= set(OWNERS)


def test_only_the_owner_writes_a_table() -> None:
    strays = {
        (module, table)
        for module, tables in _written_by_module().items()
        for table in tables
        if OWNERS.get(table) != module and (module, table) not in COMBINED
    }
    assert strays == set(), "write the table through its owner's verbs (OWNERS above)"


@pytest.mark.parametrize(
    ("source", "tables"),
    [
        ('X = text("UPDATE message SET status = :s")', {"message"}),
        ('X = """\n  INSERT INTO audit_event (a) VALUES (1)"""', {"audit_event"}),
        ("session.add(Suppression(address_hash=h))", {"suppression"}),
        ("stmt = delete(OptOut).where(OptOut.recipient_id == 1)", {"opt_out"}),
        ('X = "SELECT * FROM message WHERE updated_at > now()"', set()),
    ],
)
def test_the_check_sees_each_way_of_writing(source: str, tables: set[str]) -> None:
    assert writes(source) == tables


def imported_packages(source: str) -> set[str]:
    """The top-level packages and modules of app that a module's source imports, wherever the
    import stands (in a function, under TYPE_CHECKING)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name.split(".")[1] for name in names if name.startswith("app.")}


def _package_imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in APP.rglob("*.py"):
        package = path.relative_to(APP).parts[0].removesuffix(".py")
        imported = imported_packages(path.read_text(encoding="utf-8")) - {package}
        graph.setdefault(package, set()).update(imported)
    return graph


def test_no_two_packages_of_app_import_each_other() -> None:
    try:
        tuple(TopologicalSorter(_package_imports()).static_order())
    except CycleError as cycle:
        raise AssertionError(f"packages that import each other: {cycle.args[1]}") from None


@pytest.mark.parametrize(
    ("source", "packages"),
    [
        ("from app.emails import outbox", {"emails"}),
        ("from app import aws", {"aws"}),
        ("def f():\n    import app.reputation.watch", {"reputation"}),
        ("if TYPE_CHECKING:\n    from app.emails.sender import Sender", {"emails"}),
        ("import httpx", set()),
    ],
)
def test_the_cycle_check_sees_each_way_of_importing(source: str, packages: set[str]) -> None:
    assert imported_packages(source) == packages
