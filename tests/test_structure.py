"""The layering CONTRIBUTING.md promises: a step imports no other step, only the study engine
(``ltexp/study/``) and the CLI chain steps, and every module imports only from its own layer or
lower ones."""

from __future__ import annotations

import ast
from pathlib import Path

LTEXP = Path(__file__).resolve().parent.parent / "ltexp"


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


def test_steps_import_no_step_and_only_the_study_engine_chains_them() -> None:
    steps = {p.stem for p in (LTEXP / "steps").glob("*.py")} - {"__init__"}
    assert {"prepare_data", "train", "evaluate", "aggregate", "decouple", "ensemble"} <= steps
    for path in sorted(LTEXP.rglob("*.py")):
        imported = _imported_steps(path)
        where = path.relative_to(LTEXP)
        if where.parts[0] == "steps":
            assert imported == set(), f"step {path.stem} imports the steps {imported}"
        elif where.parts[0] != "study" and path.name != "cli.py":
            assert imported == set(), f"{where} imports the steps {imported}"


# The layers of ltexp, lowest first: a module imports only from its own layer or lower ones (also
# inside functions: a deferred import is still a dependency). A package's modules are in its
# layer unless a module is named on its own (``ltexp.schema`` is only names).
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
    ("schema",),
    ("cells", "tuning"),
    ("training",),
    ("evaluation", "statistics"),
    ("tracking",),
    ("report",),
    ("bench", "rehearsal"),
    ("steps",),
    ("study",),
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


def _module_of(path: Path) -> str:
    parts = path.relative_to(LTEXP).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def test_no_modules_import_each_other_in_a_circle() -> None:
    """A circle of imports (``config/``'s sections and loading once were one) works only by
    deferring an import into a function, and leaves no module that can be read first."""
    graph = {_module_of(p): _imports(p) for p in LTEXP.rglob("*.py")}
    circles, state = [], {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if target == module or target not in graph:
                continue
            if state.get(target) == "open":
                circles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []
