"""The layering CONTRIBUTING.md promises: a step imports no other step (only the orchestrators,
study and tune, chain steps), and the library below the steps imports no step at all."""

from __future__ import annotations

import ast
from pathlib import Path

LTEXP = Path(__file__).resolve().parent.parent / "ltexp"
STEPS = {"prepare_data", "train", "evaluate", "aggregate", "decouple"}
ORCHESTRATORS = {"study", "tune"}


def _imported_steps(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("ltexp.steps.")
        ):
            found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("ltexp.steps.")}
    return found


def test_steps_import_no_step_and_the_library_imports_none() -> None:
    for path in sorted(LTEXP.rglob("*.py")):
        name = path.stem
        imported = _imported_steps(path)
        if path.parent.name == "steps" and name in ORCHESTRATORS:
            assert imported <= STEPS | ORCHESTRATORS, path
        elif path.parent.name == "steps":
            assert imported == set(), f"step {name} imports {imported}"
        elif path.name != "cli.py":
            assert imported == set(), f"{path.relative_to(LTEXP)} imports the steps {imported}"
