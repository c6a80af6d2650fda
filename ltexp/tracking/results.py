"""Test results in the store: one function writes them everywhere they are shown, so the
places never disagree.

- the evaluate run: every ``test_<group>_<kind>`` metric, each linked to the registered model
  (MLflow 3 logged model) and to the test split it was computed on;
- the train run: the five headline metrics (the report's columns), linked to the model, so the
  study's Training runs table compares every cell one level below the study run.

And read back: :func:`load_predictions`, an evaluate run's predictions (the report's paired
comparisons and calibration).
"""

from __future__ import annotations

import tempfile

import mlflow
import numpy as np
from mlflow.entities import LoggedModelInput

from ltexp import schema
from ltexp.errors import TrackingError
from ltexp.evaluation import GroupScore
from ltexp.tracking import runs


def log_model_input(model_id: str | None) -> None:
    """Record the registered model as an input of the active run (the run page links it)."""
    if model_id:
        mlflow.log_input(model=LoggedModelInput(model_id))


def log_test_results(
    metrics: dict[str, float],
    *,
    evaluate_run_id: str,
    train_run_id: str | None,
    model_id: str | None,
    datasets: dict[str, mlflow.data.Dataset],
    group_split: str = "test_lt",
    shot_split: str = "test_balanced",
) -> None:
    """Log an evaluation's metrics (see the module docstring).

    Args:
        metrics: ``test_<group>_<kind>`` values.
        train_run_id: the run whose checkpoint was tested, or None to leave it alone (a
            post-hoc adjusted evaluation is not the checkpoint's own result).
        model_id: the logged model of the tested version, if known.
        datasets: the test splits as logged inputs (``test_balanced``, ``test_lt``).
        group_split, shot_split: the splits the frequency and shot groups were computed on.
    """
    by_split: dict[str, dict[str, float]] = {}
    for name, value in metrics.items():
        split = schema.test_metric_split(name, group_split, shot_split)
        by_split.setdefault(split, {})[name] = value
    for split, values in by_split.items():
        linked = {"model_id": model_id, "dataset": datasets.get(split)}
        mlflow.log_metrics(values, run_id=evaluate_run_id, **linked)
        headline = {k: v for k, v in values.items() if k in schema.HEADLINE_TEST_METRICS}
        if train_run_id and headline:
            # linked to the model only: a dataset link would list the test sets as inputs of
            # the train run, which never read them
            mlflow.log_metrics(headline, run_id=train_run_id, model_id=model_id)


def score_metrics(scores: dict[str, GroupScore]) -> dict[str, float]:
    """The metrics of an evaluate run, by the schema's names."""
    metrics: dict[str, float] = {}
    for group, s in scores.items():
        metrics[schema.test_metric(group)] = s.acc1
        metrics[schema.test_metric(group, "acc5")] = s.acc5
        metrics[schema.test_metric(group, "acc1_ci_low")] = s.ci_low
        metrics[schema.test_metric(group, "acc1_ci_high")] = s.ci_high
        if s.ece == s.ece:  # NaN: no confidences
            metrics[schema.test_metric(group, "ece")] = s.ece
    return metrics


def load_predictions(run_id: str) -> dict[str, np.ndarray] | None:
    """The predictions an evaluate run saved (``np.load(allow_pickle=False)``: arrays only), or
    None when it has none (a run logged by another tool) or they cannot be read (truncated, not
    an archive): the report leaves that run's comparisons out and says so.

    Raises:
        TrackingError: the store stopped answering (after MLflow's bounded retries): the
            report is not written at all rather than written without the runs it could not read.
    """
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=schema.PREDICTIONS_ARTIFACT, dst_path=tmp
            )
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except Exception as e:  # noqa: BLE001 - sorted below: the store's failure, or the run's
            if _unreachable(e):
                raise TrackingError(
                    f"the predictions of evaluate run {run_id} could not be read: "
                    f"{runs.store_failure(e)}; no report was written"
                ) from None
            return None


def _unreachable(e: BaseException) -> bool:
    """The store (not the run's artifact) failed: a connection refused, reset or timed out."""
    text = f"{type(e).__name__} {e}".lower()
    return any(
        word in text
        for word in ("max retries exceeded", "connection refused", "connectionerror", "timed out")
    )
