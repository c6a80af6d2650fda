"""``ltexp bench`` runs both measurements and reports them (speed goals live in its output)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_json_fields() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ltexp",
            "bench",
            "--json",
            "--steps",
            "2",
            "--repeats",
            "2",
            "--model",
            "tiny_cnn",
            "--model",
            "cifar_resnet8",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = json.loads(out)
    assert [r["model"] for r in rows] == ["tiny_cnn", "cifar_resnet8"]
    for r in rows:
        assert r["model_only_img_s"] > 0 and r["pipeline_img_s"] > 0
        # the ratio is of the unrounded speeds (JSON: img/s to 0.1, the ratio to 1e-4)
        p, m = r["pipeline_img_s"], r["model_only_img_s"]
        assert abs(r["ratio"] - p / m) <= (p / m) * (0.05 / p + 0.05 / m) + 5e-5 + 1e-9
        s = r["streamed_img_s"]  # the streamed path, beside the resident one
        assert s > 0 and abs(r["streamed_ratio"] - s / m) <= (s / m) * (0.05 / s + 0.05 / m) + 6e-5
        assert r["device"] == "cpu" and r["batch_size"] == 32 and r["image_size"] == 32


def _bench_command(*options: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "ltexp", "bench", "--json", *options],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


@pytest.mark.slow
def test_bench_study_accounts_for_every_second_of_a_study() -> None:
    small = "--models tiny_cnn --losses ce,bs --train-splits lt --epochs 2 --bootstrap-samples 50"
    row = _bench_command("--study", "--args", small)
    assert row["command"].startswith("ltexp main --preset demo --models tiny_cnn")
    assert row["trainings"] == 2
    parts = row["parts_s"]
    assert all(seconds >= 0 for seconds in parts.values()), parts
    # the parts are the whole wall clock, and the ratio is of the same two numbers
    assert sum(parts.values()) == pytest.approx(row["wall_s"], abs=0.05)
    assert parts["training epochs (train + validation)"] == pytest.approx(row["epochs_s"], abs=0.01)
    assert row["ratio"] == pytest.approx(row["wall_s"] / row["epochs_s"], rel=1e-2)
    assert parts["evaluate runs"] > 0 and parts["registering the best checkpoint"] > 0
    assert 0 < row["outside_per_train_s"] < row["wall_s"] / 2


@pytest.mark.slow
def test_bench_tune_measures_each_trial_and_a_failed_command_is_one_line() -> None:
    row = _bench_command("--tune", "--args", "--trials 2 --epochs 2")
    assert row["command"].startswith("ltexp tune --preset demo")
    assert row["trainings"] == 2 and row["epochs_s"] > 0
    assert row["parts_s"]["evaluate runs"] == 0  # trials are not evaluated on the test sets
    failed = subprocess.run(
        [sys.executable, "-m", "ltexp", "bench", "--study", "--args", "--models no_such_model"],
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 2
    (line,) = failed.stderr.strip().splitlines()
    assert (
        line.startswith("ltexp bench: error: the measured `ltexp main") and "no_such_model" in line
    )
