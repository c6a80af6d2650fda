"""The study (main): the whole pipeline on a reduced demo grid, reuse, resume after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mlflow
import pytest

from ltexp import schema
from ltexp.study.run import run_study
from tests.conftest import REPO, step_counts, tiny_overrides

GRID = {"models": "tiny_cnn", "losses": "ce,bs", "train_splits": "balanced,lt", "epochs": 2}


@pytest.mark.slow  # three studies of four cells
def test_study_runs_every_cell_then_reuses_them(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config(**GRID)
    first = run_study(cfg)
    assert sorted(first.ran) == sorted(
        [
            "tiny_cnn-ce-balanced-s42",
            "tiny_cnn-ce-lt-s42",
            "tiny_cnn-bs-balanced-s42",
            "tiny_cnn-bs-lt-s42",
        ]
    )
    assert step_counts() == {
        "main": 1,
        "prepare_data": 1,
        "train": 4,
        "evaluate": 4,
        "aggregate": 1,
    }
    main = mlflow.get_run(first.run_id)
    children = mlflow.search_runs(
        search_all_experiments=True,
        output_format="list",
        filter_string=f"tags.`mlflow.parentRunId` = '{first.run_id}'",
    )
    assert Counter(r.data.tags[schema.STEP] for r in children) == {
        "prepare_data": 1,
        "train": 4,
        "aggregate": 1,
    }
    assert main.data.metrics["cells_run"] == 4
    report = first.report_dir
    assert (report / "report.md").is_file() and (report / "results_tiny_cnn_lt.csv").is_file()
    second = run_study(tiny_config(**GRID))
    assert second.ran == [] and len(second.reused) == 4
    assert step_counts() == {
        "main": 2,
        "prepare_data": 1,
        "train": 4,
        "evaluate": 4,
        "aggregate": 2,
    }
    forced = run_study(tiny_config(**GRID, force="true"))
    assert len(forced.ran) == 4


def test_study_re_runs_cells_when_the_config_changes(tiny_config) -> None:
    run_study(tiny_config(**{**GRID, "losses": "ce", "train_splits": "lt"}))
    again = run_study(tiny_config(**{**GRID, "losses": "ce", "train_splits": "lt", "lr": 0.002}))
    assert again.ran == ["tiny_cnn-ce-lt-s42"]


def _main_cli(tmp_path: Path) -> list[str]:
    args = [sys.executable, "-m", "ltexp", "main"]
    for k, v in tiny_overrides(tmp_path, **{**GRID, "epochs": 3}).items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


@pytest.mark.slow
def test_killed_study_finishes_only_what_is_missing(tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.Popen(
        _main_cli(tmp_path),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    # kill it inside the third cell: two cells done, the third one half trained
    done = 0
    deadline = time.time() + 300
    while done < 2 and time.time() < deadline:
        line = proc.stdout.readline()
        done += line.startswith("[")
    while not list((tmp_path / "ckpt").glob("*/last.pt"))[2:] and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(_main_cli(tmp_path), env=env, cwd=tmp_path, check=True, capture_output=True)
    counts = step_counts(env["MLFLOW_TRACKING_URI"])
    # the same runs as an uninterrupted study: the killed main and train runs were resumed
    assert counts == {"main": 1, "prepare_data": 1, "train": 4, "evaluate": 4, "aggregate": 1}
    trains = mlflow.search_runs(
        search_all_experiments=True,
        output_format="list",
        filter_string="tags.`ltexp.step` = 'train'",
    )
    assert sum(schema.RESUMED_FROM_EPOCH in r.data.tags for r in trains) == 1


@pytest.mark.slow
def test_mlflow_run_entry_points(tmp_path: Path) -> None:
    # MLproject commands call `python`: the one of this environment, as after `activate`
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PATH": path}
    common = ["--env-manager", "local", "--experiment-name", "demo-digits"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "run",
            str(REPO),
            "-e",
            "prepare_data",
            "-P",
            "dataset=digits",
            *common,
        ],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "run",
            str(REPO),
            "-P",
            "models=tiny_cnn",
            "-P",
            "losses=ldam",
            "-P",
            "train_splits=lt",
            "-P",
            "epochs=1",
            "-P",
            f"checkpoint_dir={tmp_path / 'ckpt'}",
            "-P",
            "system_metrics=false",
            "-P",
            f"output_dir={tmp_path / 'report'}",
            *common,
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    counts = step_counts(env["MLFLOW_TRACKING_URI"])
    assert counts == {"prepare_data": 1, "main": 1, "train": 1, "evaluate": 1, "aggregate": 1}
    assert (tmp_path / "report" / "report.md").is_file()  # mlflow run works in the project dir
    train = mlflow.search_runs(
        search_all_experiments=True,
        output_format="list",
        filter_string="tags.`ltexp.step` = 'train'",
    )[0]
    assert train.data.params["head"] == "linear"  # the protocol's head, for ldam too

    def mlflow_run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mlflow", "run", str(REPO), *args, *common],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )

    bad = mlflow_run("-e", "train", "-P", "lr=-1")
    assert bad.returncode != 0 and "lr must be > 0" in bad.stderr
    # values as a user types them: MLflow logs them raw, ltexp normalised; both are one value
    typed = ["-P", "deterministic=yes", "-P", "betas=.9,.999", "-P", "epochs=1"]
    typed += ["-P", "preset=demo", "-P", f"checkpoint_dir={tmp_path / 'ckpt'}"]
    ok = mlflow_run("-e", "train", *typed)
    assert ok.returncode == 0, ok.stderr[-2000:]
    # the plan of the study that ran: its cell reused; MLflow's own run holds the plan
    grid = ["-P", "models=tiny_cnn", "-P", "losses=ldam", "-P", "train_splits=lt"]
    grid += ["-P", "epochs=1", "-P", f"checkpoint_dir={tmp_path / 'ckpt'}"]
    planned = mlflow_run("-e", "plan", *grid)
    assert planned.returncode == 0, planned.stderr[-2000:]
    assert "1 cells: 0 new, 0 resumed, 1 reused" in planned.stdout
    (plan_run,) = mlflow.search_runs(
        search_all_experiments=True,
        output_format="list",
        filter_string="attributes.run_name = 'plan-demo-digits'",
    )
    plan = mlflow.artifacts.load_dict(f"runs:/{plan_run.info.run_id}/plan.json")
    assert plan["ready"] is True and plan["cells"][0]["status"] == "reused"
    # an ensemble of the two cells' champions: MLflow logs -P members as given, ltexp the same
    # value, and the versions they resolved to beside it
    members = [f"models:/ltexp-digits-tiny_cnn-{loss}-lt@champion" for loss in ("ldam", "ce")]
    built = mlflow_run("-e", "ensemble", "-P", "preset=demo", "-P", f"members={','.join(members)}")
    assert built.returncode == 0, built.stderr[-2000:]
    (ensemble,) = mlflow.search_runs(
        search_all_experiments=True,
        output_format="list",
        filter_string="tags.`ltexp.step` = 'ensemble'",
    )
    assert ensemble.data.params["members"] == ",".join(members)
    assert ensemble.data.params["member_versions"] == ",".join(
        m.replace("@champion", "/1") for m in members
    )
    assert ensemble.data.tags[schema.MODEL_URI].startswith("models:/ltexp-digits-ensemble-")
