"""Test results in the store: one function writes them everywhere they are shown, so the
places never disagree.

- the evaluate run: every ``test_<group>_<kind>`` metric, each linked to the registered model
  (MLflow 3 logged model) and to the test split it was computed on;
- the train run: the five headline metrics (the report's columns), linked to the model, so the
  study's Training runs table compares every cell one level below the study run.
"""

from __future__ import annotations

import mlflow
from mlflow.entities import LoggedModelInput

from ltexp import schema


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
