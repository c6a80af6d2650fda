"""Import every module of a package, so that a module's registrations take effect by its mere
presence: adding a loss, a dataset or a backbone is one new file, with no list to edit."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable


def import_submodules(package: str, path: Iterable[str], skip: tuple[str, ...] = ()) -> None:
    """Import ``package.<name>`` for every module under ``path`` (alphabetical), except ``skip``."""
    for module in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if module.name not in skip and not module.name.startswith("_"):
            importlib.import_module(f"{package}.{module.name}")
