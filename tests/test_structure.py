"""The layering CONTRIBUTING.md promises: a step imports no other step (only the orchestrators,
study and tune, chain steps), and the library below the steps imports no step at all."""

from __future__ import annotations

import ast
from pathlib import Path

LTEXP = Path(__file__).resolve().parent.parent / "ltexp"
STEPS = {"prepare_data", "train", "evaluate", "aggregate", "decouple", "ensemble"}
ORCHESTRATORS = {"study", "tune", "plan"}  # plan: what study would do, without doing it


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


# The layers of ltexp, lowest first: a module imports only from its own layer or lower ones (also
# inside functions: a deferred import is still a dependency). A package's modules are in its
# layer unless a module is named on its own (``ltexp.tracking.schema`` is only names).
LAYERS = (
    (
        "errors",
        "discover",
        "progress",
        "resources",
        "accelerator",
        "checkpoint",
        "distributed",
        "timing",
        "locks",
        "textfiles",
        "markdown",
    ),
    ("data", "losses", "models"),
    ("config",),
    ("tracking.schema",),
    ("cells", "tuning"),
    ("training",),
    ("evaluation", "statistics"),
    ("tracking",),
    ("report",),
    ("executors", "bench", "rehearsal"),
    ("steps",),
    ("cli", "__main__", ""),
)


def _layer(module: str) -> int:
    """The layer of ``ltexp.<module>``: the longest name of LAYERS it is, or is inside."""
    best, found = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            inside = module == name or module.startswith(f"{name}.") or name == ""
            if inside and len(name) > best:
                best, found = len(name), i
    assert found is not None, module
    return found


def _imports(path: Path) -> set[str]:
    """The ltexp modules ``path`` imports (relative to ``ltexp``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ltexp"):
            base = node.module.removeprefix("ltexp").removeprefix(".")
            for alias in node.names:  # from ltexp.tracking import schema: the module schema
                sub = f"{base}.{alias.name}".lstrip(".")
                folder = LTEXP.joinpath(*sub.split("."))
                is_module = folder.with_suffix(".py").is_file() or folder.is_dir()
                found.add(sub if is_module else base)
        elif isinstance(node, ast.Import):
            found |= {
                a.name.removeprefix("ltexp.") for a in node.names if a.name.startswith("ltexp.")
            }
    return found


def test_imports_point_down_the_layers_only() -> None:
    upward = []
    for path in sorted(LTEXP.rglob("*.py")):
        parts = path.relative_to(LTEXP).with_suffix("").parts
        module = ".".join(p for p in parts if p != "__init__")
        mine = _layer(module)
        for target in _imports(path):
            if _layer(target) > mine:
                upward.append(f"{module} -> {target}")
    assert upward == []
