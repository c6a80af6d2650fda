"""The splits a run read, logged as MLflow dataset inputs (the run page's "Datasets" list)."""

from __future__ import annotations

import time

import mlflow

from ltexp import schema
from ltexp.data import PreparedData


def log_split_inputs(
    prepared: PreparedData, splits: tuple[str, ...], context: str | None = None
) -> dict[str, mlflow.data.Dataset]:
    """``mlflow.log_input`` for each split on the active run, with an explicit sha256 over every
    byte; return the datasets (metrics can be linked to them).

    ``context`` overrides the split's own context (:func:`schema.input_context`).

    MLflow's automatic digest hashes only the first 10,000 elements, and caps a digest at 36
    characters: the digest is the sha256's first 32 hex digits (128 bits) and the full sha256 is
    the input tag ``ltexp.sha256``.
    """
    datasets = {}
    for name in splits:
        split = prepared.splits[name]
        digest = prepared.manifest["splits"][name]["digest"]
        dataset = mlflow.data.from_numpy(
            split.images,
            targets=split.labels,
            name=schema.input_name(prepared.dataset, name),
            digest=digest[: schema.INPUT_DIGEST_CHARS],
        )
        _log_input(
            dataset,
            context=context or schema.input_context(name),
            tags={schema.INPUT_SHA256: digest, schema.INPUT_SPLIT: name},
        )
        datasets[name] = dataset
    return datasets


# what a store answers when two runs insert the same dataset at once (sqlite, PostgreSQL, MySQL)
_DUPLICATE_DATASET = ("dataset_pk", "UNIQUE constraint failed: datasets", "Duplicate entry")


def _log_input(dataset: mlflow.data.Dataset, **kwargs: object) -> None:
    """``mlflow.log_input``, tried again when another run inserted the same dataset at the same
    moment: the store refuses the second insert of a (experiment, name, digest) row, and on the
    next try MLflow finds the row and links this run to it."""
    for attempt in range(3):
        try:
            mlflow.log_input(dataset, **kwargs)
            return
        except mlflow.exceptions.MlflowException as e:
            if attempt == 2 or not any(m in str(e) for m in _DUPLICATE_DATASET):
                raise
            time.sleep(0.5 * (attempt + 1))
