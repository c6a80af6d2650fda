"""The plan of a study: which cells it runs (:func:`plan_cells`, what :mod:`ltexp.study.run`
trains), and ``ltexp plan``: what it would do, cost and lack, without creating any run.

For the options ``ltexp main`` takes, the plan lists every cell (its run name and identity hash)
and whether the store already holds it finished (reused), half-trained (resumed from its last
epoch) or not at all (new); the images each cell processes; an estimate of the time on this
device, from a short measurement of each backbone's real training step (:func:`measure_step`,
two seconds at a small batch) or from the JSON of ``ltexp bench --json`` (``--bench-file``); the
checkpoint disk it needs against the free disk; and one line per thing that would stop the study:
the dataset's files, pretrained weights not in the cache, a tracking or artifact store that cannot
be reached or written, a device option this machine does not have. :attr:`Plan.ready` is the exit
status's answer: can the study start.

The estimate: per cell, ``epochs × train images / img/s`` for training, validation and test
images at three times that speed (a forward pass only), and :data:`CELL_OVERHEAD_S` of
bookkeeping (process work, evaluation artifacts, registration; measured in
docs/performance.md); plus :data:`STUDY_OVERHEAD_S` once (imports, data, the report).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from ltexp import cells, schema
from ltexp.cells import Cell, data_protocol, grid_cells, identity_hash
from ltexp.checkpoint import checkpoint_folder, folder_problem
from ltexp.config import Config
from ltexp.data import load_source, prepare
from ltexp.data.cifar import CIFAR10, CIFAR100
from ltexp.data.pipeline import ImageFormat, training_batches
from ltexp.errors import ConfigError, LtexpError
from ltexp.losses import build_loss
from ltexp.models import build_model, input_size
from ltexp.resources import reachable
from ltexp.textfiles import read_small_text
from ltexp.tracking import runs
from ltexp.tracking.datasets import prepared_digest
from ltexp.tracking.questions import best_tuned, finished_cells, unfinished_train_runs
from ltexp.training import autocast_dtype, make_optimizer, resolve_device, train_one_epoch
from ltexp.training.setup import check_weights, resolve_train

log = logging.getLogger(__name__)

CELL_OVERHEAD_S = 2.0  # outside the epochs, per demo cell on 2 CPU cores (docs/performance.md)
STUDY_OVERHEAD_S = 15.0  # imports, data preparation, the report
EVAL_SPEEDUP = 3.0  # a forward pass costs about a third of a training step
MEASURE_BATCH = 16  # the measured batch: a few seconds per backbone, even on a CPU
MEASURE_SECONDS = 2.0  # of measured training per backbone, after one warm-up pass
UNKNOWN_DIGEST = "unprepared"


@dataclass
class PlannedRun:
    """One cell of the plan."""

    name: str
    config_hash: str
    identity: dict[str, Any]
    status: str  # reused, resumed, new
    resume_epoch: int | None
    images: int | None  # training images over all its epochs (None: the data are missing)
    seconds: float | None


@dataclass
class Plan:
    """What ``ltexp main`` with these options would do."""

    experiment: str
    device: str
    cells: list[PlannedRun]
    speeds: dict[str, float]  # img/s of each backbone's training step
    seconds: float | None
    disk_needed: int
    disk_free: int
    problems: list[str] = field(default_factory=list)
    store_needed: int = 0  # what the new cells' registered versions add to the artifact store

    @property
    def ready(self) -> bool:
        return not self.problems

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ready": self.ready}, indent=2, default=str)

    def text(self) -> str:
        """The plan as a person reads it: a line per cell, the totals, then what is missing."""
        lines = [f"plan of a study in experiment {self.experiment!r} on {self.device}:"]
        width = max((len(c.name) for c in self.cells), default=0)
        for c in self.cells:
            status = f"resumed from epoch {c.resume_epoch}" if c.status == "resumed" else c.status
            images = f"{c.images:,} images" if c.images is not None else "images unknown"
            time = _duration(c.seconds) if c.seconds is not None else "time unknown"
            lines.append(
                f"  {c.name:<{width}}  {c.config_hash[:12]}  {status:<22} {images:>16}  {time}"
            )
        counts = {s: sum(c.status == s for c in self.cells) for s in ("new", "resumed", "reused")}
        lines.append(
            f"{len(self.cells)} cells: {counts['new']} new, {counts['resumed']} resumed, "
            f"{counts['reused']} reused"
        )
        speeds = ", ".join(f"{m} {v:,.0f} img/s" for m, v in self.speeds.items())
        untimed = sorted({c.name.split("-")[0] for c in self.cells if c.seconds is None})
        lines.append(
            f"estimate: {_duration(self.seconds) if self.seconds is not None else 'unknown'}"
            f" on {self.device}" + (f" ({speeds})" if speeds else "")
        )
        if self.seconds is None and self.device == "cpu" and untimed:
            lines.append(
                "  ImageNet-size backbones are not timed on a CPU (minutes and gigabytes each, "
                "and nothing of the GPU they will train on): run `ltexp bench --model <name> "
                "--json > bench.json` on the training machine and give --bench-file bench.json"
            )
        lines.append(
            f"checkpoint disk: {self.disk_needed / 2**30:.2f} GiB needed, "
            f"{self.disk_free / 2**30:.1f} GiB free; registered versions: "
            f"{self.store_needed / 2**30:.2f} GiB in the artifact store"
        )
        if self.device.startswith("cuda"):
            lines.append(
                "GPU paths ltexp's CI cannot run (fused Adam, pinned memory, NCCL, bf16 on CUDA): "
                "check them once with `python scripts/gpu_check.py` (under 10 minutes)"
            )
        lines += _missing_lines(self.problems)
        lines.append("ready to start" if self.ready else "not ready: see the missing lines above")
        return "\n".join(lines)


def _missing_lines(problems: list[str]) -> list[str]:
    """``missing:`` lines, the advice several of them end with said once after them (the four
    backbones' weights each ended with the same 300 characters)."""
    tails = [p.split("; ", 1)[1] if "; " in p else "" for p in problems]
    shared = [t for t in dict.fromkeys(tails) if t and tails.count(t) > 1]
    lines = []
    for problem, tail in zip(problems, tails, strict=True):
        if tail in shared:
            mark = "*" * (shared.index(tail) + 1)
            lines.append(f"missing: {problem.split('; ', 1)[0]} ({mark})")
        else:
            lines.append(f"missing: {problem}")
    lines += [f"({'*' * (i + 1)}) {tail}" for i, tail in enumerate(shared)]
    return lines


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s"


@dataclass(frozen=True)
class PlannedCell:
    """A grid cell as the study runs it: its config (with a search's best values when tuned),
    its identity (:mod:`ltexp.cells`), and the search it took them from."""

    cell: Cell
    config: Config
    identity: dict[str, Any]
    tuned_from: str | None = None

    @property
    def name(self) -> str:
        return cells.run_name(self.identity)

    @property
    def config_hash(self) -> str:
        return cells.identity_hash(self.identity)


def plan_cells(cfg: Config, digest: str) -> tuple[list[PlannedCell], list[PlannedCell]]:
    """The grid's cells as they will run on data ``digest``: the cells to train (every cell's
    stage 1, once), and the second stages to apply to them afterwards."""
    grid = grid_cells(cfg)
    stage1: dict[Cell, PlannedCell] = {}
    for cell in dict.fromkeys(c.stage1() for c in grid):
        cell_cfg = cell.config(cfg)
        tuned_from, values = best_tuned(cell_cfg) if cfg.study.tuned else (None, {})
        cell_cfg = cell.config(cfg, values)
        identity = cells.identity(cell_cfg, digest, tuned=tuned_from is not None)
        stage1[cell] = PlannedCell(cell, cell_cfg, identity, tuned_from)
    stage2 = []
    for cell in grid:
        if cell.stage == 2:
            first = stage1[cell.stage1()]
            cell_cfg = cell.config(first.config)
            identity = cells.stage2_identity(first.identity, cell_cfg)
            stage2.append(PlannedCell(cell, cell_cfg, identity, first.tuned_from))
    return list(stage1.values()), stage2


def make_plan(
    cfg: Config,
    bench_file: str = "",
    measure: Callable[[Config], float] | None = None,
) -> Plan:
    """The plan of the study ``cfg`` describes; nothing is created in the store.

    Args:
        bench_file: ``ltexp bench --json`` output to take the speeds from instead of measuring.
        measure: img/s of a cell's training step (default :func:`measure_step`).
    """
    grid_cells(cfg)  # every unknown grid value refused first
    problems: list[str] = []
    experiment = runs.experiment_name(
        cfg.experiment, runs.default_experiment(cfg.preset, cfg.data.dataset)
    )
    store_ok = _check_store(problems)
    _check_request(cfg, problems, store_ok)
    prepared = _data(cfg, problems)
    digest = prepared.digest() if prepared is not None else UNKNOWN_DIGEST
    trained, decoupled = plan_cells(cfg, digest)
    _check_weights([p.config for p in trained], problems)
    device = _check_device(cfg, problems)
    speeds = _speeds({p.config.train.model: p.config for p in trained}, bench_file, measure)
    done, unfinished = (
        _store_state(experiment, digest, cfg.runtime.checkpoint_dir) if store_ok else (set(), {})
    )
    rows, total, needed, store = [], STUDY_OVERHEAD_S, 0, 0
    for planned in [*trained, *decoupled]:
        h = identity_hash(planned.identity)
        images, seconds = _cost(planned.config, prepared, speeds, planned in decoupled)
        status, epoch = "new", None
        if h in done:
            status, seconds = "reused", 0.0
        elif h in unfinished:
            status, epoch = "resumed", unfinished[h]
            t = planned.config.train
            if seconds is not None and t.epochs:
                seconds *= max(t.epochs - epoch, 0) / t.epochs
        if seconds is None:
            total = None
        elif total is not None:
            total += seconds
        rows.append(PlannedRun(planned.name, h, planned.identity, status, epoch, images, seconds))
        if status == "new" and planned not in decoupled:
            needed += _checkpoint_bytes(planned.config)
        if status == "new":
            store += _version_bytes(planned.config)
    free = _free_disk(cfg.runtime.checkpoint_dir)
    if needed > free:
        problems.append(
            f"checkpoints need about {needed / 2**30:.1f} GiB and {cfg.runtime.checkpoint_dir!r} "
            f"has {free / 2**30:.1f} GiB free; free some or choose --checkpoint-dir"
        )
    return Plan(experiment, device, rows, speeds, total, needed, free, problems, store)


def _check_store(problems: list[str]) -> bool:
    """The tracking store answers, and a local store's and artifacts' folders are writable."""
    uri = mlflow.get_tracking_uri()
    try:
        if uri.startswith(("postgresql", "mysql", "mssql")):
            runs.check_database(uri, "the tracking store")  # seconds, not MLflow's retries
        runs.client().search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - reported as one line
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        problems.append(
            f"tracking store {runs.safe_uri(uri)} cannot be reached: {runs.redact(first)}"
        )
        return False
    local = []
    if uri.startswith("sqlite:///"):
        local.append(Path(uri.removeprefix("sqlite:///")).parent)
        # artifacts of a local store go under ./mlruns unless a run says otherwise
        local.append(Path(os.environ.get("MLFLOW_ARTIFACTS_DESTINATION", "mlruns")))
    for folder in local:
        existing = _existing(folder)
        if not os.access(existing, os.W_OK):
            problems.append(f"{str(folder)!r} is not writable: the store cannot record runs there")
    return True


def _check_request(cfg: Config, problems: list[str], store_ok: bool) -> None:
    """What the study's commands refuse before they start, refused here too: a checkpoint or
    report folder that cannot be written, a data_run that is no finished prepare_data run."""
    for key, folder in (
        ("checkpoint_dir", cfg.runtime.checkpoint_dir),
        ("output_dir", cfg.report.output_dir),
    ):
        why = folder_problem(folder) if folder else ""
        if why:
            problems.append(f"{key} {folder!r} cannot be a writable folder ({why})")
    if cfg.train.data_run and store_ok:
        try:
            prepared_digest(cfg.train.data_run)
        except LtexpError as e:
            problems.append(f"data_run: {e}")


def _data(cfg: Config, problems: list[str]) -> Any:
    """The prepared data (in memory, nothing logged), or None with the reason in ``problems``."""
    d = cfg.data
    try:
        source = load_source(d.dataset, d.data_root, False, **cfg.dataset_options())
        return prepare(source, data_protocol(cfg, source))[0]
    except LtexpError as e:
        line = str(e)
        release = {r.name: r for r in (CIFAR100, CIFAR10)}.get(d.dataset)
        if d.download and release is not None:
            host = "/".join(release.url.split("/")[:3])
            line += (
                f" (it downloads from {host}, which answers)"
                if reachable(release.url)
                else f" ({host}, where it downloads from, does not answer here)"
            )
        problems.append(f"data: {line}")
        return None


def _check_weights(configs: list[Config], problems: list[str]) -> None:

    seen = set()
    for cfg in configs:
        key = (cfg.train.model, cfg.train.pretrained)
        if key in seen:
            continue
        seen.add(key)
        try:
            check_weights(cfg, resolve_train(cfg))
        except ConfigError:
            raise
        except LtexpError as e:
            problems.append(f"weights: {e}")


def _check_device(cfg: Config, problems: list[str]) -> str:

    spec = resolve_train(cfg)  # a device that is not here is refused as bad input
    device = spec.device
    if (
        cfg.runtime.precision == "bf16"
        and device.type == "cuda"
        and not torch.cuda.is_bf16_supported()
    ):
        problems.append(f"precision=bf16: {torch.cuda.get_device_name(device)} has no bf16")
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("g++")
    if cfg.runtime.compile and device.type == "cpu" and not compiler:
        problems.append("compile=true on the CPU needs a C compiler (inductor); none is here")
    return str(device)


def _speeds(
    configs: dict[str, Config], bench_file: str, measure: Callable[[Config], float] | None
) -> dict[str, float]:
    """img/s of each backbone's training step: from ``bench_file``, else measured."""
    if bench_file:
        return _bench_speeds(bench_file, list(configs))
    measure = measure or measure_step
    speeds = {}
    for model, cfg in configs.items():
        if not _measurable_here(cfg):
            continue
        print(f"plan: timing {model}'s training step ({MEASURE_SECONDS:g} s) …", file=sys.stderr)
        speeds[model] = measure(cfg)
    return speeds


# an input this large is an ImageNet backbone: timing it on a CPU takes minutes and gigabytes
# each, and says nothing of the GPU it will train on
CPU_MEASURE_MAX_SIZE = 128


def _measurable_here(cfg: Config) -> bool:
    """Whether the cell's training step is timed here: not an ImageNet-size backbone on a
    CPU (its estimate is then unknown, and the plan says how to give one)."""
    device = resolve_device(cfg.runtime.device)
    return device.type != "cpu" or input_size(cfg.train.model, cfg.train.image_size) < (
        CPU_MEASURE_MAX_SIZE
    )


# the fastest a training step could be anywhere (images per second): beyond it, a typo
MAX_SPEED = 1e7


def _bench_speeds(bench_file: str, models: list[str]) -> dict[str, float]:
    """Each model's ``pipeline_img_s`` from ``ltexp bench --json`` output, checked: a regular
    file of at most 4 MB, JSON (not nested beyond a bench's rows), a positive finite speed of at
    most :data:`MAX_SPEED` for every model the plan needs.

    Raises:
        ConfigError: one line naming the file and what is wrong.
    """
    text = read_small_text(bench_file, "bench file")
    what = f"bench file {bench_file!r}"
    try:
        rows = json.loads(text)
    except RecursionError:
        raise ConfigError(
            f"{what} is nested too deeply to be `ltexp bench --json` output"
        ) from None
    except ValueError as e:
        raise ConfigError(f"{what} is not the JSON of `ltexp bench --json` ({e})") from None
    rows = rows if isinstance(rows, list) else [rows]
    speeds: dict[str, float] = {}
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("model"), str):
            continue
        value = row.get("pipeline_img_s")
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not 0 < value <= MAX_SPEED or not math.isfinite(value):  # NaN: not > 0
            raise ConfigError(
                f"{what}: pipeline_img_s of {row['model'][:40]!r} is {str(value)[:40]}; it must "
                f"be a number of images per second above 0 and at most {MAX_SPEED:,.0f}"
            )
        speeds[row["model"]] = float(value)
    missing = sorted(set(models) - set(speeds))
    if missing:
        raise ConfigError(
            f"{what} has no pipeline_img_s for {', '.join(missing)}; "
            f"run `ltexp bench --models {','.join(missing)} --json` and add them"
        )
    return {m: speeds[m] for m in models}


def measure_step(cfg: Config, seconds: float = MEASURE_SECONDS) -> float:
    """img/s of ltexp's training step (:func:`ltexp.training.train_one_epoch`: augmentation,
    loss, optimizer) for this cell's model, size, precision and device, at a batch of at most
    :data:`MEASURE_BATCH`: one warm-up pass, then passes until ``seconds`` have gone by."""
    spec = resolve_train(cfg)
    t = cfg.train
    if cfg.runtime.num_threads:  # as the cell will train
        torch.set_num_threads(cfg.runtime.num_threads)
    batch = min(t.batch_size, MEASURE_BATCH)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2 * batch, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=2 * batch).astype(np.int64)
    amp = autocast_dtype(cfg.runtime.precision, spec.device)
    image_format = ImageFormat(spec.device, spec.image_size, amp or torch.float32)
    batches = training_batches(images, labels, batch, image_format, seed=0, epochs=1)
    torch.manual_seed(0)
    model = build_model(t.model, 10, pretrained=False, head=spec.head).to(spec.device)
    opt = make_optimizer(
        t.optimizer,
        model.parameters(),
        lr=t.lr,
        betas=tuple(t.betas),
        eps=t.eps,
        weight_decay=t.weight_decay,
        momentum=t.momentum,
        device=spec.device,
    )
    loss_fn = build_loss(t.loss, [len(labels) // 10] * 10).to(spec.device)
    train_one_epoch(model, loss_fn, batches, opt, 0, amp=amp)  # warm-up: allocations, kernels
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += train_one_epoch(model, loss_fn, batches, opt, 1, amp=amp).images
    speed = done / (time.perf_counter() - start)
    log.info("plan: %s trains at %.0f img/s on %s", t.model, speed, spec.device)
    return speed


def epochs_images(cfg: Config, train: int, second_stage: bool) -> int:
    """Training images a cell processes over its epochs (a second stage's own epochs)."""
    method = cfg.decouple.stage2
    if not second_stage:
        return cfg.train.epochs * train
    return (0 if method == "tau_norm" else cfg.decouple.epochs(method)) * train


def _cost(
    cfg: Config, prepared: Any, speeds: dict[str, float], second_stage: bool
) -> tuple[int | None, float | None]:
    """(training images over the cell's epochs, its estimated seconds)."""
    if prepared is None:
        return None, None
    t = cfg.train
    speed = speeds.get(t.model)
    train = len(prepared.splits[prepared.training_split(t.train_split)])
    if speed is None:  # not timed here (an ImageNet backbone on a CPU)
        return epochs_images(cfg, train, second_stage), None
    tests = ("test_balanced", "test_lt")
    evaluated = sum(len(prepared.splits[s]) for s in tests if prepared.has(s))
    val = len(prepared.splits["val"]) if prepared.has("val") else 0
    method = cfg.decouple.stage2
    if not second_stage:
        epochs = t.epochs
    else:  # tau_norm trains nothing: it rescales the classifier's rows
        epochs = 0 if method == "tau_norm" else cfg.decouple.epochs(method)
    # a second stage and a linear probe train the classifier only: the backward pass stops at
    # the head (other finetune modes still pass gradients down through the frozen layers)
    head_only = second_stage or t.finetune == "linear"
    step = speed * (EVAL_SPEEDUP if head_only else 1.0)
    images = epochs * train
    seconds = images / step + (epochs * val + evaluated) / (speed * EVAL_SPEEDUP)
    return images, seconds + CELL_OVERHEAD_S


def _store_state(
    experiment: str, digest: str, checkpoint_dir: str
) -> tuple[set[str], dict[str, int]]:
    """(identity hashes finished and evaluated, identity hash → last epoch of an unfinished run
    whose checkpoints are on this disk) in ``experiment``."""
    exp = runs.client().get_experiment_by_name(experiment)
    if exp is None or digest == UNKNOWN_DIGEST:
        return set(), {}
    done = {h for h, (_, evaluation) in finished_cells(exp.experiment_id).items() if evaluation}
    unfinished: dict[str, int] = {}
    for run in unfinished_train_runs(exp.experiment_id):
        h = run.data.tags.get(schema.CONFIG_HASH)
        resumable = checkpoint_folder(checkpoint_dir, run.info.run_id).is_dir()
        if h and h not in unfinished and run.info.status != "RUNNING" and resumable:
            history = runs.client().get_metric_history(run.info.run_id, schema.VAL_ACC1)
            unfinished[h] = max((m.step for m in history), default=0)
    return done, unfinished


EXAMPLE_BYTES_PER_VALUE = 20  # MLflow's input example as JSON, twice (measured: 5 + 15)


def _version_bytes(cfg: Config) -> int:
    """A registered version: the weights twice, fp32 (the TorchScript program and the
    safetensors file ltexp.load_model verifies) and its one-image input example as JSON; its code
    and metadata are kilobytes."""
    side = input_size(cfg.train.model, cfg.train.image_size)
    return _parameters(cfg.train.model) * 4 * 2 + EXAMPLE_BYTES_PER_VALUE * 3 * side * side


def _checkpoint_bytes(cfg: Config) -> int:
    """A cell's checkpoints: the best weights and the last state (weights and Adam's two
    moments), in fp32."""
    return _parameters(cfg.train.model) * 4 * (1 + 3)


@functools.cache
def _parameters(model: str) -> int:
    """Parameters of ``model`` (built on the meta device: no memory, no weights)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(model, 100, pretrained=False).parameters())


def _existing(folder: Path) -> Path:
    folder = folder.expanduser().absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _free_disk(folder: str) -> int:
    return shutil.disk_usage(_existing(Path(folder))).free


def record_on_launched_run(plan: Plan) -> None:
    """Under ``mlflow run -e plan`` MLflow creates a run whatever the command does: it holds the
    plan (``plan.json``, and the summary as its description) rather than nothing."""
    launched = runs.launched_run_id()
    if not launched:
        return
    c = runs.client()
    c.log_text(launched, plan.to_json(), schema.PLAN_ARTIFACT)
    c.set_tag(launched, schema.DESCRIPTION_TAG, "```\n" + plan.text() + "\n```")
    c.set_tag(launched, schema.RUN_NAME_TAG, f"plan-{plan.experiment}")
