"""The README's Quickstart and Running-the-study commands, read from the README and run one after
another as a user types them, on a copy of the repository: the study, its report, the champion
loaded in a fresh Python, tested again, the MLflow UI, and the protocol's commands offline."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from tests.conftest import REPO, free_port, system_tool

pytestmark = pytest.mark.slow
INSTALL = "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[dev]'"
# the quickstart's study, on a reduced demo grid (the README runs all of it)
REDUCED_GRID = "-P models=tiny_cnn -P losses=ce,bs -P epochs=2 -P system_metrics=false"


def readme_commands(section: str) -> list[str]:
    """The lines of the first ``bash`` block of a README section."""
    text = (REPO / "README.md").read_text()
    body = text.split(f"\n## {section}", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", body, re.S)
    assert block, f"README section {section!r} has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository as a user gets it: its files (tracked or new, not ignored), nothing built."""
    dest = tmp_path_factory.mktemp("journey") / "ltexp"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def user_env(clone: Path) -> dict[str, str]:
    """An activated virtual environment, a home of its own (empty caches), and no network."""
    home = clone.parent / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LTEXP_"))}
    proxy = "http://127.0.0.1:9"  # nothing listens: every download fails at once
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        VIRTUAL_ENV=str(Path(sys.executable).parent.parent),
        HOME=str(home),
        http_proxy=proxy,
        https_proxy=proxy,
        HTTP_PROXY=proxy,
        HTTPS_PROXY=proxy,
        no_proxy="127.0.0.1,localhost",
        HF_HUB_OFFLINE="1",
    )
    return env


def run(line: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def store_runs(clone: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{clone / 'mlflow.db'}")
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_the_readme_journey(clone: Path, user_env: dict[str, str]) -> None:
    quickstart = readme_commands("Quickstart")
    assert quickstart[0] == INSTALL  # this test runs in such an environment (so does .ci/run)
    env = dict(user_env)
    ui = None
    results_view = ""  # the study prints it; the UI opens it
    try:
        for line in quickstart[1:]:
            words = shlex.split(line)
            if words[0] == "export":
                key, _, value = words[1].partition("=")
                env[key] = value
            elif words[:2] == ["mlflow", "ui"]:
                port = free_port()
                ui = subprocess.Popen(
                    [*words, "--host", "127.0.0.1", "--port", str(port)],
                    cwd=clone,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                experiments = _ui_experiments(port, ui)
                assert "demo-digits" in experiments
                _check_results_view(results_view.replace(":5000/", f":{port}/"))
                _check_compare_page(port, clone)
            elif words[:3] == ["mlflow", "run", "."] and len(words) > 3 and words[3] != "-e":
                out = run(f"{line} {REDUCED_GRID}", clone, env)
                assert out.returncode == 0, out.stderr[-3000:]
                assert "study run:" in out.stdout and "report: reports/demo-digits" in out.stdout
                (results_view,) = re.findall(r"^results table: (\S+)", out.stdout, re.M)
                assert (clone / "reports" / "demo-digits" / "report.md").is_file()
            elif "-e plan" in line:  # before the study: what it will run and take (issue 42)
                out = run(line, clone, env)
                assert out.returncode == 0, out.stderr[-3000:]
                assert "ready to start" in out.stdout and "estimate" in out.stdout, out.stdout
            elif "-e aggregate" in line:
                out = run(line, clone, env)
                assert out.returncode == 0, out.stderr[-3000:]
                first = out.stdout.strip().splitlines()[0]
                assert first.startswith("reporting experiment 'demo-digits'"), out.stdout
                assert "-P experiment=" in first
            elif words[0] == "python":
                out = run(line, clone, env)
                assert out.returncode == 0, out.stderr[-3000:]
                assert out.stdout.strip().splitlines()[-1] == "torch.Size([2, 10])"
                # quietly: no library warnings, no download progress bars (issue 27)
                assert "Warning" not in out.stderr and "Downloading" not in out.stderr, out.stderr
            elif "-e evaluate" in line:
                out = run(line, clone, env)
                assert out.returncode == 0, out.stderr[-3000:]
                assert "evaluate run:" in out.stdout
            else:
                pytest.fail(f"the journey does not know the README command {line!r}")
        runs = store_runs(clone)
        assert not [r for r in runs if r.info.status != "FINISHED"]
        steps = [r.data.tags.get("ltexp.step") for r in runs]
        assert steps.count("evaluate") == 5  # 4 cells + the champion tested again
        # "Default" holds plan's record and one `mlflow run` wrapper (of aggregate and evaluate,
        # the later deleted the earlier)
        default = sorted(r.info.run_name.split("-")[0] for r in runs if r.info.experiment_id == "0")
        assert default == ["mlflow", "plan"], default

        before = len(store_runs(clone))
        for line in readme_commands("Running the study"):
            out = run(line, clone, env)
            errors = [e for e in out.stderr.splitlines() if ": error: " in e]
            assert out.returncode != 0 and len(errors) == 1, out.stderr[-3000:]
            # the first file it misses: the backbone's weights, or CIFAR-100 itself
            assert "-P preset=demo" in errors[0]
            assert "cifar-100-python" in errors[0] or "pretrained weights" in errors[0]
        runs = store_runs(clone)
        assert not [r for r in runs if r.info.status == "RUNNING"]
        refused = [r for r in runs if r.info.status == "FAILED"]
        assert len(runs) - before == len(refused) == 2  # mlflow run's own runs, with the reason
        assert all("-P preset=demo" in r.data.tags["ltexp.error"] for r in refused)
    finally:
        if ui is not None:
            ui.terminate()
            ui.wait(timeout=30)


HEADLESS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000"]


def _check_results_view(url: str) -> None:
    """The issue's runs table: the URL the study prints opens the train runs flat, with the cell
    params and test metrics as columns (checked in the page Chromium renders, where installed)."""
    assert url.startswith("http://127.0.0.1:") and "viewStateShareKey=ltexp-results" in url
    # without it, the view itself is still checked against the store in test_schema
    chromium = system_tool("chromium", "chromium", optional=True)
    if chromium is None:
        return
    page = _render(chromium, url)
    # the model-training side, not GenAI's overview of traces
    assert "Token Usage" not in page and "Detect Issues" not in page, page[-2000:]
    columns = set(re.findall(r'col-id="((?:params|metrics)\.`[^`]+`)"', page))
    assert {"params.`model`", "params.`loss`", "metrics.`test_tail_acc1`"} <= columns, columns
    # 1 model x 2 losses x 2 training sets, flat: the study's own row is filtered out
    assert "<strong>4</strong> matching runs" in page, page[-2000:]


def _render(chromium: str, url: str) -> str:
    """The page as Chromium renders it, after its scripts have run."""
    return subprocess.run(
        [chromium, *HEADLESS, "--virtual-time-budget=20000", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout


def _check_compare_page(port: int, clone: Path) -> None:
    """The issue's compare page (tick the cells' runs, "Compare"): its chart's metric axis is
    validation accuracy, and no system metric is on it (it plotted cpu_utilization before)."""
    chromium = system_tool("chromium", "chromium", optional=True)
    if chromium is None:
        return
    train = [r for r in store_runs(clone) if r.data.tags.get("ltexp.step") == "train"]
    experiment = train[0].info.experiment_id
    ids = ",".join(f'"{r.info.run_id}"' for r in train)
    page = _render(
        chromium,
        f'http://127.0.0.1:{port}/#/compare-runs?runs=[{ids}]&experiments=["{experiment}"]',
    )
    axes = re.findall(r'class="axis-title"[^>]*data-unformatted="([^"]+)"', page)
    assert axes and axes[-1] == "val_acc1", axes  # the parallel coordinates' metric, last
    assert not [a for a in axes if a.startswith("system/")], axes


def _ui_experiments(port: int, ui: subprocess.Popen) -> list[str]:
    deadline = time.time() + 120
    while True:
        try:
            url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=100"
            with urllib.request.urlopen(url, timeout=5) as r:
                return [e["name"] for e in json.loads(r.read())["experiments"]]
        except OSError:
            assert ui.poll() is None and time.time() < deadline, "mlflow ui did not answer"
            time.sleep(0.5)
