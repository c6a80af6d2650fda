"""The MLflow schema of ltexp: every tag, param, metric, input, artifact, run and model name.

Other tools read these names (the report reads any run that follows them), so they are a public
contract: change them only with a migration note. Every other module asks this one; a test trains
a run and checks that every key it logged is declared here, and that every name declared here is
used.

Naming and grouping only: no MLflow calls, no imports of the rest of ltexp beyond the data's
group names, so the training loop and the report can use it too.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from pathlib import PurePath

from ltexp.config.grid import axes, variant_axes
from ltexp.data.splits import FREQUENCY_GROUPS, GROUPS, SHOT_GROUPS

__all__ = ["FREQUENCY_GROUPS", "GROUPS"]  # re-exported: the groups metric names are built from

# --- tags ------------------------------------------------------------------------------------
STEP = "ltexp.step"


class Step(StrEnum):
    """Values of the ``ltexp.step`` tag: which step a run is."""

    PREPARE_DATA = "prepare_data"
    TRAIN = "train"
    EVALUATE = "evaluate"
    AGGREGATE = "aggregate"
    MAIN = "main"
    TUNE = "tune"
    DECOUPLE = "decouple"
    ENSEMBLE = "ensemble"


# the steps whose runs hold a registered model that evaluate tests
MODEL_STEPS = (Step.TRAIN, Step.DECOUPLE, Step.ENSEMBLE)
ENSEMBLE_MEMBERS = "ltexp.ensemble_members"  # an ensemble run's members: version URIs, by comma


CONFIG_HASH = "ltexp.config_hash"  # sha256 of the run's identity (ltexp.cells)
IDENTITY = "ltexp.identity"  # JSON of the run's identity: every option that decides its result
CODE_VERSION = "ltexp.code_version"  # sha256 of the ltexp sources that ran
DATA_DIGEST = "ltexp.data_digest"  # digest of the prepared dataset used
DATA_RUN = "ltexp.data_run_id"  # the prepare_data run a train run used
MODEL_URI = "ltexp.model_uri"  # registered version of a train or decouple run's model
ERROR = "ltexp.error"  # one-line reason a run FAILED
HOST = "ltexp.host"
PID = "ltexp.pid"
HEARTBEAT = "ltexp.heartbeat"  # unix time of the last sign of life of the process writing it
RESUMED_FROM_EPOCH = "ltexp.resumed_from_epoch"
RESUMED_INTO = "ltexp.resumed_into"  # on an `mlflow run` run whose work went into another run
CELL = "ltexp.cell"  # model-loss-split-seed[-variant] of a study cell
TUNE_CELL = "ltexp.tune_cell"  # model-loss-split a tune run searched (seeds share its result)
TUNE_STUDY = "ltexp.tune_study"  # the Optuna study a tune run or trial belongs to
TRIAL = "ltexp.trial"  # a trial's number in its Optuna study
TRIAL_STATE = "ltexp.trial_state"  # COMPLETE, PRUNED or FAIL
BEST_PARAMS = "ltexp.best_params"  # JSON of the best trial's values, on a tune run
TUNED_FROM = "ltexp.tuned_from"  # on a study's train run: the tune run whose values it used
TUNED_PARAMS = "ltexp.tuned_params"  # JSON of those values
STAGE1_RUN = "ltexp.stage1_run"  # on a decouple run: the train run whose model it re-balanced
PARENT_RUN = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
DESCRIPTION_TAG = "mlflow.note.content"  # the run's description (Markdown) in the UI
# Tags only some runs carry: a failure, a resume, an `mlflow run` wrapper that continued a run.
CONDITIONAL_TAGS = (
    ERROR,
    RESUMED_FROM_EPOCH,
    RESUMED_INTO,
    TUNE_CELL,
    TUNE_STUDY,
    TRIAL,
    TRIAL_STATE,
    BEST_PARAMS,
    TUNED_FROM,
    TUNED_PARAMS,
    ENSEMBLE_MEMBERS,
)
RUN_TAGS = (
    STEP,
    CONFIG_HASH,
    IDENTITY,
    CODE_VERSION,
    DATA_DIGEST,
    DATA_RUN,
    MODEL_URI,
    HOST,
    PID,
    HEARTBEAT,
    CELL,
    STAGE1_RUN,
    *CONDITIONAL_TAGS,
)

# --- inputs (mlflow.log_input) ---------------------------------------------------------------
INPUT_SHA256 = "ltexp.sha256"  # the full sha256 of a split (MLflow caps a digest at 36 chars)
INPUT_SPLIT = "ltexp.split"  # which split of the prepared dataset
INPUT_TAGS = (INPUT_SHA256, INPUT_SPLIT)
INPUT_DIGEST_CHARS = 32
# the context of each split in a run's inputs
INPUT_CONTEXT = {"train_balanced": "training", "train_lt": "training", "val": "validation"}
TEST_CONTEXT = "testing"
# an evaluate run's inputs: the splits it tests on
EVALUATE_CONTEXT = "test"
EVALUATED_SPLITS = ("test_balanced", "test_lt")


def input_context(split: str) -> str:
    """The ``mlflow.log_input`` context of a split."""
    return INPUT_CONTEXT.get(split, TEST_CONTEXT)


def input_name(dataset: str, split: str) -> str:
    """The dataset name a split is logged under: ``digits/train_lt``."""
    return f"{dataset}/{split}"


# --- params ----------------------------------------------------------------------------------
# The params every evaluate run carries: the dataset and the axes every cell names (model, loss,
# train_split, seed), from the axes' declaration (ltexp/config/grid.py).
CELL_PARAMS = ("dataset", *(a.key for a in axes() if a.plain is None))
TRAIN_RUN_ID = "train_run_id"  # the run of the tested model: a train or a decouple run
MODEL_URI_PARAM = "model_uri"
NUM_PARAMS = "num_params"
# parameters that receive gradients (a param at the start; with finetune≠full also a metric per
# epoch, which gradual unfreezing raises)
TRAINABLE_PARAMS = "trainable_params"
# the sha256 of the files ltexp loads a registered version from, on the run that registered it
# (params cannot be changed afterwards): a version whose files differ is refused
MODEL_DIGEST_PARAMS = ("model_weights_sha256", "model_info_sha256")
WORLD_SIZE = "world_size"
TAU = "tau"
TEMPERATURE = "temperature"  # of an evaluation's temperature scaling (1: none)
BOOTSTRAP_SAMPLES = "bootstrap_samples"
BOOTSTRAP_SEED = "bootstrap_seed"
# Resolved values a train run logs beside its config keys.
TRAIN_RESOLVED_PARAMS = (
    "dataset",
    "head",
    "image_size",
    "device",
    "data_run",
    "precision",
    "num_classes",
)
EVALUATE_PARAMS = (
    *CELL_PARAMS,
    # the grid's axes with a plain value (sampler, mixing, stage2): the report's grouping
    *(a.key for a in variant_axes()),
    TRAIN_RUN_ID,
    MODEL_URI_PARAM,
    TAU,
    TEMPERATURE,
    BOOTSTRAP_SAMPLES,
    BOOTSTRAP_SEED,
)
PREPARE_DATA_PARAMS = (
    "dataset",
    "profile",
    "imbalance_ratio",
    "pareto_alpha",
    "n_max_train",
    "n_max_test",
    "seed",
    "class_order",
    "split_mode",
    "holdout_fraction",
    "num_classes",
)
# prepare_data of an image-file set: the sha256 of its decoded cache (pixels and labels)
IMAGE_CACHE_DIGEST = "image_cache_sha256"
DATASET_OPTION_PREFIX = "dataset_"  # prepare_data: dataset_<option> for each loader option
# a study run's params: each grid axis's values (models, …, study_stage2), and the rest
STUDY_PARAMS = (*(a.grid_key for a in axes()), "preset", "dataset", "n_cells", "epochs")
AGGREGATE_PARAMS = ("experiment", "dataset", "n_evaluate_runs")
TUNE_PARAMS = (
    "dataset",
    "model",
    "loss",
    "train_split",
    "space",
    "objective",
    "trials",
    "timeout",
    "tune_sampler",
    "pruner",
    "tune_seed",
    "study_name",
    "storage",
)
# A decouple run copies its stage-1 run's params and adds these.
DECOUPLE_PARAMS = (
    "stage2",
    "stage2_epochs",
    "stage2_lr",
    "stage2_tau",
    "stage2_tau_form",
    "stage1_run_id",
)
# An ensemble run's params: the cell params (model "ensemble", the members' losses and seeds
# joined by +), how it combines, and its members as asked (models:/<name>@champion) and as the
# versions they resolved to.
ENSEMBLE_PARAMS = (
    "dataset",
    "model",
    "loss",
    "train_split",
    "seed",
    "combine",
    "num_members",
    "members",
    "member_versions",
    "num_params",
)
TAU_SEARCH_ARTIFACT = "tau_search.csv"
TUNE_METRICS = ("best_value", "trials_complete", "trials_pruned", "trials_failed")
SKIPPED_IMAGES = "skipped_images"  # prepare_data with skip_bad_images: images left out

# --- metrics ---------------------------------------------------------------------------------
TRAIN_LOSS = "train_loss"
TRAIN_ACC1 = "train_acc1"
VAL_LOSS = "val_loss"
VAL_ACC1 = "val_acc1"
VAL_BALANCED_ACC1 = "val_balanced_acc1"  # the mean of the per-class accuracies
LR = "lr"
EPOCH_SECONDS = "epoch_seconds"
IMAGES_PER_S = "images_per_s"
BEST_VAL_ACC1 = "best_val_acc1"
BEST_EPOCH = "best_epoch"
# many/medium/few measured on the long-tailed test set (ltexp's measure before the literature's)
LT_SHOT_GROUPS = tuple(f"lt_{g}" for g in SHOT_GROUPS)
TEST_GROUPS = ("balanced", "lt", *GROUPS, *LT_SHOT_GROUPS)
TEST_KINDS = ("acc1", "acc5", "acc1_ci_low", "acc1_ci_high", "ece")
# the split each test group's metrics are computed on (the dataset they are linked to), for the
# protocol's splits: head/middle/tail on the long-tailed test set (the thesis), many/medium/few on
# the balanced one (Liu et al. 2019 and the papers after it), lt_many/… on the long-tailed one
TEST_GROUP_SPLIT = {
    "balanced": "test_balanced",
    "lt": "test_lt",
    **{g: "test_lt" for g in FREQUENCY_GROUPS},
    **{g: "test_balanced" for g in SHOT_GROUPS},
    **{g: "test_lt" for g in LT_SHOT_GROUPS},
}
REPORT_COLUMNS = {
    "balanced": "test_balanced_acc1",
    "long_tailed": "test_lt_acc1",
    **{g: f"test_{g}_acc1" for g in FREQUENCY_GROUPS},
}
# the literature's shot-group columns (ImageNet-LT papers): the report's table for a set that is
# long-tailed as given
SHOT_COLUMNS = {g: f"test_{g}_acc1" for g in SHOT_GROUPS}
# the aggregate run's verdicts on a paper's claims (ltexp/report/claims): a tag per claim,
# ltexp.claim.<id> = reproduced | contradicted | inconclusive (claim_tag), and a count of each
CLAIMS_REPRODUCED = "claims_reproduced"
CLAIMS_CONTRADICTED = "claims_contradicted"
CLAIMS_INCONCLUSIVE = "claims_inconclusive"
CELLS_RUN = "cells_run"
CELLS_REUSED = "cells_reused"
MISSING_CELLS = "missing_cells"
DUPLICATE_CELLS = "duplicate_cells"


def test_metric(group: str, kind: str = "acc1") -> str:
    """``test_<group>_<kind>``: kind is acc1, acc5, acc1_ci_low, acc1_ci_high or ece (the
    expected calibration error, 15 bins)."""
    return f"test_{group}_{kind}"


def sampled_metric(group: str) -> str:
    """``sampled_<group>_images``: training images an epoch drew from a frequency group."""
    return f"sampled_{group}_images"


def val_metric(group: str) -> str:
    """``val_<group>_acc1`` for a class group on the validation set."""
    return f"val_{group}_acc1"


EPOCH_METRICS = (
    TRAIN_LOSS,
    TRAIN_ACC1,
    VAL_LOSS,
    VAL_ACC1,
    VAL_BALANCED_ACC1,
    *(val_metric(g) for g in GROUPS),
    LR,
    EPOCH_SECONDS,
    IMAGES_PER_S,
    *(sampled_metric(g) for g in FREQUENCY_GROUPS),
)
TEST_METRICS = tuple(test_metric(g, k) for g in TEST_GROUPS for k in TEST_KINDS)
# the split each test metric was computed on (for the protocol's splits)
TEST_METRIC_SPLIT = {
    test_metric(g, k): TEST_GROUP_SPLIT[g] for g in TEST_GROUPS for k in TEST_KINDS
}


def test_group_split(
    group: str, group_split: str = "test_lt", shot_split: str = "test_balanced"
) -> str:
    """The split a test group is computed on: head/middle/tail on ``group_split`` (a set
    long-tailed as given whose only test set is balanced computes them there), many/medium/few
    on ``shot_split`` (the balanced test set, where the set has one)."""
    if group in FREQUENCY_GROUPS:
        return group_split
    if group in SHOT_GROUPS:
        return shot_split
    return TEST_GROUP_SPLIT[group]


def test_metric_split(
    metric: str, group_split: str = "test_lt", shot_split: str = "test_balanced"
) -> str:
    """The split a ``test_<group>_<kind>`` metric was computed on (:func:`test_group_split`)."""
    group = next(
        g for g in sorted(TEST_GROUPS, key=len, reverse=True) if metric.startswith(f"test_{g}_")
    )
    return test_group_split(group, group_split, shot_split)


# what a train run carries of its checkpoint's evaluation: the report's five columns
HEADLINE_TEST_METRICS = tuple(REPORT_COLUMNS.values())

# --- the UI -----------------------------------------------------------------------------------
# a view of the runs table saved on the experiment (MLflow's shared views: the experiment tag
# mlflow.sharedViewState.<key>, opened by ?viewStateShareKey=<key>): filter, sort and columns
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
# the experiment's kind in MLflow 3's UI: model training opens on the runs table, not on the
# GenAI traces dashboard (the value of the UI's own "custom model development" switch)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
RESULTS_VIEW = "ltexp-results"

# --- artifacts -------------------------------------------------------------------------------
CONFIG_ARTIFACT = "config.yaml"
MANIFEST_ARTIFACT = "manifest.json"
SPLIT_INDICES_ARTIFACT = "splits.npz"
CLASS_COUNTS_FIGURE = "class_counts.png"
SKIPPED_IMAGES_ARTIFACT = "skipped_images.txt"  # prepare_data: unreadable images left out
BEST_CONFIG_ARTIFACT = "best_config.yaml"
TRIALS_ARTIFACT = "trials.csv"
TUNE_HISTORY_FIGURE = "optimization_history.png"
TUNE_IMPORTANCE_FIGURE = "param_importances.png"
PER_CLASS_ARTIFACT = "per_class_accuracy.csv"
PER_CLASS_FIGURE = "per_class_accuracy.png"
# the same numbers as a logged table (mlflow.log_table), which the UI shows and charts
PER_CLASS_TABLE = "per_class_accuracy.json"
CONFUSION_FIGURE = "confusion_matrix.png"
PREDICTIONS_ARTIFACT = "predictions.npz"
REPORT_ARTIFACT_DIR = "report"
PLAN_ARTIFACT = "plan.json"  # on the run `mlflow run -e plan` creates (ltexp plan creates none)
# the report as one self-contained page, which the UI's artifact view displays
REPORT_HTML = f"{REPORT_ARTIFACT_DIR}/report.html"

# --- model registry --------------------------------------------------------------------------
CHAMPION_ALIAS = "champion"
REGISTERED_PREFIX = "ltexp-"


class VersionTag(StrEnum):
    """Tags of a registered model version (the champion is chosen by ``val_acc1``)."""

    RUN_ID = "run_id"
    SEED = "seed"
    EPOCH = "epoch"
    VAL_ACC1 = "val_acc1"
    DATA_DIGEST = "data_digest"
    CONFIG_HASH = "config_hash"
    CELL = "cell"  # ltexp.cells.cell_key: the champion is chosen among versions of one cell
    STAGE = "stage"  # 1: trained; 2: a decoupled classifier (Kang et al. 2020)
    METHOD = "method"  # the decoupling method of a stage-2 version: crt, tau_norm, lws
    MEMBERS = "members"  # an ensemble version's members (version URIs, by comma)
    # what a program needs to feed the version (its card says it in words)
    INPUT_SHAPE = "input_shape"  # -1,3,S,S
    INPUT_MEAN = "input_mean"  # per channel, by comma
    INPUT_STD = "input_std"
    TEST_TOP1 = "test_top1"  # JSON {column: [top-1, ci_low, ci_high]}, set by its evaluation


def logged_model_name(run_name: str) -> str:
    """The name a run's model is logged under in the experiment's Models view: the run's name,
    with what MLflow refuses there replaced (``focal_gamma=0.5`` becomes ``focal_gamma=0p5``)."""
    out = run_name.replace(".", "p")
    for c in "/:%\"'":
        out = out.replace(c, "_")
    return out


def registered_model_name(
    dataset: str, model: str, loss: str, train_split: str, variant: str = ""
) -> str:
    """``ltexp-<dataset>-<model>-<loss>-<train_split>`` (``timm:x`` becomes ``timm_x``), with
    the cell's variant after it (``ltexp-cifar100-resnet50-ce-lt-class_balanced+crt``): each
    variant is its own registered model, and its champion is its own."""
    name = f"{REGISTERED_PREFIX}{dataset}-{model.replace(':', '_')}-{loss}-{train_split}"
    return f"{name}-{variant}" if variant else name


# --- run and experiment names ----------------------------------------------------------------


def run_name(model: str, loss: str, train_split: str, seed: int | str, variant: str = "") -> str:
    """What a train run is, at a glance: ``resnet50-bs-lt-s42``, with the cell's variant
    (``ltexp.cells.variant``) after it (``resnet50-bs-lt-s42-class_balanced+crt``)."""
    name = f"{model.replace(':', '_')}-{loss}-{train_split}-s{seed}"
    return f"{name}-{variant}" if variant else name


_MAX_NAME = 200  # a registered-model name beyond this is shortened to a digest of its members


def _ensemble_body(labels: list[str], train_split: str, combine: str) -> str:
    body = "+".join(labels) + f"-{train_split}" + ("" if combine == "logits" else f"-{combine}")
    if len(body) > _MAX_NAME - 40:
        digest = hashlib.sha256(body.encode()).hexdigest()[:12]
        body = f"{len(labels)}members-{digest}-{train_split}"
    return body


def ensemble_run_name(labels: list[str], train_split: str, combine: str = "logits") -> str:
    """``ensemble-<member>+<member>-<split>``: what an ensemble run is, at a glance (each member
    as ``<model>-<loss>`` and its variant)."""
    return f"ensemble-{_ensemble_body(labels, train_split, combine)}"


def ensemble_model_name(
    dataset: str, labels: list[str], train_split: str, combine: str = "logits"
) -> str:
    """``ltexp-<dataset>-ensemble-<member>+<member>-<split>``: an ensemble's registered model
    (its members listed again in its tags and description)."""
    return f"{REGISTERED_PREFIX}{dataset}-ensemble-{_ensemble_body(labels, train_split, combine)}"


def trial_run_name(cell_run_name: str, number: int) -> str:
    """``<cell>-trial<N>``: one trial of a search."""
    return f"{cell_run_name}-trial{number}"


def tune_cell(model: str, loss: str, train_split: str) -> str:
    """What a search tunes, for every seed: ``resnet50-ldam-lt``."""
    return f"{model.replace(':', '_')}-{loss}-{train_split}"


def tune_run_name(cell: str) -> str:
    """``tune-<model>-<loss>-<split>``."""
    return f"tune-{cell}"


def evaluate_run_name(train_run_name: str) -> str:
    """``<train run name>-eval``."""
    return f"{train_run_name}-eval"


def prepare_run_name(
    dataset: str, profile: str, imbalance_ratio: float, seed: int, given: bool = False
) -> str:
    """``prepare-digits-exp-ir100-s42``; ``prepare-imagefolder-given-s42`` for a set that is
    long-tailed as given (no profile shapes it)."""
    shape = "given" if given else f"{profile}-ir{imbalance_ratio:g}"
    return f"prepare-{dataset}-{shape}-s{seed}"


def study_run_name(experiment: str) -> str:
    """``study-<experiment>``."""
    return f"study-{experiment}"


def aggregate_run_name(experiment: str) -> str:
    """``aggregate-<experiment>``."""
    return f"aggregate-{experiment}"


def default_experiment_name(preset: str, dataset: str) -> str:
    """The experiment of a config when none is given: ``<preset>-<dataset>`` (``demo-digits``).

    ``preset`` may be a path to a YAML file; its stem is used.
    """
    return f"{PurePath(preset).stem if preset else 'ltexp'}-{dataset}"


def claim_tag(claim_id: str) -> str:
    """``ltexp.claim.<id>``: the aggregate run's verdict on a claim."""
    return f"ltexp.claim.{claim_id}"
