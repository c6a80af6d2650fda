"""The study's questions to the store: answered with the same number of store requests whatever
the number of runs (issue 40: not one request per run), and post-hoc evaluations told apart."""

from __future__ import annotations

from collections import Counter

import mlflow
import pytest
from mlflow import MlflowClient

from ltexp import schema
from ltexp.cells import code_version
from ltexp.tracking import questions


@pytest.mark.parametrize(
    ("params", "adjusted"),
    [
        ({}, False),
        ({schema.TAU: "0", schema.TEMPERATURE: "1"}, False),
        ({schema.TAU: "0.0", schema.TEMPERATURE: ""}, False),
        ({schema.TAU: "1.0"}, True),
        ({schema.TEMPERATURE: "1.5"}, True),
        ({schema.TAU: "not a number"}, True),  # unreadable: never taken for the cell's result
    ],
)
def test_post_hoc_evaluations_are_told_apart(params: dict, adjusted: bool) -> None:
    assert questions.post_hoc(params) is adjusted


def _cells(experiment_id: str, n: int) -> None:
    """``n`` finished cells: a train run and its evaluate run each."""
    client = MlflowClient()
    for i in range(n):
        train = client.create_run(
            experiment_id,
            tags={
                schema.STEP: "train",
                schema.CONFIG_HASH: f"h{i}",
                schema.CODE_VERSION: code_version(),
            },
        ).info.run_id
        client.log_metric(train, schema.BEST_VAL_ACC1, 0.5)
        client.set_terminated(train)
        evaluate = client.create_run(experiment_id, tags={schema.STEP: "evaluate"}).info.run_id
        params = {"dataset": "digits", "model": "tiny_cnn", "loss": "ce", "train_split": "lt"}
        for key, value in {**params, "seed": i, schema.TRAIN_RUN_ID: train}.items():
            client.log_param(evaluate, key, value)
        client.log_metric(evaluate, schema.test_metric("lt"), 0.5)
        client.set_terminated(evaluate)


def _requests(monkeypatch: pytest.MonkeyPatch, experiment_id: str) -> Counter:
    """The store requests of finished_cells and query_results, by client method."""
    made: Counter = Counter()
    for name in ("search_runs", "get_run", "get_metric_history", "search_experiments"):
        real = getattr(MlflowClient, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            made[_name] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, name, counted)
    done = questions.finished_cells(experiment_id)
    records = questions.query_results(experiment_id)
    assert all(evaluation for _, evaluation in done.values())
    assert len(records) == len(done)
    monkeypatch.undo()
    return made


def test_finished_cells_and_the_results_take_the_same_requests_for_3_or_40_cells(
    tracking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = mlflow.create_experiment("small")
    large = mlflow.create_experiment("large")
    _cells(small, 3)
    _cells(large, 40)
    assert _requests(monkeypatch, small) == _requests(monkeypatch, large)
