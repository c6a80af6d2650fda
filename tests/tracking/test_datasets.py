"""Where a model's data is read from: the rehearsal found that `mlflow run . -e evaluate` of a
model trained with `-P data_root=X` looked in the default folder and stopped there."""

from __future__ import annotations

from pathlib import Path

import mlflow

from ltexp.tracking.datasets import DEFAULT_DATA_ROOT, data_root_for


def _run_trained_from(folder: Path) -> mlflow.entities.Run:
    with mlflow.start_run() as run:
        mlflow.log_param("data_root", str(folder))
    return mlflow.get_run(run.info.run_id)


def test_the_default_folder_gives_way_to_the_one_the_model_trained_from(
    tracking: str, tmp_path: Path
) -> None:
    trained_from = tmp_path / "cifar"
    trained_from.mkdir()
    run = _run_trained_from(trained_from)
    assert data_root_for(run, DEFAULT_DATA_ROOT) == str(trained_from)


def test_a_folder_given_is_kept(tracking: str, tmp_path: Path) -> None:
    trained_from = tmp_path / "cifar"
    trained_from.mkdir()
    run = _run_trained_from(trained_from)
    assert data_root_for(run, str(tmp_path / "mine")) == str(tmp_path / "mine")


def test_a_recorded_folder_not_on_this_machine_leaves_the_default(
    tracking: str, tmp_path: Path
) -> None:
    run = _run_trained_from(tmp_path / "on-another-machine")
    assert data_root_for(run, DEFAULT_DATA_ROOT) == DEFAULT_DATA_ROOT
