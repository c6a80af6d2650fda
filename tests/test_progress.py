"""Progress a person can act on (issue 42): every progress line names its cell, the study says
how long is left as its cells finish, and MLflow's system metrics stay off on a CPU."""

from __future__ import annotations

import io
from pathlib import Path

import mlflow
import pytest

from ltexp.cli import main
from ltexp.progress import Progress, labelled
from ltexp.study.run import StudyClock
from tests.conftest import tiny_args


def test_a_progress_line_names_its_cell_and_an_inner_label_keeps_it() -> None:
    stream = io.StringIO()
    with labelled("[3/28] tiny_cnn-focal-lt-s42"), labelled("tiny_cnn-focal-lt-s42"):
        progress = Progress(10, "epoch 2/8", stream=stream)
    assert progress.line().startswith("[3/28] tiny_cnn-focal-lt-s42 epoch 2/8  step 0/10")
    assert Progress(10, "epoch 2/8", stream=stream).line().startswith("epoch 2/8")


def test_the_study_estimate_follows_the_cells_that_finished() -> None:
    clock = StudyClock(4)
    assert clock.done(60.0) == "3 cells left, about 0:03:00"
    assert clock.done(120.0) == "2 cells left, about 0:03:00"  # mean 90 s
    assert clock.done(30.0) == "1 cell left, about 0:01:10"
    assert clock.done(30.0) == "the grid's last cell"


def test_system_metrics_stay_off_on_a_cpu_unless_asked(
    tmp_path: Path, tracking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sampled every half second, so that a run of seconds would have some if they were on
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    for asked, expected in (("none", False), ("true", True)):  # the default, then asked for
        args = tiny_args(tmp_path, epochs=2, system_metrics=asked, seed=len(asked))
        assert main(["train", *args, "--evaluate-after", "false"]) == 0
        run = mlflow.search_runs(
            search_all_experiments=True,
            filter_string=f"tags.`ltexp.step` = 'train' and params.seed = '{len(asked)}'",
            output_format="list",
        )[0]
        assert bool([k for k in run.data.metrics if k.startswith("system/")]) == expected, asked
