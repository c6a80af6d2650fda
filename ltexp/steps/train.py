"""The train step: fine-tune one model with one loss, tracked as one MLflow run.

Order of work: check every input (names, values, device, data digests) before a run exists; find
a run of the same config to resume, or start one; train with a checkpoint every epoch; log the
best-validation checkpoint to the Model Registry; evaluate it in a child run.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow
import torch
import yaml

from ltexp.checkpoint import (
    BEST,
    LAST,
    load_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    save_weights,
    set_rng_state,
)
from ltexp.config import Config
from ltexp.data import PreparedData, load_source, rebuild
from ltexp.data.pipeline import CIFAR_MEAN, CIFAR_STD, TensorBatches
from ltexp.data.splits import TRAINING_SETS
from ltexp.distributed import DistContext, broadcast, device_for
from ltexp.distributed import init as init_distributed
from ltexp.errors import ConfigError, TrackingError, TrainingError, unknown_name_error
from ltexp.losses import LOSSES, build_loss
from ltexp.models import build_model, count_parameters, model_spec
from ltexp.steps.data import find_prepared_run, load_prepared
from ltexp.tracking import models as registry
from ltexp.tracking import runs, schema
from ltexp.training import (
    autocast_dtype,
    fit,
    make_optimizer,
    make_scheduler,
    resolve_device,
    seed_everything,
    set_deterministic,
)

log = logging.getLogger(__name__)

# TrainConfig keys that change how a run executes, not what it computes.
RUNTIME_KEYS = (
    "device",
    "data_run",
    "checkpoint_dir",
    "resume",
    "evaluate_after",
    "system_metrics",
    "num_threads",
    "compile",
    "eval_batch_size",
)


@dataclass
class TrainResult:
    """What a finished train step produced."""

    run_id: str
    best_val_acc1: float
    best_epoch: int
    model_uri: str
    evaluate_run_id: str | None


@dataclass(frozen=True)
class TrainPlan:
    """A train request, checked and resolved; nothing has been created yet."""

    cfg: Config
    device: torch.device
    head: str
    image_size: int
    pretrained: bool | Path
    data_run_id: str
    prepared: PreparedData
    identity: dict
    config_hash: str
    experiment_id: str


def default_experiment(cfg: Config) -> str:
    """The experiment of a config: ``<preset>-<dataset>`` (e.g. ``demo-digits``)."""
    preset = Path(cfg.preset).stem if cfg.preset else "ltexp"
    return f"{preset}-{cfg.data.dataset}"


def resolve_head(cfg: Config) -> str:
    """``auto``: the cosine head LDAM was designed with (Cao et al. 2019), linear otherwise."""
    if cfg.train.head != "auto":
        return cfg.train.head
    return "cosine" if cfg.train.loss == "ldam" else "linear"


def parse_pretrained(value: str) -> bool | Path:
    """``true``/``false`` or a path to a local weights file."""
    low = value.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no", "none"):
        return False
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"pretrained must be true, false or a path to a weights file; {value!r} is not a file"
        )
    return path


def plan_train(cfg: Config, parent_run_id: str | None = None) -> TrainPlan:
    """Check and resolve everything about a train request (may run prepare_data first)."""
    t = cfg.train
    spec = model_spec(t.model)
    if t.loss not in LOSSES:
        raise unknown_name_error("loss", t.loss, list(LOSSES))
    device = resolve_device(t.device)
    image_size = t.image_size or spec.input_size
    if spec.fixed_input_size and image_size != spec.input_size:
        raise ConfigError(
            f"model {t.model} takes {spec.input_size}×{spec.input_size} images "
            f"only, got image_size={image_size}"
        )
    pretrained = parse_pretrained(t.pretrained)
    if t.drw_epoch is not None and t.drw_epoch >= t.epochs:
        log.warning(
            "drw_epoch=%s >= epochs=%s: class weights never switch on", t.drw_epoch, t.epochs
        )
    data_run_id = t.data_run or find_prepared_run(cfg.data)
    if data_run_id is None:
        from ltexp.steps.prepare_data import run_prepare_data

        log.info("no prepared %s data matches this config: preparing it", cfg.data.dataset)
        data_run_id = run_prepare_data(cfg, parent_run_id=parent_run_id)
    prepared = load_prepared(data_run_id, cfg.data.data_root, cfg.data.download)
    counts = prepared.class_counts(TRAINING_SETS[t.train_split])
    build_loss(t.loss, counts, **cfg.loss_hparams(t.loss))  # refuses bad names / hparams now
    exp_id = runs.resolve_experiment(cfg.experiment, default=default_experiment(cfg))
    runs.reap_dead_runs([exp_id])
    identity = {
        "train": {k: v for k, v in asdict(t).items() if k not in RUNTIME_KEYS},
        "head": resolve_head(cfg),
        "image_size": image_size,
        "loss_hparams": cfg.loss_hparams(t.loss),
        "data_digest": prepared.digest(),
    }
    return TrainPlan(
        cfg,
        device,
        resolve_head(cfg),
        image_size,
        pretrained,
        data_run_id,
        prepared,
        identity,
        runs.config_hash(identity),
        exp_id,
    )


def find_resumable(plan: TrainPlan) -> str | None:
    """The latest unfinished train run of the same config whose checkpoint folder is here."""
    candidates = runs.search_all(
        [plan.experiment_id],
        f"{schema.search_step(schema.Step.TRAIN)} and "
        f"tags.`{schema.CONFIG_HASH}` = '{plan.config_hash}' and "
        f"attributes.status != 'FINISHED'",
    )
    for run in candidates:
        if run.info.status == "RUNNING":
            continue  # a live process owns it (dead ones were reaped)
        # started on this disk, with or without a finished epoch
        if checkpoint_folder(plan.cfg, run.info.run_id).is_dir():
            return run.info.run_id
    return None


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """One process per run: a second one resuming the same run is refused, not interleaved."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainingError(
            f"cannot create the checkpoint folder {str(folder)!r} "
            f"({e.strerror or e}); set checkpoint_dir to a writable folder"
        ) from None
    with open(folder / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrackingError(f"another process is training run {folder.name}") from None
        yield


def run_train(cfg: Config, parent_run_id: str | None = None) -> TrainResult:
    """Train (or resume) one model; register its best checkpoint; evaluate it."""
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    ctx = DistContext.from_env()
    if ctx.enabled:
        device = device_for(ctx, resolve_device(cfg.train.device))
        cfg.train.device = str(device)
        init_distributed(ctx, device)
        if not ctx.is_main:
            return _train_replica(cfg, ctx, device)
    plan = plan_train(cfg, parent_run_id)
    t = cfg.train
    resume_id = t.resume or find_resumable(plan)
    if t.resume:
        run = runs.get_run(t.resume, schema.Step.TRAIN)
        if run.data.tags.get(schema.CONFIG_HASH) != plan.config_hash:
            raise ConfigError(
                f"run {t.resume} was trained with another config; resume it with "
                f"the same options, or start a new run"
            )
    launched = None if parent_run_id else runs.launched_run_id()
    if resume_id and launched and launched != resume_id:
        runs.client().set_tag(launched, schema.RESUMED_INTO, resume_id)
    tags = {
        schema.CONFIG_HASH: plan.config_hash,
        schema.DATA_RUN: plan.data_run_id,
        schema.DATA_DIGEST: plan.prepared.digest(),
        schema.CELL: schema.run_name(t.model, t.loss, t.train_split, t.seed),
    }
    training_set = TRAINING_SETS[t.train_split]
    description = (
        f"{t.model} fine-tuned with {t.loss} on {plan.prepared.dataset} {training_set} "
        f"({len(plan.prepared.splits[training_set]):,} images), seed {t.seed}, "
        f"{t.epochs} epochs; best-validation checkpoint "
        f"registered as {_registered_name(plan)}."
    )
    with runs.step_run(
        schema.Step.TRAIN,
        experiment_id=plan.experiment_id,
        run_id=resume_id or launched,
        run_name=schema.run_name(t.model, t.loss, t.train_split, t.seed),
        parent_run_id=parent_run_id,
        tags=tags,
        description=description,
        system_metrics=t.system_metrics,
    ) as run:
        run_id = run.info.run_id
        folder = checkpoint_folder(cfg, run_id)
        with _exclusive(folder):
            if resume_id is None:
                _log_run_inputs(plan)
            result = _train(plan, run_id, folder, ctx)
            evaluate_id = None
            if t.evaluate_after:
                from ltexp.steps.evaluate import run_evaluate

                evaluate_id, _ = run_evaluate(cfg, train_run_id=run_id, parent_run_id=run_id)
            return TrainResult(run_id, result[0], result[1], result[2], evaluate_id)


def _registered_name(plan: TrainPlan) -> str:
    t = plan.cfg.train
    return schema.registered_model_name(plan.prepared.dataset, t.model, t.loss, t.train_split)


def _log_run_inputs(plan: TrainPlan) -> None:
    from ltexp.steps.prepare_data import log_split_inputs

    cfg = plan.cfg
    params = cfg.flat(("data", "train"))
    params.update(
        {
            f"{cfg.train.loss}_{k}": v
            for k, v in cfg.loss_hparams(cfg.train.loss).items()
            if not k.startswith("drw_")
        }
    )
    params.update(
        {
            "dataset": plan.prepared.dataset,
            "head": plan.head,
            "image_size": plan.image_size,
            "device": str(plan.device),
            "data_run": plan.data_run_id,
            "precision": _precision_name(plan),
            "num_classes": plan.prepared.num_classes,
        }
    )
    params.pop("experiment", None)
    runs.log_params(params)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / schema.CONFIG_ARTIFACT
        resolved = cfg.to_dict(("data", "train", "losses", "evaluate"))
        resolved["resolved"] = {
            "head": plan.head,
            "image_size": plan.image_size,
            "device": str(plan.device),
            "data_run": plan.data_run_id,
            "precision": _precision_name(plan),
        }
        path.write_text(yaml.safe_dump(resolved, sort_keys=False))
        mlflow.log_artifact(str(path))
    log_split_inputs(plan.prepared, splits=(TRAINING_SETS[cfg.train.train_split], "val"))


def _precision_name(plan: TrainPlan) -> str:
    dtype = autocast_dtype(plan.cfg.train.precision, plan.device)
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


@dataclass
class Session:
    """Everything one process trains with, resumed from its checkpoint when there is one."""

    model: torch.nn.Module  # the plain module: checkpoints, validation, registration
    step_model: torch.nn.Module  # what the loop calls: DDP- and/or compile-wrapped
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_batches: TensorBatches
    val_batches: TensorBatches
    amp: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    start_epoch: int = 1
    best_val_acc1: float = -1.0
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def build_session(
    cfg: Config,
    prepared: PreparedData,
    device: torch.device,
    image_size: int,
    head: str,
    pretrained: bool | Path,
    last: Path,
    config_hash: str,
    ctx: DistContext,
) -> Session:
    """Model, loss, optimizer, schedule and data on ``device``; resumed from ``last`` if present."""
    t = cfg.train
    set_deterministic(t.deterministic)
    seed_everything(t.seed)
    model = build_model(t.model, prepared.num_classes, pretrained=pretrained, head=head)
    channels_last = t.channels_last and device.type == "cuda"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    split = prepared.splits[TRAINING_SETS[t.train_split]]
    loss_fn = build_loss(
        t.loss, prepared.class_counts(TRAINING_SETS[t.train_split]), **cfg.loss_hparams(t.loss)
    ).to(device)
    optimizer = make_optimizer(
        t.optimizer,
        model.parameters(),
        lr=t.lr,
        betas=t.betas,
        eps=t.eps,
        weight_decay=t.weight_decay,
        momentum=t.momentum,
        device=device,
    )
    scheduler = make_scheduler(
        t.scheduler, optimizer, epochs=t.epochs, step_size=t.step_size, gamma=t.lr_gamma
    )
    amp = autocast_dtype(t.precision, device)
    batch_dtype = amp or torch.float32
    train_batches = TensorBatches(
        split.images,
        split.labels,
        t.batch_size,
        device=device,
        image_size=image_size,
        train=True,
        seed=t.seed,
        dtype=batch_dtype,
        channels_last=channels_last,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    val = prepared.splits["val"]
    val_batches = TensorBatches(
        val.images,
        val.labels,
        t.eval_batch_size,
        device=device,
        image_size=image_size,
        dtype=batch_dtype,
        channels_last=channels_last,
    )
    step_model = model
    if ctx.enabled:
        step_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if t.compile:
        step_model = torch.compile(step_model)
    session = Session(
        model,
        step_model,
        loss_fn,
        optimizer,
        scheduler,
        train_batches,
        val_batches,
        amp,
        torch.amp.GradScaler(device.type) if amp == torch.float16 else None,
    )
    if last.is_file():
        state = load_checkpoint(last)
        if state.get("config_hash") != config_hash:
            raise TrackingError(f"checkpoint {str(last)!r} belongs to another config")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        session.start_epoch = state["epoch"] + 1
        session.best_val_acc1, session.best_epoch = state["best_val_acc1"], state["best_epoch"]
        session.history = list(state["history"])
    return session


def _epochs(
    session: Session, cfg: Config, groups: dict[str, list[int]], ctx: DistContext
) -> Iterator:
    return fit(
        session.step_model,
        session.loss_fn,
        session.train_batches,
        session.val_batches,
        session.optimizer,
        session.scheduler,
        epochs=cfg.train.epochs,
        start_epoch=session.start_epoch,
        best_val_acc1=session.best_val_acc1,
        best_epoch=session.best_epoch,
        groups=groups,
        amp=session.amp,
        grad_scaler=session.scaler,
        is_main=ctx.is_main,
        eval_model=session.model,
    )


def _train(plan: TrainPlan, run_id: str, folder: Path, ctx: DistContext) -> tuple[float, int, str]:
    """Rank 0's training: resume, epochs with checkpoint and logging, registration."""
    t = plan.cfg.train
    last = folder / LAST
    # the other ranks rebuild the same data from the source files, without MLflow
    broadcast(
        {
            "run_id": run_id,
            "manifest": plan.prepared.manifest,
            "indices": plan.prepared.indices,
            "image_size": plan.image_size,
            "head": plan.head,
            "pretrained": plan.pretrained,
            "last": last,
            "config_hash": plan.config_hash,
        },
        ctx,
    )
    session = build_session(
        plan.cfg,
        plan.prepared,
        plan.device,
        plan.image_size,
        plan.head,
        plan.pretrained,
        last,
        plan.config_hash,
        ctx,
    )
    if session.start_epoch > 1:
        _deliver_missing_metrics(run_id, session.history)
        mlflow.set_tag(schema.RESUMED_FROM_EPOCH, str(session.start_epoch - 1))
        log.info("resuming run %s after epoch %d", run_id, session.start_epoch - 1)
    runs.log_params(
        {schema.NUM_PARAMS: count_parameters(session.model), "world_size": ctx.world_size}
    )
    best_acc, best_epoch = session.best_val_acc1, session.best_epoch
    for result in _epochs(session, plan.cfg, plan.prepared.groups(), ctx):
        if result.improved:
            save_weights(session.model.state_dict(), folder / BEST)
        session.history.append({"epoch": result.epoch, **result.metrics})
        # checkpoint before logging: an epoch's metrics are never logged for an epoch that a
        # resume would run again (and re-sent on resume if they were lost in flight)
        save_checkpoint(
            {
                "epoch": result.epoch,
                "model": session.model.state_dict(),
                "optimizer": session.optimizer.state_dict(),
                "scheduler": session.scheduler.state_dict(),
                "best_val_acc1": result.best_val_acc1,
                "best_epoch": result.best_epoch,
                "history": session.history,
                "rng": rng_state(),
                "config_hash": plan.config_hash,
            },
            last,
        )
        runs.log_epoch(result.metrics, result.epoch)
        best_acc, best_epoch = result.best_val_acc1, result.best_epoch
        log.info(
            "epoch %d/%d  train_loss %.4f  val_acc1 %.4f  (%.1f img/s)",
            result.epoch,
            t.epochs,
            result.metrics["train_loss"],
            result.metrics["val_acc1"],
            result.metrics["images_per_s"],
        )
    _ensure_delivered(run_id, session.history, last)
    mlflow.log_metrics({"best_val_acc1": best_acc, "best_epoch": best_epoch})
    return best_acc, best_epoch, _register(plan, run_id, folder, best_acc, best_epoch)


def _ensure_delivered(run_id: str, history: list[dict[str, float]], last: Path) -> None:
    """Every epoch's metrics are on the server, or the run fails saying so: never dropped."""
    try:
        runs.flush()
    except Exception as e:  # noqa: BLE001 - whatever failed, the checkpoint has the values
        log.warning(
            "metrics queued during the run were not delivered (%s); sending them "
            "again from the checkpoint",
            runs.error_line(e)[:200],
        )
    try:
        _deliver_missing_metrics(run_id, history)
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(
            f"the tracking server {mlflow.get_tracking_uri()} is unreachable, "
            f"so some epochs' metrics are not delivered; they are kept in "
            f"{str(last)!r} and sent when the same command is run again "
            f"({runs.error_line(e)[:160]})"
        ) from None


def _train_replica(cfg: Config, ctx: DistContext, device: torch.device) -> TrainResult:
    """A rank other than 0: same data, same steps, no MLflow, no files written."""
    setup = broadcast(None, ctx)
    source = load_source(
        setup["manifest"]["dataset"],
        cfg.data.data_root,
        cfg.data.download,
        **setup["manifest"]["dataset_options"],
    )
    prepared = rebuild(source, setup["manifest"], setup["indices"])  # verifies every digest
    session = build_session(
        cfg,
        prepared,
        device,
        setup["image_size"],
        setup["head"],
        setup["pretrained"],
        setup["last"],
        setup["config_hash"],
        ctx,
    )
    best = (session.best_val_acc1, session.best_epoch)
    for result in _epochs(session, cfg, prepared.groups(), ctx):
        best = (result.best_val_acc1, result.best_epoch)
    return TrainResult(setup["run_id"], best[0], best[1], "", None)


def _deliver_missing_metrics(run_id: str, history: list[dict[str, float]]) -> None:
    """Log the epochs of the checkpoint's history that never reached the tracking server."""
    logged = {m.step for m in runs.client().get_metric_history(run_id, "val_acc1")}
    for row in history:
        if row["epoch"] not in logged:
            metrics = {k: v for k, v in row.items() if k != "epoch"}
            mlflow.log_metrics(metrics, step=int(row["epoch"]))


def _register(plan: TrainPlan, run_id: str, folder: Path, best_acc: float, best_epoch: int) -> str:
    """Register the best checkpoint once per run (a resumed run reuses its version)."""
    name = _registered_name(plan)
    existing = registry.version_of_run(name, run_id)
    if existing:  # registered before the process died: never register twice
        mlflow.set_tag(schema.MODEL_URI, existing)
        registry.update_champion(name)
        return existing
    t = plan.cfg.train
    model = build_model(t.model, plan.prepared.num_classes, pretrained=False, head=plan.head)
    model.load_state_dict(load_weights(folder / BEST))
    info = registry.ModelInfo(
        t.model, plan.prepared.num_classes, plan.head, plan.image_size, CIFAR_MEAN, CIFAR_STD
    )
    uri = registry.log_and_register(
        model,
        info,
        name,
        {
            "run_id": run_id,
            "seed": str(t.seed),
            "epoch": str(best_epoch),
            "val_acc1": f"{best_acc:.6f}",
            "data_digest": plan.prepared.digest(),
            "config_hash": plan.config_hash,
        },
    )
    mlflow.set_tag(schema.MODEL_URI, uri)
    registry.update_champion(name)
    return uri


def checkpoint_folder(cfg: Config, run_id: str) -> Path:
    """Where the resume checkpoint of ``run_id`` lives."""
    return Path(cfg.train.checkpoint_dir).expanduser() / run_id
