"""The bench's figures, a module each, found here by ``discover``: adding a figure is adding a
module. Each has

- ``NUMBER``: its place in the report (and in a run: in that order);
- ``measure(profile, logs, first) -> dict``: its runs for the version being measured
  (``runner.ACTIVE``), series and every run's ``details``;
- ``report_rows(found, profile) -> list[Row]``: its lines of the figures table;
- ``how(profile) -> str``: how it is measured, a paragraph of the report.

The module's name is the figure's name for ``--only``.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def discover() -> dict[str, ModuleType]:
    """Every figure by name, in the report's order."""
    modules = [
        importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
    ]
    return {
        module.__name__.rsplit(".", 1)[1]: module
        for module in sorted(modules, key=lambda m: m.NUMBER)
    }
