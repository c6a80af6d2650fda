"""The MLflow schema of ltexp: every tag, param, metric, artifact and model name in one place.

Other tools read these names (the report reads any run that follows them), so they are a public
contract: change them only with a migration note.
"""

from __future__ import annotations

from enum import StrEnum

# --- tags ------------------------------------------------------------------------------------
STEP = "ltexp.step"


class Step(StrEnum):
    """Values of the ``ltexp.step`` tag: which step a run is."""

    PREPARE_DATA = "prepare_data"
    TRAIN = "train"
    EVALUATE = "evaluate"
    AGGREGATE = "aggregate"
    MAIN = "main"


CONFIG_HASH = "ltexp.config_hash"  # sha256 of the resolved config that decides the results
CODE_VERSION = "ltexp.code_version"  # sha256 of the ltexp sources that ran
DATA_DIGEST = "ltexp.data_digest"  # digest of the prepared dataset used
DATA_RUN = "ltexp.data_run_id"  # the prepare_data run a train run used
MODEL_URI = "ltexp.model_uri"  # registered version of a train run's best checkpoint
ERROR = "ltexp.error"  # one-line reason a run FAILED
HOST = "ltexp.host"
PID = "ltexp.pid"
HEARTBEAT = "ltexp.heartbeat"  # unix time of the last finished epoch of a live process
RESUMED_FROM_EPOCH = "ltexp.resumed_from_epoch"
RESUMED_INTO = "ltexp.resumed_into"  # on an `mlflow run` wrapper run that continued another run
CELL = "ltexp.cell"  # model-loss-split-seed of a study cell
DESCRIPTION = "mlflow.note.content"  # the run page's description (MLflow's own tag)
PARENT_RUN = "mlflow.parentRunId"

# --- params ----------------------------------------------------------------------------------
# The params every evaluate run carries; the report groups by them.
CELL_PARAMS = ("dataset", "model", "loss", "train_split", "seed")
TRAIN_RUN_ID = "train_run_id"
MODEL_URI_PARAM = "model_uri"
NUM_PARAMS = "num_params"

# --- metrics ---------------------------------------------------------------------------------
TEST_GROUPS = ("balanced", "lt", "head", "middle", "tail", "many", "medium", "few")
REPORT_COLUMNS = {
    "balanced": "test_balanced_acc1",
    "long_tailed": "test_lt_acc1",
    "head": "test_head_acc1",
    "middle": "test_middle_acc1",
    "tail": "test_tail_acc1",
}
VAL_GROUPS = ("head", "middle", "tail", "many", "medium", "few")


def test_metric(group: str, kind: str = "acc1") -> str:
    """``test_<group>_<kind>``: kind is acc1, acc5, acc1_ci_low or acc1_ci_high."""
    return f"test_{group}_{kind}"


def val_metric(group: str) -> str:
    """``val_<group>_acc1`` for a class group on the validation set."""
    return f"val_{group}_acc1"


EPOCH_METRICS = (
    "train_loss",
    "train_acc1",
    "val_loss",
    "val_acc1",
    *(val_metric(g) for g in VAL_GROUPS),
    "lr",
    "epoch_seconds",
    "images_per_s",
)

# --- artifacts -------------------------------------------------------------------------------
CONFIG_ARTIFACT = "config.yaml"
MANIFEST_ARTIFACT = "manifest.json"
SPLIT_INDICES_ARTIFACT = "splits.npz"
CLASS_COUNTS_FIGURE = "class_counts.png"
MODEL_ARTIFACT = "model"  # the logged MLflow model of a train run
PER_CLASS_ARTIFACT = "per_class_accuracy.csv"
PER_CLASS_FIGURE = "per_class_accuracy.png"
CONFUSION_FIGURE = "confusion_matrix.png"
PREDICTIONS_ARTIFACT = "predictions.npz"

# --- model registry --------------------------------------------------------------------------
CHAMPION_ALIAS = "champion"


def registered_model_name(dataset: str, model: str, loss: str, train_split: str) -> str:
    """``ltexp-<dataset>-<model>-<loss>-<train_split>`` (``timm:x`` becomes ``timm_x``)."""
    return f"ltexp-{dataset}-{model.replace(':', '_')}-{loss}-{train_split}"


def run_name(model: str, loss: str, train_split: str, seed: int) -> str:
    """What a train run is, at a glance: ``resnet50-bs-lt-s42``."""
    return f"{model.replace(':', '_')}-{loss}-{train_split}-s{seed}"


def search_step(step: Step) -> str:
    """Filter string selecting runs of one step."""
    return f"tags.`{STEP}` = '{step.value}'"
