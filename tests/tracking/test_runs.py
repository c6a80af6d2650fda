"""Run lifecycle in a real (sqlite) store: statuses, reasons, params, reaping, re-delivery."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pytest

from ltexp import schema
from ltexp.errors import TrackingError
from ltexp.tracking import runs


def _run(run_id: str):
    return mlflow.get_run(run_id)


def test_step_run_finishes_fails_with_a_reason_or_is_killed(tracking: str) -> None:
    exp = runs.experiment_id("e")
    with runs.step_run(schema.Step.TRAIN, experiment_id=exp, run_name="ok") as run:
        ok = run.info.run_id
    with pytest.raises(ValueError), runs.step_run(schema.Step.TRAIN, experiment_id=exp) as run:
        failed = run.info.run_id
        raise ValueError("bad thing\nsecond line")
    with (
        pytest.raises(KeyboardInterrupt),
        runs.step_run(schema.Step.TRAIN, experiment_id=exp) as run,
    ):
        killed = run.info.run_id
        raise KeyboardInterrupt
    assert _run(ok).info.status == "FINISHED" and _run(ok).info.run_name == "ok"
    assert _run(failed).info.status == "FAILED"
    assert _run(failed).data.tags[schema.ERROR] == "ValueError: bad thing"
    assert _run(killed).info.status == "KILLED"
    tags = _run(ok).data.tags
    assert tags[schema.STEP] == "train" and tags[schema.PID] == str(os.getpid())
    assert mlflow.active_run() is None


def test_log_params_keeps_equal_values_and_refuses_changes(tracking: str) -> None:
    with runs.step_run(schema.Step.TRAIN, experiment_id=runs.experiment_id("e")):
        mlflow.log_param("lr", "1e-3")  # as `mlflow run -P lr=1e-3` logs it
        runs.log_params({"lr": 0.001, "betas": (0.9, 0.999), "x": None})
        with pytest.raises(TrackingError, match="param lr is already '1e-3'"):
            runs.log_params({"lr": 0.01})
        params = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    assert params == {"lr": "1e-3", "betas": "0.9,0.999", "x": ""}


def test_missing_epochs_are_delivered_once(tracking: str) -> None:
    history = [{"epoch": e, schema.VAL_ACC1: e / 10} for e in (1, 2, 3)]
    with runs.step_run(schema.Step.TRAIN, experiment_id=runs.experiment_id("e")) as run:
        mlflow.log_metric(schema.VAL_ACC1, 0.1, step=1)
        runs.deliver_history(run.info.run_id, history)
        runs.deliver_history(run.info.run_id, history)
    got = runs.client().get_metric_history(run.info.run_id, schema.VAL_ACC1)
    assert sorted((m.step, m.value) for m in got) == [(1, 0.1), (2, 0.2), (3, 0.3)]


def test_re_sent_epochs_reach_the_store_validation_accuracy_first(tracking: str) -> None:
    """A run whose first epochs were lost in flight gets them from its checkpoint's history;
    the store still lists val_acc1 first, as the UI's compare page reads it (issue 27)."""
    history = [{"epoch": 1, schema.TRAIN_LOSS: 2.0, schema.VAL_ACC1: 0.1}]
    with runs.step_run(schema.Step.TRAIN, experiment_id=runs.experiment_id("e")) as run:
        runs.deliver_history(run.info.run_id, history)
    assert list(mlflow.get_run(run.info.run_id).data.metrics) == [
        schema.VAL_ACC1,
        schema.TRAIN_LOSS,
    ]


def test_experiment_names_creation_and_search(tracking: str) -> None:
    assert runs.default_experiment("demo", "digits") == "demo-digits"
    assert runs.default_experiment("configs/mine.yaml", "cifar100") == "mine-cifar100"
    assert runs.experiment_name("", "fallback") == "fallback"
    exp = runs.experiment_id("e")
    assert runs.experiment_id("e") == exp
    client = runs.client()
    for _ in range(7):
        client.create_run(exp)
    assert len(runs.search_all([exp])) == 7
    client.delete_experiment(exp)
    with pytest.raises(TrackingError, match="is deleted"):
        runs.experiment_id("e")


def test_params_given_by_mlflow_run_as_typed_are_the_same_values(tracking: str) -> None:
    with runs.step_run(schema.Step.TRAIN, experiment_id=runs.experiment_id("e")):
        # what `mlflow run -P deterministic=yes -P betas=.9,.999` logs before ltexp starts
        mlflow.log_params({"deterministic": "yes", "betas": ".9,.999", "lr": "1e-3"})
        runs.log_params({"deterministic": True, "betas": (0.9, 0.999), "lr": 0.001})
        with pytest.raises(TrackingError, match="param deterministic is already 'yes'"):
            runs.log_params({"deterministic": False})


def test_credentials_never_leave_the_uri() -> None:
    assert runs.redact("http://alice:s3cret@host:5000/api") == "http://***@host:5000/api"
    assert runs.redact("see postgresql://u:p@db/x and https://tok@h") == (
        "see postgresql://***@db/x and https://***@h"
    )
    assert runs.error_line(ValueError("bad http://a:b@h")) == "ValueError: bad http://***@h"


def test_each_epoch_is_one_batch_with_its_heartbeat_and_flush_delivers_all(tracking: str) -> None:
    exp = runs.experiment_id("e")
    with runs.step_run(schema.Step.TRAIN, experiment_id=exp) as run:
        for epoch in (1, 2, 3):
            runs.log_epoch({schema.VAL_ACC1: epoch / 10, schema.TRAIN_LOSS: 1 / epoch}, epoch)
        runs.flush()
        run_id = run.info.run_id
        client = mlflow.MlflowClient()
        val = client.get_metric_history(run_id, schema.VAL_ACC1)
        loss = client.get_metric_history(run_id, schema.TRAIN_LOSS)
        assert [(m.step, m.value) for m in val] == [(1, 0.1), (2, 0.2), (3, 0.3)]
        # one request per epoch: the epoch's metrics share its timestamp
        assert [m.timestamp for m in val] == [m.timestamp for m in loss]
        assert schema.HEARTBEAT in client.get_run(run_id).data.tags
    assert _run(run_id).info.status == "FINISHED"


def test_a_request_the_store_refused_is_raised_by_flush(tracking: str) -> None:
    exp = runs.experiment_id("e")
    with runs.step_run(schema.Step.TRAIN, experiment_id=exp) as run:
        runs.log_epoch({schema.VAL_ACC1: 0.5}, 1)
        runs.flush()
        runs.log_epoch({schema.VAL_ACC1: float("nan"), "bad key ../..": 1.0}, 2)
        with pytest.raises(mlflow.exceptions.MlflowException):
            runs.flush()
        runs.flush()  # the error was reported once; nothing else is pending
        steps = [
            m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_acc1")
        ]
        assert steps == [1]


def test_queued_epochs_go_to_the_store_they_were_logged_in(tracking: str, tmp_path: Path) -> None:
    exp = runs.experiment_id("e")
    with runs.step_run(schema.Step.TRAIN, experiment_id=exp) as run:
        runs.log_epoch({schema.VAL_ACC1: 0.25}, 1)
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'other.db'}")  # before it was sent
        try:
            runs.flush()
        finally:
            mlflow.set_tracking_uri(tracking)
        history = mlflow.MlflowClient().get_metric_history(run.info.run_id, schema.VAL_ACC1)
        assert [(m.step, m.value) for m in history] == [(1, 0.25)]


def _run_with(tags: dict[str, str], params: dict[str, str]) -> mlflow.entities.Run:
    with mlflow.start_run() as run:
        mlflow.log_params(params)
        mlflow.set_tags({k: v for k, v in tags.items() if v})
    return mlflow.get_run(run.info.run_id)


@pytest.mark.parametrize("tag", ["{not json", "[1, 2]", '"lt"', ""])
def test_an_identity_tag_that_is_no_identity_is_read_back_from_the_params(
    tracking: str, tag: str
) -> None:
    """Aggregate, decouple and ensemble read a run's identity through one function; decouple
    used to raise a JSONDecodeError on a hand-edited tag."""
    params = {"loss": "focal", "focal_gamma": "2.0", "lr": "0.1", "not_an_option": "x"}
    ident = runs.recorded_identity(_run_with({schema.IDENTITY: tag}, params))
    assert ident == {"loss": "focal", "focal_gamma": 2.0, "lr": 0.1}


def test_a_recorded_identity_wins_and_a_foreign_run_has_none(tracking: str) -> None:
    recorded = {"loss": "ce", "epochs": 8}
    run = _run_with({schema.IDENTITY: json.dumps(recorded)}, {"loss": "focal"})
    assert runs.recorded_identity(run) == recorded
    assert runs.recorded_identity(_run_with({}, {"alpha": "1"})) == {}


def test_an_experiment_ltexp_uses_is_marked_as_model_training(tracking: str) -> None:
    """Issue 42: MLflow 3's UI opened the study's experiment on its GenAI dashboard; the
    experiment's kind says it trains models (where the UI reads it)."""
    from ltexp import schema
    from ltexp.tracking import runs

    created = runs.experiment_id("fresh")
    older = mlflow.create_experiment("made-by-an-earlier-ltexp")
    assert runs.experiment_id("made-by-an-earlier-ltexp") == older
    for exp_id in (created, older):
        tags = mlflow.MlflowClient().get_experiment(exp_id).tags
        assert tags[schema.EXPERIMENT_KIND_TAG] == "custom_model_development"
