"""The design card's command on the protocol's own path (issue 41): MobileNetV2 from torch hub's
cache, CIFAR-100 in its real format at its real size, 224-px images, the protocol's pipeline,
registration and the report, through `mlflow run` as a user types it; shortened only by epochs,
batch size and max_per_class. scripts/rehearse_protocol.py runs it and prints one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_protocol_cell_of_mobilenet_v2_runs_end_to_end_offline(tmp_path: Path) -> None:
    script = REPO / "scripts" / "rehearse_protocol.py"
    args = ["--models", "mobilenet_v2", "--max-per-class", "1", "--batch-size", "16"]
    done = subprocess.run(
        [sys.executable, str(script), *args, "--folder", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    (model,) = report["models"]
    assert model["model"] == "mobilenet_v2" and model["loaders_agree"]
    # ltexp plan's estimates are the checkpoint and the registered version, within 10 %
    assert abs(model["checkpoint_bytes"] / model["plan_checkpoint_bytes"] - 1) < 0.10, model
    assert abs(model["version_bytes"] / model["plan_version_bytes"] - 1) < 0.10, model
    # the costs are measured: images per second of the same order as bench's model-only
    # ceiling (a guard against counting batches as images, 16x at this batch size; the two are
    # timed minutes apart, and on a shared CI machine the ceiling came out 1.8 img/s beside a
    # training step at 2.3), and both peaks
    ceiling = model["bench_model_only_images_per_s"]
    assert 0 < model["images_per_s"] <= 4 * ceiling, model
    assert model["train_lt_peak_mib"] > 0 and model["evaluate_peak_mib"] > 0, model
    assert model["register_lt_s"] > 0 and model["evaluate_s"] > 0, model
    header, row = report["table_4_9"][:2]
    assert header.startswith("model,result,benchmark") and row.startswith("mobilenet_v2,")
    assert report["report_says_rehearsal"]
    assert not (REPO / "reports" / "rehearsal").exists()  # nothing written into the checkout
