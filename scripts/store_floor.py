"""The least a demo cell could cost in MLflow: the floor under ltexp's bookkeeping.

Per cell, the bare MLflow calls of what a cell stores, with none of ltexp's own work: a train
run (40 params, 8 epochs of 6 metrics in one batch each), a TorchScript tiny_cnn logged as an
MLflow model and registered as a version, and a nested evaluate run (15 params, 50 metrics, 4
small artifacts). The first cell pays MLflow's once-per-process costs (its requirement check,
lazy imports) and is not counted. Prints the mean seconds per cell of each part as JSON.

    python scripts/store_floor.py [--cells 10] [--folder DIR]

docs/performance.md compares it with ``ltexp bench --study``'s seconds per cell outside the
epochs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path


def _cell(client, model, requirements: list[str], i: int) -> dict[str, float]:
    import mlflow
    from mlflow.entities import Metric

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    with mlflow.start_run(run_name=f"train-{i}") as run:
        mlflow.log_params({f"param_{k}": k for k in range(40)})
        for epoch in range(8):
            now = int(time.time() * 1000)
            metrics = [Metric(f"metric_{k}", 0.5, now, epoch) for k in range(6)]
            client.log_batch(run.info.run_id, metrics=metrics)
        seconds["train run"] = time.perf_counter() - started
        started = time.perf_counter()
        logged = mlflow.pytorch.log_model(
            model, name=f"model-{i}", pip_requirements=requirements, serialization_format="pickle"
        )
        mlflow.register_model(logged.model_uri, "store-floor")
        seconds["registration"] = time.perf_counter() - started
        started = time.perf_counter()
        with mlflow.start_run(run_name=f"evaluate-{i}", nested=True):
            mlflow.log_params({f"param_{k}": k for k in range(15)})
            mlflow.log_metrics({f"test_metric_{k}": 0.5 for k in range(50)})
            with tempfile.TemporaryDirectory() as tmp:
                for n in range(4):
                    (Path(tmp) / f"artifact_{n}.txt").write_text("x" * 20_000)
                mlflow.log_artifacts(tmp)
        seconds["evaluate run"] = time.perf_counter() - started
    return seconds


def measure(folder: Path, cells: int) -> dict[str, float]:
    """Mean seconds per cell of each part, over ``cells`` cells after a first, uncounted one."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import torch

    from ltexp.models import build_model
    from ltexp.tracking.registered_models import model_requirements

    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    mlflow.set_experiment("store-floor")
    client = mlflow.MlflowClient()
    model = torch.jit.script(build_model("tiny_cnn", 10, pretrained=False).eval())
    requirements = model_requirements()  # as ltexp registers a version
    _cell(client, model, requirements, 0)
    totals: dict[str, float] = {}
    for i in range(1, cells + 1):
        for part, s in _cell(client, model, requirements, i).items():
            totals[part] = totals.get(part, 0.0) + s / cells
    return {**{p: round(s, 4) for p, s in totals.items()}, "cell": round(sum(totals.values()), 4)}


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of cells, 1 or more")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=_count, default=10, help="cells measured (default 10)")
    parser.add_argument(
        "--folder", type=Path, help="an existing folder for the store (default: a new temp)"
    )
    args = parser.parse_args()
    if args.folder and not args.folder.is_dir():
        parser.error(f"--folder {args.folder} is not a folder; give an existing one")
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)  # MLflow's per-version lines
    if args.folder:
        print(json.dumps(measure(args.folder, args.cells)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure(Path(tmp), args.cells)))


if __name__ == "__main__":
    main()
