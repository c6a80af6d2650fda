"""The decouple step: the second stage of Kang et al. 2020 on a registered model, as one run.

From a train run's registered version (``train_run=`` or ``model_uri=``): cRT re-trains the
classifier with class-balanced sampling, LWS learns one scale per class, τ-normalisation rescales
the classifier's rows with τ chosen on the validation set (:mod:`ltexp.training.decoupling`). The
run is a decouple run (``ltexp.stage1_run`` names the train run; it copies that run's params and
adds ``stage2, stage2_epochs, stage2_lr, stage2_tau, stage2_tau_form, stage1_run_id``), and its
model is registered as a model of its own, named after the variant (``…-ce-lt-crt``), tagged
``stage=2`` and ``method``. Evaluating it is the evaluate step's work, as for a train run.

Stage 2 trains with the stage-1 run's optimizer, batch size and seed (``stage2_lr`` may set
another learning rate) and a cosine schedule; the backbone runs in eval mode throughout.
"""

from __future__ import annotations

import csv
import logging
import tempfile
from pathlib import Path

import mlflow
import torch

from ltexp import cells, schema
from ltexp.checkpoint import BEST, checkpoint_folder, ensure_folder, save_weights
from ltexp.config import Config
from ltexp.data.pipeline import ImageFormat, evaluation_batches, training_batches
from ltexp.data.splits import TRAINING_SETS
from ltexp.errors import ConfigError
from ltexp.models import model_spec
from ltexp.resources import resident_budget
from ltexp.tracking import claims, registered_models, runs
from ltexp.tracking.datasets import data_root_for, load_prepared
from ltexp.tracking.inputs import log_split_inputs
from ltexp.training import (
    TrainResult,
    autocast_dtype,
    resolve_device,
    seed_everything,
)
from ltexp.training.decoupling import (
    check_method,
    linear_head,
    plain_state,
    search_tau,
    train_classifier,
)
from ltexp.training.session import resolve_augment

log = logging.getLogger(__name__)

# what stage 2 takes from the stage-1 run (everything else of training is stage 2's own)
STAGE1_OPTIONS = ("seed", "batch_size", "optimizer", "lr", "weight_decay", "momentum", "eps")


def run_decouple(
    cfg: Config, stage1_run_id: str | None = None, parent_run_id: str | None = None
) -> TrainResult:
    """Decouple a train run's registered model (``cfg.decouple.stage2``); register the result.

    Args:
        stage1_run_id: the train run (default: ``train_run=``, else ``model_uri=``'s run).
        parent_run_id: the run to nest under (a study nests it under the stage-1 run).
    """
    d = cfg.decouple
    if d.stage2 == "none":
        raise ConfigError("decouple needs stage2=crt, stage2=tau_norm or stage2=lws")
    method = check_method(d.stage2)
    stage1, uri = registered_models.model_run(
        stage1_run_id or cfg.evaluate.train_run, cfg.evaluate.model_uri, (schema.Step.TRAIN,)
    )
    params = stage1.data.params
    if cfg.runtime.num_threads:
        torch.set_num_threads(cfg.runtime.num_threads)
    device = resolve_device(cfg.runtime.device)
    prepared = load_prepared(
        stage1.data.tags[schema.DATA_RUN],
        data_root_for(stage1, cfg.data.data_root),
        cfg.data.download,
    )
    model, info = registered_models.load_classifier(uri, device)
    path = model_spec(info.model).classifier
    linear_head(model, path)  # a cosine head is refused before a run exists
    ensure_folder(cfg.runtime.checkpoint_dir)
    base = cfg.replace(**{k: params[k] for k in STAGE1_OPTIONS if k in params})
    t = base.train
    lr = d.stage2_lr or t.lr
    epochs = d.epochs(method) if method != "tau_norm" else 0
    identity = cells.stage2_identity(runs.recorded_identity(stage1), cfg)
    chash = cells.decouple_hash(stage1.info.run_id, identity)
    exp_id = stage1.info.experiment_id
    claims.reap_dead_runs()
    launched, wrapper = (None, None) if parent_run_id else runs.launched_run_for(exp_id)
    name = cells.run_name(identity) if "model" in identity else f"{stage1.info.run_name}-{method}"
    tags = {
        schema.STAGE1_RUN: stage1.info.run_id,
        schema.DATA_RUN: stage1.data.tags[schema.DATA_RUN],
        schema.DATA_DIGEST: prepared.digest(),
        schema.CELL: name,
    }
    training_set = TRAINING_SETS[params["train_split"]]
    registered = schema.registered_model_name(
        params["dataset"],
        params["model"],
        params["loss"],
        params["train_split"],
        cells.variant(identity),
    )
    with claims.claimed_run(
        schema.Step.DECOUPLE,
        exp_id,
        identity,
        chash,
        run_name=name,
        tags=tags,
        parent_run_id=parent_run_id,
        launched=launched,
        wrapper=wrapper,
        once=parent_run_id is not None and not cfg.study.force,
        description=f"Stage 2 ({method}, Kang et al. 2020) of train run {stage1.info.run_id} "
        f"({uri}) on {prepared.dataset} {training_set}; registered as {registered}, stage=2.",
    ) as run:
        log_split_inputs(prepared, splits=(training_set, "val"))
        amp = autocast_dtype(cfg.runtime.precision, device)
        image_format = ImageFormat(
            device, info.image_size, amp or torch.float32, info.mean, info.std
        )
        val = prepared.splits["val"]
        val_batches = evaluation_batches(
            val.images, val.labels, cfg.runtime.eval_batch_size, image_format
        )
        folder = checkpoint_folder(cfg.runtime.checkpoint_dir, run.info.run_id)
        folder.mkdir(parents=True, exist_ok=True)
        tau = None
        if method == "tau_norm":
            tau, scores = search_tau(model, path, val_batches, amp, d.stage2_tau, d.stage2_tau_form)
            _log_tau_search(scores)
            log.info("tau_norm: tau %g, val_acc1 %.4f", tau, scores[tau])
            best_acc, best_epoch = scores[tau], 0
            save_weights(plain_state(model, path), folder / BEST)
        else:
            seed_everything(t.seed)
            train = prepared.splits[training_set]
            train_batches = training_batches(
                train.images,
                train.labels,
                t.batch_size,
                image_format,
                seed=t.seed,
                epochs=epochs,
                sampler="class_balanced",  # cRT and LWS re-balance by sampling
                augment=resolve_augment(t.augment, prepared),
                max_resident_bytes=resident_budget(cfg.runtime.data_on_device_gb, device),
            )
            best_acc, best_epoch = -1.0, 0
            for result in train_classifier(
                model,
                path,
                method,
                train_batches,
                val_batches,
                stage1=base,
                lr=lr,
                epochs=epochs,
                class_counts=prepared.class_counts(training_set),
                groups=prepared.groups(),
                amp=amp,
                device=device,
            ):
                if result.improved:
                    save_weights(plain_state(model, path), folder / BEST)
                runs.log_epoch(result.metrics, result.epoch)
                best_acc, best_epoch = result.best_val_acc1, result.best_epoch
                log.info(
                    "%s epoch %d/%d  val_acc1 %.4f",
                    method,
                    result.epoch,
                    epochs,
                    result.metrics[schema.VAL_ACC1],
                )
        settings = (
            {"stage2_tau": tau, "stage2_tau_form": d.stage2_tau_form}
            if tau is not None
            else {"stage2_epochs": epochs, "stage2_lr": lr}
        )
        stage1_params = {k: v for k, v in params.items() if k not in schema.MODEL_DIGEST_PARAMS}
        runs.log_params(
            {**stage1_params, "stage2": method, **settings, "stage1_run_id": stage1.info.run_id}
        )
        runs.log_once({schema.BEST_VAL_ACC1: best_acc, schema.BEST_EPOCH: best_epoch})
        if not cfg.train.register:
            return TrainResult(run.info.run_id, best_acc, best_epoch, "")
        version_tags = {
            schema.VersionTag.RUN_ID: run.info.run_id,
            schema.VersionTag.SEED: params.get("seed", ""),
            schema.VersionTag.EPOCH: str(best_epoch),
            schema.VersionTag.VAL_ACC1: f"{best_acc:.6f}",
            schema.VersionTag.DATA_DIGEST: prepared.digest(),
            schema.VersionTag.CONFIG_HASH: chash,
            schema.VersionTag.CELL: cells.cell_key(identity),
            schema.VersionTag.STAGE: "2",
            schema.VersionTag.METHOD: method,
        }
        model_params = {p: params[p] for p in schema.CELL_PARAMS if p in params}
        new_uri = registered_models.register_best(
            folder / BEST,
            info,
            registered,
            version_tags,
            logged_name=schema.logged_model_name(name),
            params={**model_params, "stage2": method},
        )
        return TrainResult(run.info.run_id, best_acc, best_epoch, new_uri)


def _log_tau_search(scores: dict[float, float]) -> None:
    """The validation top-1 of each τ tried (``tau_search.csv``)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / schema.TAU_SEARCH_ARTIFACT
        with open(out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["tau", schema.VAL_ACC1])
            w.writerows([[f"{k:g}", f"{v:.6f}"] for k, v in scores.items()])
        mlflow.log_artifact(str(out))
