"""How aggregate grows with a team's store: wall seconds and peak memory at N evaluate runs.

Fills a throwaway sqlite store (in a temporary folder, or ``--folder``) with N evaluate runs of
CIFAR-100 size, as a thesis grid with seeds would leave them: 4 backbones × 7 losses × 2
training sets × N/56 seeds, each with its predictions (10,000 balanced and 1,051 long-tailed test
images × 100 classes: labels, top-5 and float16 logits, about 2.3 MB), and the prepare_data run
whose manifest the report reads. Then runs ``ltexp aggregate`` on it in a fresh process and prints
one JSON line: the runs, the seconds to fill, aggregate's wall seconds and peak memory (the child
process's maximum resident set), and per run.

    python scripts/store_scale.py --runs 56
    python scripts/store_scale.py --runs 1000 --folder /big/disk/store   # minutes; 2.3 GB

docs/performance.md carries the table and the slope.
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = ("resnet50", "mobilenet_v2", "vit_b16", "convnext_base")
LOSSES = ("ce", "focal", "wce", "cb", "bs", "seql", "ldam")
SPLITS = ("balanced", "lt")
DIGEST = "e" * 64


def _labels(manifest: dict, split: str) -> np.ndarray:
    counts = np.zeros(100, dtype=int)
    counts[manifest["class_rank"]] = manifest["splits"][split]["per_class"]
    return np.repeat(np.arange(100), counts)


def fill(n_runs: int, manifest: dict) -> None:
    """N evaluate runs and the prepare_data run, in the active tracking store."""
    import mlflow

    from ltexp import schema

    with mlflow.start_run(experiment_id=mlflow.create_experiment("data")):
        mlflow.set_tags({schema.STEP: "prepare_data", schema.DATA_DIGEST: DIGEST})
        mlflow.log_dict(manifest, schema.MANIFEST_ARTIFACT)
    exp = mlflow.create_experiment("scale")
    rng = np.random.default_rng(0)
    labels = {s: _labels(manifest, s) for s in ("test_balanced", "test_lt")}
    cells = list(itertools.product(MODELS, LOSSES, SPLITS))
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n_runs):
            model, loss, split = cells[i % len(cells)]
            arrays = {}
            for name, lab in labels.items():
                logits = rng.normal(size=(len(lab), 100)).astype(np.float16)
                logits[np.arange(len(lab)), lab] += 1.5  # right about half the time
                top5 = np.argsort(-logits, axis=1)[:, :5].astype(np.int32)
                arrays |= {f"{name}_labels": lab, f"{name}_top5": top5, f"{name}_logits": logits}
            path = Path(tmp) / schema.PREDICTIONS_ARTIFACT
            np.savez_compressed(path, **arrays)
            metrics = {}
            for metric in schema.REPORT_COLUMNS.values():
                v = float(rng.uniform(0.3, 0.8))
                metrics |= {metric: v, f"{metric}_ci_low": v - 0.01, f"{metric}_ci_high": v + 0.01}
            with mlflow.start_run(experiment_id=exp):
                mlflow.set_tags({schema.STEP: "evaluate", schema.DATA_DIGEST: DIGEST})
                mlflow.log_params(
                    {"dataset": "cifar100", "model": model, "loss": loss, "train_split": split}
                    | {"seed": i // len(cells), schema.TAU: 0.0}
                )
                mlflow.log_metrics(metrics)
                mlflow.log_artifact(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=56, help="evaluate runs (default 56)")
    parser.add_argument("--folder", default="", help="where the store goes (default: temporary)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs {args.runs} is not a whole number of runs, 1 or more")
    folder = Path(args.folder or tempfile.mkdtemp(prefix="ltexp-scale-"))
    if not args.folder:  # a temporary one goes with the script (GBs: 2.3 MB a run, 224-px models)
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ.update({"MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"})
    os.chdir(folder)
    import mlflow

    mlflow.set_tracking_uri(uri)
    started = time.perf_counter()
    from ltexp.rehearsal import protocol_manifest

    fill(args.runs, protocol_manifest())
    filled = time.perf_counter() - started
    command = [sys.executable, "-m", "ltexp", "aggregate", "--preset", "thesis"]
    command += ["--experiment", "scale", "--output-dir", str(folder / "report")]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"aggregate failed: {done.stderr.strip().splitlines()[-1]}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "runs": args.runs,
                "fill_s": round(filled, 1),
                "aggregate_s": round(wall, 1),
                "aggregate_peak_mb": round(peak_mb, 1),
                "aggregate_s_per_run": round(wall / args.runs, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
