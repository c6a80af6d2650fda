"""The report reads each run's predictions once, several at a time, and keeps only which test
images it got right, as bits (issue 40): memory grows by bytes per run, not by its predictions;
a store that stops answering fails the report in one line instead of leaving runs out."""

from __future__ import annotations

import threading
import time

import mlflow
import numpy as np
import pytest

from ltexp.errors import TrackingError
from ltexp.report.correctness import Correctness
from ltexp.tracking.results import load_predictions
from tests.planted import cifar_manifest, plant


@pytest.fixture(scope="module")
def study():
    return plant(cifar_manifest(), {("resnet50", "ce"): 0.0, ("resnet50", "bs"): 0.2}, (1, 2, 3, 4))


def test_predictions_are_read_several_at_a_time_once_each_and_kept_as_bits(study) -> None:
    lock, now, most, calls = threading.Lock(), [0], [0], []

    def slow(run_id: str):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
            calls.append(run_id)
        time.sleep(0.05)  # a remote store's latency
        with lock:
            now[0] -= 1
        return study.load(run_id)

    correctness = Correctness(slow, cifar_manifest())
    run_ids = [r["run_id"] for r in study.records]
    correctness.prefetch(run_ids * 2)
    assert sorted(calls) == sorted(run_ids) and most[0] > 1  # once each, overlapped
    correctness.column(run_ids, "balanced")
    assert sorted(calls) == sorted(run_ids)  # nothing read again
    kept = correctness._runs[run_ids[0]]["test_balanced"]
    assert kept[1].nbytes == 5000 // 8  # 5,000 test images: 625 bytes, not 5,000 × top-5
    right = correctness.column(run_ids[:1], "balanced")[0]
    pred = study.load(run_ids[0])
    assert np.array_equal(right, pred["test_balanced_top5"][:, 0] == pred["test_balanced_labels"])


def test_a_store_that_stops_answering_is_one_line_naming_the_run(
    monkeypatch: pytest.MonkeyPatch, tracking: str
) -> None:
    def down(**kwargs):
        raise mlflow.exceptions.MlflowException(
            "API request to http://127.0.0.1:5000/api/2.0/mlflow-artifacts failed with exception "
            "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded (Connection "
            "refused)"
        )

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", down)
    with pytest.raises(TrackingError, match="predictions of evaluate run abc could not be read"):
        load_predictions("abc")

    def missing(**kwargs):
        raise OSError("No such file or directory: 'predictions.npz'")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", missing)
    assert load_predictions("abc") is None  # the run's own problem: left out with a note
