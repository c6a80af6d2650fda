"""Own data through ``mlflow run``: an image folder and an ImageNet-LT-style file list, prepared,
trained, evaluated and reported like CIFAR; bad input stops before any run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.conftest import REPO, step_counts, write_image_folder

COUNTS = [80, 48, 28, 16, 9, 5]  # with 6 test images per class: 222 files
COMMON = ["--env-manager", "local", "--experiment-name", "own"]


def _env(tmp_path: Path) -> dict[str, str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PATH": path,
        "LTEXP_CACHE_DIR": str(tmp_path / "cache"),
    }


def _mlflow_run(tmp_path: Path, entry: str, **params: object) -> subprocess.CompletedProcess:
    args = [a for k, v in params.items() for a in ("-P", f"{k}={v}")]
    return subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry, *args, *COMMON],
        env=_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )


DEMO = {"preset": "demo", "storage_size": 24}
TRAIN = {
    "image_size": 24,
    "epochs": 2,
    "system_metrics": "false",
    "bootstrap_samples": 50,
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["imagefolder", "filelist"])
def test_own_images_prepare_train_evaluate_aggregate(tmp_path: Path, layout: str) -> None:
    root = write_image_folder(tmp_path / "data", COUNTS, test_per_class=6)
    source = {"dataset": "imagefolder", "data_root": root}
    if layout == "filelist":  # the published ImageNet-LT split files' format
        lines = [
            f"{p.relative_to(root)} {int(p.parent.name[-2:])}\n"
            for p in sorted((root / "train").rglob("*.*"))
        ]
        (root / "ImageNet_LT_train.txt").write_text("".join(lines))
        tests = [
            f"{p.relative_to(root)} {int(p.parent.name[-2:])}\n"
            for p in sorted((root / "test").rglob("*.*"))
        ]
        (root / "ImageNet_LT_test.txt").write_text("".join(tests))
        source = {
            "dataset": "filelist",
            "data_root": root,
            "filelist_train": "ImageNet_LT_train.txt",
            "filelist_test": "ImageNet_LT_test.txt",
        }
    out = _mlflow_run(tmp_path, "prepare_data", **DEMO, **source)
    assert out.returncode == 0, out.stderr[-3000:]
    out = _mlflow_run(
        tmp_path, "train", **DEMO, **TRAIN, **source, checkpoint_dir=tmp_path / "ckpt"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    out = _mlflow_run(tmp_path, "aggregate", output_dir=tmp_path / "report")
    assert out.returncode == 0, out.stderr[-3000:]
    counts = step_counts(_env(tmp_path)["MLFLOW_TRACKING_URI"])
    assert counts["prepare_data"] == 1 and counts["train"] == 1 and counts["evaluate"] == 1

    mlflow.set_tracking_uri(_env(tmp_path)["MLFLOW_TRACKING_URI"])
    (prepare,) = mlflow.search_runs(
        search_all_experiments=True,
        filter_string="tags.`ltexp.step` = 'prepare_data'",
        output_format="list",
    )
    assert prepare.data.params["split_mode"] == "given"
    assert prepare.info.run_name == f"prepare-{source['dataset']}-given-s42"
    assert len(prepare.data.params["image_cache_sha256"]) == 64  # the decoded cache's digest
    assert prepare.data.params["dataset"] == source["dataset"]
    (evaluate,) = mlflow.search_runs(
        search_all_experiments=True,
        filter_string="tags.`ltexp.step` = 'evaluate'",
        output_format="list",
    )
    metrics = evaluate.data.metrics
    # the given test set is balanced (6 per class): it is test_balanced, and the class groups
    # are measured on it; the set has no long-tailed test set
    assert "test_balanced_acc1" in metrics and "test_lt_acc1" not in metrics
    assert {"test_head_acc1", "test_middle_acc1", "test_tail_acc1"} <= set(metrics)
    inputs = {d.dataset.name for d in evaluate.inputs.dataset_inputs}
    assert inputs == {f"{source['dataset']}/test_balanced"}
    md = (tmp_path / "report" / "report.md").read_text()
    # no val/ folder: 10 % of each class (at least one) is carved from train for validation
    carved = [max(1, n // 10) for n in COUNTS]
    train_lt = sum(COUNTS) - sum(carved)
    assert f"| Long-tailed train | {train_lt} | 6 | {COUNTS[-1] - 1}–{COUNTS[0] - 8} |" in md
    assert f"| Validation | {sum(carved)} | 6 | 1–8 |" in md
    assert "Head (balanced test)" in md and "has no long-tailed test set" in md
    assert "Balanced train" not in md  # the set has none
    assert "published CIFAR-100 result" not in md  # nor is it compared with CIFAR-100's
    # the ImageNet-LT papers' columns: classes by train_lt images, medium 20-100, few < 20
    lt_counts = [n - k for n, k in zip(COUNTS, carved, strict=True)]
    medium, few = sum(20 <= n <= 100 for n in lt_counts), sum(n < 20 for n in lt_counts)
    assert f"| Loss | Medium ({medium} classes) | Few ({few} classes) |" in md


@pytest.mark.slow
def test_bad_own_data_through_mlflow_run_is_one_line_and_no_run(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", COUNTS)
    (root / "train" / "class_01" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    out = _mlflow_run(tmp_path, "prepare_data", **DEMO, dataset="imagefolder", data_root=root)
    assert out.returncode != 0
    assert "broken.jpg' cannot be decoded as an image" in out.stderr
    assert "Traceback" not in out.stderr
    assert not list((tmp_path / "cache").glob("*"))  # no partial cache
    # only the run `mlflow run` itself opened, marked failed: no step run of ltexp
    assert set(step_counts(_env(tmp_path)["MLFLOW_TRACKING_URI"])) == {None}
    # balanced training on a set long-tailed as given is refused before a train run exists
    ok = _mlflow_run(
        tmp_path,
        "prepare_data",
        **DEMO,
        dataset="imagefolder",
        data_root=root,
        skip_bad_images="true",
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    mlflow.set_tracking_uri(_env(tmp_path)["MLFLOW_TRACKING_URI"])
    (prepare,) = mlflow.search_runs(
        search_all_experiments=True,
        filter_string="tags.`ltexp.step` = 'prepare_data'",
        output_format="list",
    )
    assert prepare.data.metrics["skipped_images"] == 1
    listed = mlflow.artifacts.load_text(f"runs:/{prepare.info.run_id}/skipped_images.txt")
    assert listed.strip() == "train/class_01/broken.jpg"
    out = _mlflow_run(
        tmp_path,
        "train",
        **DEMO,
        dataset="imagefolder",
        data_root=root,
        skip_bad_images="true",
        train_split="balanced",
    )
    assert out.returncode != 0
    assert "long-tailed as given and has no train_balanced: use train_split=lt" in out.stderr
    assert step_counts(_env(tmp_path)["MLFLOW_TRACKING_URI"])["train"] == 0
