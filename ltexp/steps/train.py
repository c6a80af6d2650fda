"""The train step: fine-tune one model with one loss, tracked as one MLflow run.

Order of work: check every input that needs no data (names, values, device); load and verify the
prepared data; find a run of the same identity to resume, or start one; train with a checkpoint
every epoch; register the best-validation checkpoint in the Model Registry. Evaluating it is the
evaluate step's work (the study, and ``ltexp train``, run it next).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import torch
import yaml

from ltexp import cells, schema
from ltexp.checkpoint import (
    BEST,
    LAST,
    ResumeState,
    checkpoint_folder,
    ensure_folder,
    exclusive,
    save_weights,
)
from ltexp.config import Config
from ltexp.data import PreparedData
from ltexp.data.splits import TRAINING_SETS
from ltexp.distributed import DistContext, device_for
from ltexp.distributed import init as init_distributed
from ltexp.errors import ConfigError, TrackingError
from ltexp.models import count_parameters
from ltexp.models.finetune import plain_state_dict
from ltexp.progress import labelled
from ltexp.timing import add as add_time
from ltexp.timing import timed
from ltexp.tracking import claims, registered_models, runs
from ltexp.tracking.datasets import find_prepared_run, load_prepared
from ltexp.tracking.inputs import log_split_inputs
from ltexp.tracking.queries import FINISHED, where
from ltexp.training import TrainResult, TrainSpec, resolve_device, resolve_train
from ltexp.training.session import (
    ReplicaSetup,
    build_seeded_model,
    build_session,
    share_setup,
    train_replica,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainHooks:
    """What a caller running many trainings of one cell (a search) adds to each.

    Attributes:
        run_name: the run's name instead of the cell's.
        tags: more tags on the run.
        on_epoch: called after each epoch is checkpointed and logged with ``(epoch, metrics)``;
            may raise :class:`~ltexp.errors.RunStopped` to end the run early (KILLED).
        trains_once: a FINISHED run of the same config already has the cell (default: within a
            study, unless ``force``).
        trial: ``<search>/<number>`` of a search's trial: a run of its own kind, never a cell.
        tuned: the config holds a search's best values (``main --tuned``).
    """

    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    on_epoch: Callable[[int, dict[str, float]], None] | None = None
    trains_once: bool | None = None
    trial: str = ""
    tuned: bool = False


@timed("train")
def run_train(
    cfg: Config, parent_run_id: str | None = None, hooks: TrainHooks | None = None
) -> TrainResult:
    """Train (or resume) one model on prepared data; register its best checkpoint (unless
    ``register=false``).

    The prepared data is ``cfg.train.data_run``, else the latest matching prepare_data run.
    """
    hooks = hooks or TrainHooks()
    if cfg.runtime.num_threads:
        torch.set_num_threads(cfg.runtime.num_threads)
    ctx = DistContext.from_env()
    if ctx.enabled:
        device = device_for(ctx, resolve_device(cfg.runtime.device))
        cfg = cfg.replace(device=str(device))
        init_distributed(ctx, device)
        if not ctx.is_main:
            setup = train_replica(cfg, ctx)
            return TrainResult(setup.run_id, -1.0, 0, "")
    spec = resolve_train(cfg)
    t = cfg.train
    data_run = t.data_run or find_prepared_run(cfg)
    if not data_run:
        raise TrackingError(
            f"no prepared {cfg.data.dataset} data matches this config; run `ltexp prepare-data` "
            f"with the same data options first, or give data_run=<prepare_data run id>"
        )
    prepared = load_prepared(data_run, cfg.data.data_root, cfg.data.download)
    prepared.training_split(t.train_split)
    # weights (missing, offline, not a state dict) and folders are refused before any run exists
    model = build_seeded_model(cfg, spec, prepared.num_classes)
    ensure_folder(cfg.runtime.checkpoint_dir)
    kind = cells.RunKind.TRIAL if hooks.trial else cells.RunKind.CELL
    identity = cells.identity(cfg, prepared.digest(), kind, trial=hooks.trial, tuned=hooks.tuned)
    chash = cells.identity_hash(identity)
    exp_id = runs.resolve_experiment(
        cfg.experiment, default=runs.default_experiment(cfg.preset, cfg.data.dataset)
    )
    claims.reap_dead_runs()
    resume_id = _run_to_resume(cfg, exp_id, chash)
    launched = None if parent_run_id else runs.launched_run_id()
    if resume_id and launched and launched != resume_id:
        runs.client().set_tag(launched, schema.RESUMED_INTO, resume_id)
    cell = cells.run_name(identity)
    name = hooks.run_name or cell
    registered = schema.registered_model_name(
        prepared.dataset, t.model, t.loss, t.train_split, cells.variant(identity)
    )
    training_set = TRAINING_SETS[t.train_split]
    tags = {
        schema.DATA_RUN: data_run,
        schema.DATA_DIGEST: prepared.digest(),
        schema.CELL: cell,
        **hooks.tags,
    }
    with claims.claimed_run(
        schema.Step.TRAIN,
        exp_id,
        identity,
        chash,
        run_name=name,
        tags=tags,
        parent_run_id=parent_run_id,
        launched=launched,
        # a study's cell is trained once; a plain `ltexp train` may train a config again
        once=(
            hooks.trains_once
            if hooks.trains_once is not None
            else parent_run_id is not None and not cfg.study.force
        ),
        resume_id=resume_id,
        description=(
            f"{t.model} fine-tuned with {t.loss} on {prepared.dataset} {training_set} "
            f"({len(prepared.splits[training_set]):,} images), seed {t.seed}, {t.epochs} "
            f"epochs; best-validation checkpoint registered as {registered}."
        ),
        system_metrics=(
            spec.device.type == "cuda"
            if cfg.runtime.system_metrics is None
            else cfg.runtime.system_metrics
        ),
    ) as run:
        run_id = run.info.run_id
        folder = checkpoint_folder(cfg.runtime.checkpoint_dir, run_id)
        with exclusive(folder), labelled(name):
            if resume_id is None:
                _log_run_inputs(cfg, spec, prepared, data_run)
            return _train(
                cfg, spec, prepared, model, run_id, folder, identity, registered, ctx, hooks
            )


def _run_to_resume(cfg: Config, exp_id: str, chash: str) -> str | None:
    """The run named by ``resume``; else, unless ``resume=false``, the latest unfinished run of
    the same identity whose checkpoint folder is on this disk."""
    wanted = cfg.train.resume
    if wanted.strip().lower() in ("false", "no", "0"):
        return None
    if wanted:
        run = runs.get_run(wanted, schema.Step.TRAIN)
        if run.data.tags.get(schema.CONFIG_HASH) != chash:
            raise ConfigError(
                f"run {wanted} was trained with another config; resume it with "
                f"the same options, or start a new run"
            )
        return wanted
    candidates = runs.search_all(
        [exp_id],
        where(schema.Step.TRAIN, tags={schema.CONFIG_HASH: chash}, not_status=(FINISHED,)),
    )
    for run in candidates:
        if run.info.status == "RUNNING":
            continue  # a live process owns it (dead ones were reaped)
        if checkpoint_folder(cfg.runtime.checkpoint_dir, run.info.run_id).is_dir():
            return run.info.run_id
    return None


def _log_run_inputs(cfg: Config, spec: TrainSpec, prepared: PreparedData, data_run: str) -> None:
    """Params (every resolved option), ``config.yaml`` and the dataset inputs of a new run."""
    params = cfg.flat(("data", "train", "runtime"))
    params.pop("experiment", None)
    params.update(cfg.loss_settings())
    resolved = {
        "dataset": prepared.dataset,
        "head": spec.head,
        "image_size": spec.image_size,
        "device": str(spec.device),
        "data_run": data_run,
        "precision": spec.precision_name,
        "num_classes": prepared.num_classes,
    }
    runs.log_params({**params, **resolved})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / schema.CONFIG_ARTIFACT
        document = cfg.to_dict(("data", "train", "runtime", "losses", "evaluate"))
        document["resolved"] = {k: resolved[k] for k in ("head", "image_size", "device")}
        document["resolved"].update(data_run=data_run, precision=spec.precision_name)
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        mlflow.log_artifact(str(path))
    log_split_inputs(prepared, splits=(TRAINING_SETS[cfg.train.train_split], "val"))


def _train(
    cfg: Config,
    spec: TrainSpec,
    prepared: PreparedData,
    model: torch.nn.Module,
    run_id: str,
    folder: Path,
    identity: dict,
    registered: str,
    ctx: DistContext,
    hooks: TrainHooks,
) -> TrainResult:
    """Rank 0's training: resume, epochs with checkpoint and logging, registration."""
    t = cfg.train
    chash = cells.identity_hash(identity)
    last = folder / LAST
    setup = ReplicaSetup(run_id, prepared.manifest, prepared.indices, spec, last, chash)
    share_setup(setup, ctx)  # the other ranks rebuild the same data, without MLflow
    session = build_session(cfg, prepared, spec, ctx, model=model)
    if last.is_file():
        session.resume_from(ResumeState.load(last, config_hash=chash, epochs=t.epochs), last)
        runs.deliver_history(run_id, session.history)
        mlflow.set_tag(schema.RESUMED_FROM_EPOCH, str(session.start_epoch - 1))
        log.info("resuming run %s after epoch %d", run_id, session.start_epoch - 1)
    trainable = (
        session.finetune.trainable_count(session.start_epoch)
        if session.finetune
        else count_parameters(session.model)
    )
    runs.log_params(
        {
            schema.NUM_PARAMS: count_parameters(session.model),
            schema.TRAINABLE_PARAMS: trainable,
            schema.WORLD_SIZE: ctx.world_size,
        }
    )
    best_acc, best_epoch = session.best_val_acc1, session.best_epoch
    for result in session.epochs_left():
        add_time("train.epochs", result.metrics[schema.EPOCH_SECONDS])
        with timed("train.checkpoint"):
            if result.improved:
                # LoRA's updates merged: the best checkpoint is the plain architecture's
                save_weights(plain_state_dict(session.model), folder / BEST)
            session.history.append({"epoch": result.epoch, **result.metrics})
            # checkpoint before logging: an epoch's metrics are never logged for an epoch that
            # a resume would run again (and re-sent on resume if they were lost in flight)
            session.resume_state(result, chash).save(last)
        runs.log_epoch(result.metrics, result.epoch)
        best_acc, best_epoch = result.best_val_acc1, result.best_epoch
        if hooks.on_epoch is not None:
            hooks.on_epoch(result.epoch, result.metrics)
        log.info(
            "epoch %d/%d  train_loss %.4f  val_acc1 %.4f  (%.1f img/s)",
            result.epoch,
            t.epochs,
            result.metrics[schema.TRAIN_LOSS],
            result.metrics[schema.VAL_ACC1],
            result.metrics[schema.IMAGES_PER_S],
        )
    runs.ensure_delivered(run_id, session.history, str(last))
    runs.log_once({schema.BEST_VAL_ACC1: best_acc, schema.BEST_EPOCH: best_epoch})
    if not cfg.train.register:
        return TrainResult(run_id, best_acc, best_epoch, "")
    info = registered_models.ModelInfo(
        t.model,
        prepared.num_classes,
        spec.head,
        spec.image_size,
        spec.mean,
        spec.std,
        tuple(prepared.class_names),
    )
    tags = {
        schema.VersionTag.RUN_ID: run_id,
        schema.VersionTag.SEED: str(t.seed),
        schema.VersionTag.EPOCH: str(best_epoch),
        schema.VersionTag.VAL_ACC1: f"{best_acc:.6f}",
        schema.VersionTag.DATA_DIGEST: prepared.digest(),
        schema.VersionTag.CONFIG_HASH: chash,
        schema.VersionTag.CELL: cells.cell_key(identity),
        schema.VersionTag.STAGE: "1",
    }
    # what the experiment's Models view shows beside each model: the cell and its loss settings
    model_params = {
        "dataset": prepared.dataset,
        "model": t.model,
        "loss": t.loss,
        "train_split": t.train_split,
        "seed": t.seed,
        **cfg.loss_settings(),
        **(
            {"drw_epoch": t.drw_epoch, "drw_beta": t.drw_beta, "drw_reduction": t.drw_reduction}
            if t.drw_epoch is not None
            else {}
        ),
    }
    with timed("train.register"):
        uri = registered_models.register_best(
            folder / BEST,
            info,
            registered,
            tags,
            logged_name=schema.logged_model_name(cells.run_name(identity)),
            params=model_params,
        )
    return TrainResult(run_id, best_acc, best_epoch, uri)
