"""Dataset inputs: a store's refusal of a dataset that another run inserted at the same moment
is tried again (the race two studies at once ran into on PostgreSQL); other errors are not."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from ltexp.tracking import inputs


def _dataset() -> mlflow.data.Dataset:
    return mlflow.data.from_numpy(np.zeros((2, 3)), name="d", digest="0" * 32)


def test_a_duplicate_dataset_insert_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def log_input(dataset, **kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise mlflow.exceptions.MlflowException(
                "(psycopg2.errors.UniqueViolation) duplicate key value violates unique "
                'constraint "dataset_pk"'
            )

    monkeypatch.setattr(mlflow, "log_input", log_input)
    monkeypatch.setattr(inputs.time, "sleep", lambda s: None)
    inputs._log_input(_dataset(), context="train")
    assert calls == [{"context": "train"}, {"context": "train"}]


def test_other_store_errors_and_a_lasting_duplicate_are_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    def fails(message: str):
        def log_input(dataset, **kwargs):
            calls.append(message)
            raise mlflow.exceptions.MlflowException(message)

        return log_input

    monkeypatch.setattr(inputs.time, "sleep", lambda s: None)
    monkeypatch.setattr(mlflow, "log_input", fails("permission denied"))
    with pytest.raises(mlflow.exceptions.MlflowException, match="permission denied"):
        inputs._log_input(_dataset())
    assert calls == ["permission denied"]  # not tried again
    calls.clear()
    monkeypatch.setattr(mlflow, "log_input", fails('violates unique constraint "dataset_pk"'))
    with pytest.raises(mlflow.exceptions.MlflowException, match="dataset_pk"):
        inputs._log_input(_dataset())
    assert len(calls) == 3
