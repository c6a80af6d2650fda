"""CONTRIBUTING.md's recipes, done in a test: a loss with one hyper-parameter and a dataset with
one option, each one registration, reach the config, the CLI, the runs and the manifest; a grid
axis, one declaration, reaches the study's options, its cells, their names, runs, registered
models and the report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch.nn.functional as F

from ltexp import schema
from ltexp.cli import build_parser, main
from ltexp.config import Axis, register_axis, unregister_axis
from ltexp.data import DATASETS, DatasetOption, SourceData, register_dataset
from ltexp.losses import LOSSES, ClassAwareLoss, HParam, register_loss
from tests.conftest import tiny_args


class ScaledCrossEntropy(ClassAwareLoss):
    """``factor · CE``: a loss with one hyper-parameter, as CONTRIBUTING.md writes one."""

    def __init__(self, class_counts, factor: float = 2.0, **drw: float) -> None:
        super().__init__(class_counts, **drw)
        self.factor = factor

    def per_sample(self, logits, target):
        return self.factor * F.cross_entropy(logits, target, reduction="none")


@pytest.fixture
def scaled_ce() -> Iterator[None]:
    register_loss(
        "scaled_ce",
        "Scaled softmax loss",
        hparams=[HParam("factor", 2.0, "multiplies the loss", low=0.0, low_open=True)],
        paper="a test",
    )(lambda counts, factor=2.0, **drw: ScaledCrossEntropy(counts, factor, **drw))
    yield
    del LOSSES["scaled_ce"]


@pytest.fixture
def blobs() -> Iterator[None]:
    def load(root: Path, download: bool = True, classes: int = 3) -> SourceData:
        rng = np.random.default_rng(0)
        labels = np.repeat(np.arange(classes), 60)
        images = rng.integers(0, 50, size=(len(labels), 32, 32, 3), dtype=np.uint8)
        images[..., 0] += (labels * 60).astype(np.uint8)[:, None, None]
        names = [f"blob{i}" for i in range(classes)]
        return SourceData("blobs", images, labels, images[::3], labels[::3], names, {}, 40, 10)

    register_dataset(
        "blobs",
        "coloured blobs",
        options=(DatasetOption("classes", 3, "number of classes", low=2, high=8),),
    )(load)
    yield
    del DATASETS["blobs"]


def test_a_new_loss_is_an_option_a_param_and_trains(
    scaled_ce, tmp_path: Path, tracking: str, capsys: pytest.CaptureFixture
) -> None:
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "--scaled-ce-factor" in help_text and "scaled_ce" in help_text
    args = ["train", "--loss", "scaled_ce", "--scaled-ce-factor", "3", "--epochs", "1"]
    args += tiny_args(tmp_path, evaluate_after="false")
    assert main(args) == 0, capsys.readouterr().err
    (train,) = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`{schema.STEP}` = 'train'",
        output_format="list",
    )
    assert train.info.status == "FINISHED"
    assert train.data.params["loss"] == "scaled_ce"
    assert train.data.params["scaled_ce_factor"] == "3.0"


def test_a_new_dataset_option_reaches_the_loader_the_manifest_and_the_runs(
    blobs, tmp_path: Path, tracking: str, capsys: pytest.CaptureFixture
) -> None:
    base = ["--dataset", "blobs", "--blobs-classes", "4"]
    assert main(["prepare-data", *base]) == 0, capsys.readouterr().err
    (prepared,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert prepared.data.params["dataset_classes"] == "4"
    path = mlflow.artifacts.download_artifacts(
        run_id=prepared.info.run_id, artifact_path=schema.MANIFEST_ARTIFACT, dst_path=str(tmp_path)
    )
    manifest = json.loads(Path(path).read_text())
    assert manifest["num_classes"] == 4 and manifest["dataset_options"] == {"classes": 4}
    args = ["train", *base, "--model", "tiny_cnn", "--pretrained", "false", "--epochs", "1"]
    args += tiny_args(tmp_path)
    assert main(args) == 0, capsys.readouterr().err
    assert main(["prepare-data", "--dataset", "blobs", "--blobs-classes", "9"]) == 2
    assert "blobs_classes must be <= 8" in capsys.readouterr().err


@pytest.fixture
def optimizer_axis() -> Iterator[None]:
    register_axis(
        Axis("optimizer", "optimizers", "optimiser", "optimisers of the grid", ("adam",), "adam")
    )
    yield
    unregister_axis("optimizer")


def test_a_new_grid_axis_is_one_declaration(
    optimizer_axis, tmp_path: Path, tracking: str, capsys: pytest.CaptureFixture
) -> None:
    help_text = build_parser()._subparsers._group_actions[0].choices["main"].format_help()
    assert "--optimizers" in help_text and "optimisers of the grid" in help_text
    grid = ["--models", "tiny_cnn", "--losses", "ce", "--train-splits", "lt"]
    args = ["main", *grid, "--optimizers", "adam,sgd", *tiny_args(tmp_path, epochs=1)]
    assert main(args) == 0, capsys.readouterr().err
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    trains = {r.info.run_name: r for r in runs if r.data.tags[schema.STEP] == "train"}
    assert set(trains) == {"tiny_cnn-ce-lt-s42", "tiny_cnn-ce-lt-s42-sgd"}
    assert trains["tiny_cnn-ce-lt-s42-sgd"].data.params["optimizer"] == "sgd"
    assert trains["tiny_cnn-ce-lt-s42"].data.params["optimizer"] == "adam"
    evals = [r for r in runs if r.data.tags[schema.STEP] == "evaluate"]
    assert sorted(r.data.params["optimizer"] for r in evals) == ["adam", "sgd"]
    (study,) = [r for r in runs if r.data.tags[schema.STEP] == "main"]
    assert study.data.params["optimizers"] == "adam,sgd"
    models = {m.name for m in mlflow.MlflowClient().search_registered_models()}
    assert models == {"ltexp-digits-tiny_cnn-ce-lt", "ltexp-digits-tiny_cnn-ce-lt-sgd"}
    report = tmp_path / "reports" / "demo-digits"
    table = (report / "by_optimizer.csv").read_text().splitlines()
    assert table[0].startswith("model,train_split,loss,optimizer,") and len(table) == 3
    assert "Loss × optimiser" in (report / "report.md").read_text()
