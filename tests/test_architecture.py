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


# -- a mail's status changes only through app.emails.lifecycle's transitions -----------------

# Where a mail's status may be set: the outbox's one apply, which takes lifecycle's
# Transitions, and the claim, which marks the mails it takes `sending` (the lease a worker
# holds while it sends, fenced by the attempt, not a rule's outcome). A new one is a second
# rule: write a transition in lifecycle.py and hand it to outbox.apply instead.
STATUS_SETTERS: set[tuple[str, str]] = {
    ("app/emails/outbox.py", "_apply_fragment"),
    ("app/emails/outbox.py", "_CLAIM"),
}

_MESSAGE_SET = re.compile(
    r"\bUPDATE\s+message\b(?:\s+AS\s+\w+)?\s+SET\s+((?:(?!\b(?:WHERE|FROM|RETURNING)\b).)*)",
    re.IGNORECASE | re.DOTALL,
)
_SETS_STATUS = re.compile(r"(?:^|,)\s*status\s*=", re.IGNORECASE)


def _updates_message(node: ast.AST) -> bool:
    """``node`` is a call chain that starts with ``update(Message)``."""
    while isinstance(node, ast.Call | ast.Attribute):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None)
            first = node.args[0] if node.args else None
            if name == "update" and isinstance(first, ast.Name) and first.id == "Message":
                return True
            node = node.func
        else:
            node = node.value
    return False


def _sets_status(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return any(_SETS_STATUS.search(m) for m in _MESSAGE_SET.findall(node.value))
    if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "values":
        keys = [k.arg for k in node.keywords]
        return "status" in keys and _updates_message(node.func)
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Attribute) and t.attr == "status" for t in node.targets)
    return False


def status_setters(source: str) -> set[str]:
    """The module-level names (functions, constants) whose code sets a mail's status."""
    found: set[str] = set()
    for statement in ast.parse(source).body:
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            name = statement.name
        elif isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Name):
            name = statement.targets[0].id
        else:
            name = "<module>"
        if any(_sets_status(node) for node in ast.walk(statement)):
            found.add(name)
    return found


def test_a_mails_status_is_set_only_through_the_outboxs_apply() -> None:
    setters = {
        (str(path.relative_to(APP.parent)), name)
        for path in sorted(APP.rglob("*.py"))
        for name in status_setters(path.read_text(encoding="utf-8"))
    }
    assert setters == STATUS_SETTERS


def test_the_apply_takes_lifecycles_transitions() -> None:
    import typing

    from app.emails import outbox
    from app.emails.lifecycle import Transition

    assert typing.get_type_hints(outbox.Change)["transition"] is Transition
    assert typing.get_type_hints(outbox.apply_to)["transition"] is Transition
    changes = typing.get_type_hints(outbox.apply)["changes"]
    assert typing.get_args(changes) == (outbox.Change,)


@pytest.mark.parametrize(
    ("source", "setters"),
    [
        ('X = text("UPDATE message SET status = :s WHERE id = :id")', {"X"}),
        ('X = """\n  UPDATE message AS m\n  SET attempts = 1, status = \'sending\'"""', {"X"}),
        ("def f():\n    return update(Message).where(w).values(status=s)", {"f"}),
        ("async def f(m):\n    m.status = 'sent'", {"f"}),
        ("X = \"UPDATE message AS m SET last_error = NULL WHERE m.status = 'sent'\"", set()),
        ('X = "UPDATE send_pacer SET status = 1"', set()),
        ("def f():\n    return update(WebhookDelivery).values(status=s)", set()),
    ],
)
def test_the_status_check_sees_each_way_of_setting_it(source: str, setters: set[str]) -> None:
    assert status_setters(source) == setters


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
