"""The documentation a user clones: every relative link resolves inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_links_stay_inside_the_repository_and_resolve(doc: Path) -> None:
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(REPO), f"{doc.name} links outside the repository: {target}"
        assert path.exists(), f"{doc.name} links to a missing file: {target}"


def test_the_protocol_is_in_the_repository_and_the_readme_links_it() -> None:
    protocol = (REPO / "docs" / "protocol.md").read_text()
    for fact in ("45,000", "9,754", "1,051", "844 / 169 / 38", "arXiv:2110.00476", "0.9999"):
        assert fact in protocol
    assert "(docs/protocol.md)" in (REPO / "README.md").read_text()


def test_scale_out_is_its_own_extra_and_ci_installs_it() -> None:
    """The issue's 6.6 GB quickstart: Ray is not in the default or dev install; the tests that
    need it get it from CI's install line, which the README states."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    extras = extras["optional-dependencies"]
    assert not [r for r in extras["dev"] if r.startswith("ray")]
    assert [r for r in extras["ray"] if r.startswith("ray")]
    assert "pip install -q -e '.[dev,ray]'" in (root / ".ci" / "run").read_text()
    readme = (root / "README.md").read_text()
    assert "`.[dev,ray]`" in readme and "download.pytorch.org/whl/cpu" in readme


def test_the_ui_screenshots_were_made_by_the_current_commands() -> None:
    """The issue: the pictures showed 16 runs of an older grid. Each carries the digest of the
    commands that made it; changing the commands without making them again fails here."""
    import importlib.util

    from PIL import Image

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("ui_screenshots", root / "docs/ui_screenshots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in module.PICTURES:
        with Image.open(root / "docs" / name) as picture:
            assert picture.text.get(module.DIGEST_KEY) == module.commands_digest(), name
    # the pictures are of the address a study prints: the view ltexp saves
    view = module.commands("http://ui", "#/experiments/1/runs?x")["ui_runs_table.png"][-1]
    assert view == "http://ui/#/experiments/1/runs?x"


@pytest.mark.slow
def test_the_gpu_check_runs_its_steps_on_the_cpu(tmp_path: Path) -> None:
    """scripts/gpu_check.py --smoke: the bench, a cell with bf16 and channels_last, a kill -9
    and resume, written to one JSON (on a GPU the same steps run the protocol's models)."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "smoke.json"
    done = subprocess.run(
        [sys.executable, str(root / "scripts" / "gpu_check.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["device"] == "cpu"
    assert report["bench"]["results"][0]["model"] == "tiny_cnn"
    assert report["cell"]["loaded_output_shape"] == "(2, 10)"
    resume = report["resume"]
    # the checkpoint of every epoch in the store was written before its metrics were sent
    assert resume["resumed_from_epoch"] >= resume["killed_after_epoch"] >= 1


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--cells", "0"], "'0' is not a whole number of cells, 1 or more"),
        (["--cells", "-3"], "'-3' is not a whole number of cells, 1 or more"),
        (["--folder", "no/such/folder"], "--folder no/such/folder is not a folder"),
    ],
)
def test_the_store_floor_refuses_bad_arguments_before_storing_anything(
    tmp_path: Path, args: list[str], said: str
) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "scripts" / "store_floor.py"
    done = subprocess.run(
        [sys.executable, str(script), *args], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 2 and said in done.stderr.splitlines()[-1], done.stderr
    assert done.stdout == "" and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_store_floor_stores_what_it_measures(tmp_path: Path) -> None:
    """scripts/store_floor.py (docs/performance.md): each measured cell is a train run with a
    nested evaluate run and a registered version, and the JSON names each part's seconds."""
    import json
    import subprocess
    import sys

    import mlflow

    script = Path(__file__).resolve().parent.parent / "scripts" / "store_floor.py"
    done = subprocess.run(
        [sys.executable, str(script), "--cells", "2", "--folder", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seconds = json.loads(done.stdout.strip().splitlines()[-1])
    parts = ("train run", "registration", "evaluate run")
    assert set(seconds) == {*parts, "cell"} and all(seconds[p] > 0 for p in parts)
    assert seconds["cell"] == pytest.approx(sum(seconds[p] for p in parts), abs=1e-3)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("store-floor").experiment_id])
    assert len(runs) == 6  # the uncounted first cell and two measured, each two runs
    assert len([r for r in runs if "mlflow.parentRunId" in r.data.tags]) == 3
    assert len(client.search_model_versions("name = 'store-floor'")) == 3
