"""``ltexp bench``: training throughput, the model-only ceiling vs ltexp's real training step.

(a) model only: forward + backward + optimizer step on one batch already on the device, the
    ceiling of what any input pipeline could feed.
(b) ltexp's training step: :func:`ltexp.training.train_one_epoch` over a CIFAR-sized uint8 set held
    on the device (the real augmentation, loss, optimizer and metric accumulation), then the real
    per-epoch MLflow logging, to a temporary store.

(c) the same step with the set streamed from pinned host memory (a set larger than the device's
    budget), ``streamed_ratio = streamed / model_only`` beside ``ratio``.

All run in one process, after warm-up, with the device synchronised, and report the median of
several repeats. ``ratio = pipeline / model_only``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ltexp.data.pipeline import ImageFormat, TensorBatches, training_batches
from ltexp.errors import LtexpError
from ltexp.losses import build_loss
from ltexp.models import build_model, model_spec
from ltexp.timing import TIMINGS_ENV
from ltexp.training import autocast, autocast_dtype, make_optimizer, resolve_device, train_one_epoch


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ltexp bench``."""
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="backbone to measure; repeat for several (default: resnet50 on "
        "CUDA, the demo model tiny_cnn on CPU)",
    )
    parser.add_argument(
        "--batch-size",
        type=bounded_int(1, 65_536),
        default=None,
        help="batch size (default: 128 on CUDA, the demo's 32 on CPU)",
    )
    parser.add_argument(
        "--image-size",
        type=bounded_int(8, 4096),
        default=None,
        help="input side (default: the model's, 224 for the pretrained ones)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "bf16", "fp16", "fp32"),
        help="auto: bf16 autocast on CUDA, fp32 on CPU (the training default)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--loss", default="ce", help="loss of the pipeline step (default ce)")
    parser.add_argument(
        "--steps",
        type=bounded_int(1, 100_000),
        default=None,
        help="steps per timed repeat (default: 30 on CUDA, 40 on CPU)",
    )
    parser.add_argument(
        "--repeats", type=bounded_int(1, 1000), default=5, help="timed repeats (median reported)"
    )
    parser.add_argument(
        "--warmup",
        type=bounded_int(0, 100),
        default=1,
        help="untimed warm-up repeats of both measurements",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--study",
        action="store_true",
        help="instead: run the demo study (`ltexp main --preset demo`) in a new temporary store "
        "and print its wall clock against the time its cells spent in training epochs, and where "
        "the rest went",
    )
    parser.add_argument(
        "--tune",
        action="store_true",
        help="instead: run a demo search (`ltexp tune`, 6 trials of tiny_cnn/focal) the same way; "
        "prints each trial's time outside its epochs",
    )
    parser.add_argument(
        "--args",
        dest="command_args",
        default="",
        help="more options for the measured command, as one string "
        "(`--args '--models tiny_cnn --epochs 2'`)",
    )


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high] (argparse prints the one-line error)."""

    def parse(text: str) -> int:
        stripped = text.strip()
        if not re.fullmatch(r"[+-]?[0-9]{1,12}", stripped) or not low <= int(stripped) <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}")
        return int(stripped)

    return parse


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmark for every requested model; print a table or JSON."""
    if args.study or args.tune:
        return _print_command_bench(args)

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    models = args.model or ["resnet50" if cuda else "tiny_cnn"]
    card = (
        torch.cuda.get_device_name(device)
        if cuda
        else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    )
    # each model's row as soon as it is measured: an ImageNet backbone on a CPU takes minutes
    shown = sys.stderr if args.json else sys.stdout
    print(f"{card}, torch {torch.__version__}", file=shown, flush=True)
    print(
        f"{'model':<16}{'batch':>6}{'size':>6}{'precision':>10}{'model-only img/s':>18}"
        f"{'ltexp step img/s':>18}{'ratio':>8}{'streamed img/s':>16}{'ratio':>8}",
        file=shown,
        flush=True,
    )
    rows = []
    for name in models:
        r = measure(
            name,
            device=device,
            batch_size=args.batch_size or (128 if cuda else 32),
            image_size=args.image_size,
            precision=args.precision,
            compile=args.compile,
            loss=args.loss,
            steps=args.steps or (30 if cuda else 40),
            repeats=args.repeats,
            warmup=args.warmup,
        )
        rows.append(r)
        print(
            f"{r['model']:<16}{r['batch_size']:>6}{r['image_size']:>6}{r['precision']:>10}"
            f"{r['model_only_img_s']:>18,.0f}{r['pipeline_img_s']:>18,.0f}{r['ratio']:>8.3f}"
            f"{r['streamed_img_s']:>16,.0f}{r['streamed_ratio']:>8.3f}",
            file=shown,
            flush=True,
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


def measure(
    name: str,
    *,
    device: Any,
    batch_size: int,
    image_size: int | None,
    precision: str,
    compile: bool,
    loss: str,
    steps: int,
    repeats: int,
    warmup: int,
) -> dict[str, Any]:
    """Both throughputs of one model (see the module docstring)."""
    size = image_size or model_spec(name).input_size
    amp = autocast_dtype(precision, device)
    channels_last = device.type == "cuda"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    num_classes = 100

    def fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.nn.Module]:
        """The same initial model and optimizer for both measurements."""
        torch.manual_seed(0)
        model = build_model(name, num_classes, pretrained=False).to(device, memory_format=fmt)
        opt = make_optimizer(
            "adam",
            model.parameters(),
            lr=1e-4,
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=0.0,
            momentum=0.0,
            device=device,
        )
        return model, opt, (torch.compile(model) if compile else model)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # (a) the ceiling: one batch already on the device, no data work at all
    _, opt_a, model_a = fresh()
    x = torch.randn(batch_size, 3, size, size, device=device).to(memory_format=fmt)
    if amp is not None:
        x = x.to(amp)
    y = torch.randint(0, num_classes, (batch_size,), device=device)

    def model_only() -> float:
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            with autocast(device, amp):
                out = model_a(x)
            loss_value = F.cross_entropy(out.float(), y)
            opt_a.zero_grad(set_to_none=True)
            loss_value.backward()
            opt_a.step()
        sync()
        return steps * batch_size / (time.perf_counter() - t)

    # (b) ltexp's step: the real pipeline, loss, optimizer, accumulation and epoch logging
    rng = np.random.default_rng(0)
    n = steps * batch_size
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n).astype(np.int64)
    image_format = ImageFormat(device, size, amp or torch.float32, channels_last=channels_last)
    batches = training_batches(images, labels, batch_size, image_format, seed=0, epochs=1)
    # (c) the same step with the set streamed from (pinned) host memory, as a set larger than
    # the device's budget is
    streamed_batches = training_batches(
        images, labels, batch_size, image_format, seed=0, epochs=1, max_resident_bytes=0
    )
    loss_fn = build_loss(loss, np.bincount(labels, minlength=num_classes).clip(min=1).tolist())
    loss_fn = loss_fn.to(device)
    _, opt_b, model_b = fresh()

    def ltexp_step(epoch: int, data: TensorBatches = batches) -> float:
        sync()
        t = time.perf_counter()
        stats = train_one_epoch(model_b, loss_fn, data, opt_b, epoch, amp=amp)
        runs.log_epoch({"train_loss": stats.loss, "train_acc1": stats.acc1}, epoch)
        sync()
        return stats.images / (time.perf_counter() - t)

    # MLflow (3 s to import) is imported here: `ltexp --help` reads this module's arguments
    import mlflow

    from ltexp.tracking import runs

    ceiling, pipeline, streamed = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/bench.db")
        try:
            with mlflow.start_run():
                for _ in range(warmup):
                    model_only()
                    ltexp_step(0)
                    ltexp_step(0, streamed_batches)
                # interleaved, so drifts of clock and temperature hit all alike
                for r in range(1, repeats + 1):
                    ceiling.append(model_only())
                    pipeline.append(ltexp_step(r))
                    streamed.append(ltexp_step(r, streamed_batches))
                runs.flush()
        finally:
            mlflow.set_tracking_uri(previous)
    a, b = statistics.median(ceiling), statistics.median(pipeline)
    c = statistics.median(streamed)
    return {
        "model": name,
        "device": str(device),
        "batch_size": batch_size,
        "image_size": size,
        "precision": {None: "fp32"}.get(amp, str(amp).removeprefix("torch.")),
        "compile": compile,
        "model_only_img_s": round(a, 1),
        "pipeline_img_s": round(b, 1),
        "ratio": round(b / a, 4),
        "streamed_img_s": round(c, 1),
        "streamed_ratio": round(c / a, 4),
        "torch": torch.__version__,
    }


# --- a whole command: where a study's (or a search's) wall clock goes ------------------------

STUDY_COMMAND = ("main", "--preset", "demo")
TUNE_COMMAND = (
    "tune",
    "--preset",
    "demo",
    "--model",
    "tiny_cnn",
    "--loss",
    "focal",
    "--space",
    "focal_gamma=uniform:0:5",
    "--trials",
    "6",
)
# phases that the train phase contains (ltexp.timing); the rest of it is runs and their records
TRAIN_PARTS = ("train.epochs", "train.checkpoint", "train.register")


def measure_command(command: list[str]) -> dict[str, Any]:
    """Run ``ltexp <command>`` in a new temporary folder and store (as a user would: a new
    process, MLflow's sqlite store); return its wall clock and its phases (ltexp.timing).

    ``ratio`` is the wall clock over the time spent in training epochs (train and validation
    passes, each epoch's own clock); ``outside_per_train`` is what each training (cell or trial)
    spent outside its epochs, start-up and report excluded.
    """
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            TIMINGS_ENV: f"{tmp}/timings.json",
        }
        env.pop("MLFLOW_RUN_ID", None)
        env.pop("MLFLOW_EXPERIMENT_ID", None)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "ltexp", *command, "--checkpoint-dir", f"{tmp}/checkpoints"],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
            raise LtexpError(f"the measured `ltexp {' '.join(command)}` failed: {tail[0]}")
        with open(f"{tmp}/timings.json") as f:
            timings = json.load(f)
    phases = {k: v["seconds"] for k, v in timings.items()}
    counts = {k: v["count"] for k, v in timings.items()}
    epochs = phases.get("train.epochs", 0.0)
    trainings = counts.get("train", 0)
    inside = sum(phases.get(k, 0.0) for k in ("prepare", "train", "evaluate", "report"))
    parts = {
        "start-up, imports, the study or search run, exit": wall - inside,
        "prepare data": phases.get("prepare", 0.0),
        "training epochs (train + validation)": epochs,
        "checkpoints (every epoch)": phases.get("train.checkpoint", 0.0),
        "registering the best checkpoint": phases.get("train.register", 0.0),
        "train runs: claims, params, inputs, close": phases.get("train", 0.0)
        - sum(phases.get(k, 0.0) for k in TRAIN_PARTS),
        "evaluate runs": phases.get("evaluate", 0.0),
        "report (aggregate)": phases.get("report", 0.0),
    }
    outside = phases.get("train", 0.0) - epochs + phases.get("evaluate", 0.0)
    return {
        "command": "ltexp " + " ".join(command),
        "wall_s": round(wall, 2),
        "epochs_s": round(epochs, 2),
        "ratio": round(wall / epochs, 3) if epochs else None,
        "trainings": trainings,
        "outside_per_train_s": round(outside / trainings, 3) if trainings else None,
        "parts_s": {k: round(v, 2) for k, v in parts.items()},
    }


def _print_command_bench(args: argparse.Namespace) -> int:

    command = [*(TUNE_COMMAND if args.tune else STUDY_COMMAND), *shlex.split(args.command_args)]
    row = measure_command(command)
    if args.json:
        print(json.dumps(row, indent=2))
        return 0
    print(row["command"])
    print(
        f"wall {row['wall_s']:.1f} s, training epochs {row['epochs_s']:.1f} s: "
        f"ratio {row['ratio']:.2f}; {row['trainings']} trainings, "
        f"{row['outside_per_train_s']:.2f} s each outside their epochs (evaluation included)"
    )
    for part, seconds in row["parts_s"].items():
        print(f"  {part:<50}{seconds:>8.1f} s{100 * seconds / row['wall_s']:>6.0f} %")
    return 0
