"""A pickled model planted as champion runs nothing through any ltexp entry point."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest
import torch

from ltexp.cli import main
from ltexp.errors import TrackingError
from ltexp.steps.study import run_cell, run_study
from ltexp.tracking import schema

NAME = "ltexp-digits-tiny_cnn-ce-lt"


class Planted(torch.nn.Module):
    """A module whose unpickling runs a shell command (what an attacker would register)."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def planted(tiny_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A trained cell whose champion (and train run's model tag) is a planted pickle."""
    cfg = tiny_config(loss="ce", epochs=1, models="tiny_cnn", losses="ce", train_splits="lt")
    cell = run_cell(cfg)
    marker = tmp_path / "pwned"
    Planted.marker = str(marker)
    with mlflow.start_run(run_id=cell.train.run_id):  # from the real train run, as a tag writer can
        info = mlflow.pytorch.log_model(
            Planted(),
            name="evil",
            serialization_format="pickle",
            registered_model_name=NAME,
            pip_requirements=["torch"],  # no inference: it would load (and run) the model here
        )
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    client.set_registered_model_alias(NAME, schema.CHAMPION_ALIAS, version)
    client.set_tag(cell.train.run_id, schema.MODEL_URI, f"models:/{NAME}/{version}")
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # MLflow 3.17's default
    return cfg, cell, marker


def test_no_entry_point_loads_the_planted_champion(
    planted, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, cell, marker = planted
    champion = f"models:/{NAME}@{schema.CHAMPION_ALIAS}"
    assert main(["evaluate", "--preset", "demo", "--model-uri", champion]) == 2
    assert main(["evaluate", "--preset", "demo", "--train-run", cell.train.run_id]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all("not registered by ltexp and is refused" in e for e in errors)
    import ltexp

    with pytest.raises(TrackingError, match="refused"):
        ltexp.load_model(champion)  # the README's safe load
    # a study that finds the cell trained but not evaluated evaluates its model: refused too
    mlflow.MlflowClient().delete_run(cell.evaluate_run_id)
    with pytest.raises(TrackingError, match="refused"):
        run_study(cfg)
    # and a user protecting their own loads is protected by MLflow itself
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    with pytest.raises(mlflow.exceptions.MlflowException, match="pickle is disallowed"):
        mlflow.pytorch.load_model(champion)
    assert not marker.exists()
