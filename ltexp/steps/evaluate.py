"""The evaluate step: test a registered checkpoint on every test split, as one MLflow run.

The run carries the params ``dataset, model, loss, train_split, seed`` and the grid axes
``sampler, mixing, stage2`` (copied from the model's train or decouple run), ``train_run_id`` and
``model_uri``, and the metrics ``test_<group>_acc1`` (fractions) for groups balanced, lt, head,
middle, tail (on the long-tailed test set), many, medium, few (on the balanced one, as the
literature measures them) and lt_many, lt_medium, lt_few (on the long-tailed one), with ``_acc5``
and 95% Clopper-Pearson bounds ``_acc1_ci_low`` / ``_acc1_ci_high``. The report reads exactly
these names.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import mlflow
import torch

from ltexp import schema
from ltexp.config import Config, variant_axes
from ltexp.data.splits import TRAINING_SETS
from ltexp.errors import TrackingError
from ltexp.evaluation import (
    fit_temperature,
    predict_test_sets,
    score_test_sets,
)
from ltexp.losses import adjust_logits
from ltexp.report.per_class import write_evaluation_artifacts
from ltexp.resources import check_fits, image_batch_bytes
from ltexp.timing import timed
from ltexp.tracking import registered_models, runs
from ltexp.tracking.datasets import data_root_for, load_prepared
from ltexp.tracking.inputs import log_split_inputs
from ltexp.tracking.questions import unfinished_evaluation
from ltexp.tracking.results import log_model_input, log_test_results, score_metrics
from ltexp.training import autocast_dtype, resolve_device

log = logging.getLogger(__name__)


def resolve_target(cfg: Config, train_run_id: str | None) -> tuple[mlflow.entities.Run, str]:
    """The run of the model (a train or decouple run) and the registered version to evaluate."""
    return registered_models.model_run(
        train_run_id or cfg.evaluate.train_run, cfg.evaluate.model_uri, schema.MODEL_STEPS
    )


@timed("evaluate")
def run_evaluate(
    cfg: Config, train_run_id: str | None = None, parent_run_id: str | None = None
) -> tuple[str, dict[str, float]]:
    """Evaluate a train run's registered checkpoint; return (evaluate run id, metrics)."""
    train_run, model_uri = resolve_target(cfg, train_run_id)
    params = train_run.data.params
    missing = [p for p in schema.CELL_PARAMS if p not in params]
    if missing:
        raise TrackingError(f"train run {train_run.info.run_id} lacks params {missing}")
    if cfg.runtime.num_threads:
        torch.set_num_threads(cfg.runtime.num_threads)
    prepared = load_prepared(
        train_run.data.tags[schema.DATA_RUN],
        data_root_for(train_run, cfg.data.data_root),
        cfg.data.download,
    )
    device = resolve_device(cfg.runtime.device)
    model, info = registered_models.load_classifier(model_uri, device)
    image_size = info.image_size
    check_fits(
        image_batch_bytes(cfg.runtime.eval_batch_size, image_size, copies=2),
        f"a test batch of {cfg.runtime.eval_batch_size} images of {image_size}×{image_size}",
        "lower eval_batch_size",
        device=str(device),
    )
    amp = autocast_dtype(cfg.runtime.precision, device)
    channels_last = cfg.runtime.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_counts = prepared.class_counts(TRAINING_SETS[params["train_split"]])
    tau = cfg.evaluate.tau

    scaling = cfg.evaluate.temperature_scaling
    outputs = predict_test_sets(
        model,
        prepared,
        (*schema.EVALUATED_SPLITS, *(("val",) if scaling else ())),
        batch_size=cfg.runtime.eval_batch_size,
        device=device,
        image_size=image_size,
        amp=amp,
        channels_last=channels_last,
        adjust=(lambda logits: adjust_logits(logits, train_counts, tau)) if tau else None,
        mean=info.mean,
        std=info.std,
    )
    temperature = 1.0
    if scaling:  # fitted on validation, never on a test split
        temperature = fit_temperature(outputs["val"][1], outputs.pop("val")[0])
        outputs = {s: (labels, logits / temperature) for s, (labels, logits) in outputs.items()}
        log.info("temperature scaling: T = %.3f (fitted on the validation set)", temperature)
    groups = prepared.groups()
    scores = score_test_sets(
        outputs["test_balanced"],
        outputs["test_lt"],
        groups,
        group_split=prepared.group_split,
    )
    shot_split = "test_balanced" if prepared.has("test_balanced") else prepared.group_split
    for group in schema.TEST_GROUPS:
        if group not in scores:
            where = schema.test_group_split(group, prepared.group_split, shot_split)
            if not prepared.has(where):
                log.info("%s has no %s: test_%s_* is not logged", prepared.dataset, where, group)
            elif group in schema.LT_SHOT_GROUPS and shot_split == "test_lt":
                log.info("test_%s_* is test_%s_* here: not logged twice", group, group[3:])
            elif len(groups.get(group.removeprefix("lt_"), [None])) == 0:
                log.info(
                    "no class is %s-shot by its training images: test_%s_* is not logged",
                    group,
                    group,
                )
            else:
                log.warning("no %s image is in group %s: its metrics are not logged", where, group)
    metrics = score_metrics(scores)
    launched, wrapper = None, None
    if not parent_run_id and not mlflow.active_run():
        # the evaluate run belongs with its train run's experiment
        launched, wrapper = runs.launched_run_for(
            train_run.info.experiment_id, {schema.MODEL_URI_PARAM: model_uri}
        )
    if parent_run_id == train_run.info.run_id and launched is None:
        # a child evaluation that a dead process left unfinished is done again in the same run
        launched = unfinished_evaluation(train_run.info.run_id, tau, scaling)
    cell = {p: params[p] for p in schema.CELL_PARAMS}
    # runs from before the axes existed were plain ones
    axes = {a.key: params.get(a.key, a.plain) for a in variant_axes()}
    with runs.step_run(
        schema.Step.EVALUATE,
        experiment_id=train_run.info.experiment_id,
        run_id=launched,
        wrapper=wrapper,
        run_name=schema.evaluate_run_name(train_run.info.run_name),
        parent_run_id=parent_run_id,
        tags={
            schema.DATA_DIGEST: prepared.digest(),
            schema.CELL: train_run.data.tags.get(schema.CELL, ""),
        },
        description=f"Test of {model_uri} (train run {train_run.info.run_id})"
        + (f", post-hoc logit adjustment tau={tau:g}" if tau else "")
        + (f", temperature scaling T={temperature:.3f}" if scaling else ""),
    ) as run:
        datasets = log_split_inputs(
            prepared,
            tuple(s for s in schema.EVALUATED_SPLITS if prepared.has(s)),
            schema.EVALUATE_CONTEXT,
        )
        model_id = registered_models.logged_model_id(model_uri)
        log_model_input(model_id)
        runs.log_params(
            {
                **cell,
                **axes,
                schema.TRAIN_RUN_ID: train_run.info.run_id,
                schema.MODEL_URI_PARAM: model_uri,
                schema.TAU: tau,
                schema.TEMPERATURE: round(temperature, 6),
                schema.BOOTSTRAP_SAMPLES: cfg.evaluate.bootstrap_samples,
                schema.BOOTSTRAP_SEED: cfg.evaluate.bootstrap_seed,
            }
        )
        log_test_results(
            metrics,
            evaluate_run_id=run.info.run_id,
            # a post-hoc adjusted result is not the checkpoint's own
            train_run_id=None if tau or scaling else train_run.info.run_id,
            model_id=model_id,
            datasets=datasets,
            group_split=prepared.group_split,
            shot_split=shot_split,
        )
        if not (tau or scaling):  # the version's own result: on its card
            registered_models.add_test_results(model_uri, metrics, run.info)
        with tempfile.TemporaryDirectory() as tmp:
            per_class = write_evaluation_artifacts(
                Path(tmp),
                outputs,
                prepared,
                train_counts,
                f"{cell['model']} · {cell['loss']} · {cell['train_split']}",
            )
            mlflow.log_artifacts(tmp)
        # the UI's table view (artifacts, "Evaluation" in the compare view) reads logged tables
        mlflow.log_table(per_class, artifact_file=schema.PER_CLASS_TABLE)
        return run.info.run_id, metrics
