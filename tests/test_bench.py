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
