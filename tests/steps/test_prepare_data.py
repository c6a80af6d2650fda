"""What a prepare_data run records, and how later steps verify it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest

from ltexp import schema
from ltexp.config import build_config
from ltexp.data import SPLITS
from ltexp.errors import DataError
from ltexp.steps.prepare_data import run_prepare_data
from ltexp.tracking.datasets import find_prepared_run, load_prepared


def _artifact(run_id: str, path: str, dst: Path) -> Path:
    return Path(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst))
    )


def test_prepare_data_run_contents(tmp_path: Path, tracking: str) -> None:
    cfg = build_config("demo")
    run_id = run_prepare_data(cfg)
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[schema.STEP] == "prepare_data"
    p = run.data.params
    assert (p["dataset"], p["profile"], p["imbalance_ratio"], p["seed"], p["class_order"]) == (
        "digits",
        "exp",
        "100.0",
        "42",
        "label",
    )
    assert (p["n_max_train"], p["n_max_test"]) == ("120", "24")
    manifest = json.loads(_artifact(run_id, "manifest.json", tmp_path).read_text())
    assert set(manifest["splits"]) == set(SPLITS)
    for name, entry in manifest["splits"].items():
        assert entry["n"] == sum(entry["per_class"]) and len(entry["digest"]) == 64, name
    assert manifest["splits"]["train_balanced"]["per_class"] == [120] * 10
    assert manifest["splits"]["val"]["n"] == 300
    assert set(manifest["groups"]) == {"head", "middle", "tail", "many", "medium", "few"}
    assert manifest["source_checksums"]
    with np.load(_artifact(run_id, "splits.npz", tmp_path)) as npz:
        assert len(npz["train_lt"]) == manifest["splits"]["train_lt"]["n"]
    assert _artifact(run_id, "class_counts.png", tmp_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _artifact(run_id, "config.yaml", tmp_path)
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert len(inputs) == len(SPLITS)
    lt = inputs["digits/train_lt"]
    assert lt.dataset.digest == manifest["splits"]["train_lt"]["digest"][:32]
    tags = {t.key: t.value for t in lt.tags}
    assert tags["ltexp.sha256"] == manifest["splits"]["train_lt"]["digest"]
    assert tags["mlflow.data.context"] == "training"


def test_same_seed_same_digests_other_seed_different(tmp_path: Path, tracking: str) -> None:
    a = load_prepared(run_prepare_data(build_config("demo")), "~")
    b = load_prepared(run_prepare_data(build_config("demo")), "~")
    c = load_prepared(run_prepare_data(build_config("demo", {"split_seed": 7})), "~")
    for s in SPLITS:
        assert a.manifest["splits"][s]["digest"] == b.manifest["splits"][s]["digest"]
    assert a.manifest["splits"]["train_lt"]["digest"] != c.manifest["splits"]["train_lt"]["digest"]


def test_latest_matching_prepared_run_is_found(tmp_path: Path, tracking: str) -> None:
    cfg = build_config("demo")
    first = run_prepare_data(cfg)
    second = run_prepare_data(cfg)
    assert find_prepared_run(cfg) == second != first
    assert find_prepared_run(build_config("demo", {"imbalance_ratio": 10})) is None


@pytest.mark.slow  # a full-size CIFAR-100 copy, prepared twice
def test_tampered_source_files_are_refused(tmp_path: Path, tracking: str, cifar_root: Path) -> None:
    root = tmp_path / "cifar"
    shutil.copytree(cifar_root, root)
    cfg = build_config("thesis", {"data_root": str(root), "download": "false"})
    run_id = run_prepare_data(cfg)
    assert load_prepared(run_id, str(root), False).manifest["splits"]["train_lt"]["n"] == 9754
    load_prepared.cache_clear()
    # rewrite the train file with other pixels: same format, different content
    from tests.conftest import write_cifar100

    write_cifar100(root, seed=1)
    with pytest.raises(DataError, match="does not match its manifest"):
        load_prepared(run_id, str(root), False)
    load_prepared.cache_clear()


@pytest.mark.slow  # a whole cell on generated CIFAR-10 files
def test_cifar10_lt_is_prepared_trained_and_evaluated_from_its_files(
    tmp_path: Path, tracking: str
) -> None:
    from ltexp.data.cifar import CIFAR10
    from ltexp.study.run import run_cell
    from tests.conftest import tiny_overrides, write_cifar

    write_cifar(tmp_path / "data", CIFAR10, train_per_class=60, test_per_class=10)
    cfg = build_config(
        "demo",
        tiny_overrides(
            tmp_path,
            dataset="cifar10",
            download="false",
            n_max_train=50,
            n_max_test=10,
            imbalance_ratio=10,
            epochs=1,
        ),
    )
    cell = run_cell(cfg)
    train = mlflow.get_run(cell.train.run_id)
    prepared = load_prepared(train.data.tags[schema.DATA_RUN], str(tmp_path / "data"), False)
    assert prepared.dataset == "cifar10" and prepared.num_classes == 10
    assert prepared.class_counts("train_lt") == [int(50 * 10 ** (-i / 9) + 1e-9) for i in range(10)]
    assert cell.train.model_uri.startswith("models:/ltexp-cifar10-tiny_cnn-")
    assert mlflow.get_run(cell.evaluate_run_id).data.params["dataset"] == "cifar10"


def test_two_image_folders_in_one_store_are_two_datasets(
    tmp_path: Path, tiny_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 23: the second folder was taken for the first one's prepared data (an index
    error); a folder's files are its content, so its root is part of the data's identity."""
    from ltexp.data import files as image_files
    from ltexp.study.run import run_cell
    from tests.conftest import write_image_folder

    monkeypatch.setenv(image_files.CACHE_ENV, str(tmp_path / "cache"))
    small = write_image_folder(tmp_path / "small", [12, 6, 3, 2], test_per_class=2)
    large = write_image_folder(tmp_path / "large", [14, 9, 5, 4, 3, 2], test_per_class=2)
    common = {"dataset": "imagefolder", "storage_size": 16, "image_size": 16, "epochs": 1}
    first = tiny_config(**common, data_root=str(small))
    second = tiny_config(**common, data_root=str(large))
    run_small = run_prepare_data(first)
    assert find_prepared_run(second) is None
    cell = run_cell(second)
    run_large = mlflow.get_run(cell.train.run_id).data.tags[schema.DATA_RUN]
    assert run_large != run_small
    assert find_prepared_run(first) == run_small and find_prepared_run(second) == run_large
    assert load_prepared(run_large, str(large)).num_classes == 6
