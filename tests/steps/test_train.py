"""train and evaluate end to end on the CPU: runs, metrics, registry, resume, failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from ltexp import schema
from ltexp.errors import TrackingError, TrainingError
from ltexp.steps.evaluate import run_evaluate
from ltexp.study.run import run_cell


def test_train_run_params_metrics_and_ui_fields(trained) -> None:
    _cfg, result, _ = trained
    run = mlflow.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny_cnn-bs-lt-s42"
    assert run.data.tags[schema.STEP] == "train"
    assert run.data.tags["mlflow.note.content"].startswith("tiny_cnn fine-tuned with bs")
    p = run.data.params
    for key, value in {
        "model": "tiny_cnn",
        "loss": "bs",
        "train_split": "lt",
        "seed": "42",
        "lr": "0.001",
        "batch_size": "32",
        "epochs": "3",
        "optimizer": "adam",
        "scheduler": "step",
        "head": "linear",
        "dataset": "digits",
        "precision": "fp32",
        "deterministic": "True",
    }.items():
        assert p[key] == value, key
    assert int(p[schema.NUM_PARAMS]) > 0
    exp = mlflow.get_experiment(run.info.experiment_id)
    assert exp.name == "demo-digits"
    client = mlflow.MlflowClient()
    for metric in schema.EPOCH_METRICS:
        history = client.get_metric_history(result.run_id, metric)
        assert sorted(m.step for m in history) == [1, 2, 3], metric
    val = [
        m.value
        for m in sorted(client.get_metric_history(result.run_id, "val_acc1"), key=lambda m: m.step)
    ]
    assert result.best_val_acc1 == pytest.approx(max(val))
    children = mlflow.search_runs(
        filter_string=f"tags.`{schema.PARENT_RUN}` = '{result.run_id}'",
        search_all_experiments=True,
        output_format="list",
    )
    assert [r.data.tags[schema.STEP] for r in children] == ["evaluate"]
    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert schema.CONFIG_ARTIFACT in names


def test_best_checkpoint_is_registered_with_tags_and_champion(trained) -> None:
    _cfg, result, _ = trained
    client = mlflow.MlflowClient()
    name = "ltexp-digits-tiny_cnn-bs-lt"
    assert result.model_uri == f"models:/{name}/1"
    version = client.get_model_version(name, "1")
    assert version.run_id == result.run_id
    tags = version.tags
    assert tags["run_id"] == result.run_id and tags["seed"] == "42"
    assert float(tags["val_acc1"]) == pytest.approx(result.best_val_acc1, abs=1e-6)
    assert int(tags["epoch"]) == result.best_epoch and len(tags["data_digest"]) == 64
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"


def test_champion_follows_the_best_val_acc1(tiny_config) -> None:
    first = run_cell(tiny_config(epochs=1, seed=1, evaluate_after="false")).train
    second = run_cell(tiny_config(epochs=3, seed=2, evaluate_after="false")).train
    client = mlflow.MlflowClient()
    name = "ltexp-digits-tiny_cnn-ce-lt"
    champion = client.get_model_version_by_alias(name, "champion")
    assert float(champion.tags["val_acc1"]) == pytest.approx(
        max(first.best_val_acc1, second.best_val_acc1), abs=1e-6
    )
    assert champion.run_id in (first.run_id, second.run_id)
    assert len(client.search_model_versions(f"name = '{name}'")) == 2


def test_registered_model_loads_in_a_fresh_process(trained, tmp_path: Path) -> None:
    code = (
        "import mlflow, torch\n"
        "m = mlflow.pytorch.load_model('models:/ltexp-digits-tiny_cnn-bs-lt@champion')\n"
        "print(tuple(m(torch.randn(5, 3, 32, 32)).shape))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "(5, 10)"


def test_evaluate_metrics_match_saved_predictions(trained, tmp_path: Path) -> None:
    _cfg, result, cell = trained
    run = mlflow.get_run(cell.evaluate_run_id)
    assert run.data.tags[schema.STEP] == "evaluate"
    assert run.data.tags[schema.PARENT_RUN] == result.run_id
    p = run.data.params
    assert {k: p[k] for k in schema.CELL_PARAMS} == {
        "dataset": "digits",
        "model": "tiny_cnn",
        "loss": "bs",
        "train_split": "lt",
        "seed": "42",
    }
    assert p[schema.TRAIN_RUN_ID] == result.run_id and p[schema.MODEL_URI_PARAM] == result.model_uri
    m = run.data.metrics
    for group in ("balanced", "lt", "head", "middle", "tail", "medium", "few"):
        acc = m[schema.test_metric(group)]
        assert 0.0 <= acc <= 1.0
        assert (
            m[schema.test_metric(group, "acc1_ci_low")]
            <= acc
            <= m[schema.test_metric(group, "acc1_ci_high")]
        )
        assert acc <= m[schema.test_metric(group, "acc5")]
    path = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path=schema.PREDICTIONS_ARTIFACT, dst_path=str(tmp_path)
    )
    with np.load(path) as pred:
        labels, top5 = pred["test_balanced_labels"], pred["test_balanced_top5"]
        assert m["test_balanced_acc1"] == pytest.approx((top5[:, 0] == labels).mean())
        lt_labels, lt_top5 = pred["test_lt_labels"], pred["test_lt_top5"]
        assert m["test_lt_acc1"] == pytest.approx((lt_top5[:, 0] == lt_labels).mean())
        assert m["test_lt_acc5"] == pytest.approx((lt_top5 == lt_labels[:, None]).any(1).mean())
        assert (pred["test_lt_logits"].argmax(1) == lt_top5[:, 0]).mean() > 0.99  # fp16 ties
    csv = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path=schema.PER_CLASS_ARTIFACT, dst_path=str(tmp_path)
    )
    table = pd.read_csv(csv)
    assert len(table) == 10 and table["test_balanced_n"].sum() == 240
    tail = table[table["group"] == "tail"]
    hits = (tail["test_lt_acc1"] * tail["test_lt_n"]).sum()
    assert m["test_tail_acc1"] == pytest.approx(hits / tail["test_lt_n"].sum())
    # the same numbers as a logged table, which the UI's table view reads
    logged = mlflow.MlflowClient().load_table(
        run.info.experiment_id, schema.PER_CLASS_TABLE, run_ids=[run.info.run_id]
    )
    assert list(logged["class"]) == list(table["class"])
    assert np.allclose(logged["test_lt_acc1"], table["test_lt_acc1"], equal_nan=True)
    assert json.loads(run.data.tags["mlflow.loggedArtifacts"]) == [
        {"path": schema.PER_CLASS_TABLE, "type": "table"}
    ]


def test_evaluate_by_model_uri_with_post_hoc_adjustment(trained) -> None:
    cfg, result, _ = trained
    cfg = cfg.replace(model_uri="models:/ltexp-digits-tiny_cnn-bs-lt@champion", tau=1.0)
    run_id, metrics = run_evaluate(cfg)
    p = mlflow.get_run(run_id).data.params
    assert p["tau"] == "1.0" and p[schema.TRAIN_RUN_ID] == result.run_id
    assert all(0 <= metrics[schema.test_metric(g)] <= 1 for g in ("balanced", "lt"))


def test_evaluate_under_mlflow_run_in_the_study_s_experiment_records_the_pinned_version(
    trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mlflow run . -e evaluate -P model_uri=models:/X@champion --experiment-name <the study's>`
    failed: MLflow logs model_uri as typed (the alias) on the run it hands the process, and
    evaluate records the version the alias resolved to. That run becomes a linked wrapper."""
    cfg, result, _ = trained
    alias = "models:/ltexp-digits-tiny_cnn-bs-lt@champion"
    experiment = mlflow.get_run(result.run_id).info.experiment_id
    launched = mlflow.MlflowClient().create_run(experiment).info.run_id
    mlflow.MlflowClient().log_param(launched, schema.MODEL_URI_PARAM, alias)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment)
    monkeypatch.setenv("MLFLOW_RUN_ID", launched)
    # tau: a post-hoc evaluation, so the shared store's report keeps its cell's own result
    run_id, _ = run_evaluate(cfg.replace(model_uri=alias, tau=1.0))
    assert run_id != launched
    pinned = mlflow.get_run(run_id).data.params[schema.MODEL_URI_PARAM]
    assert pinned.startswith("models:/ltexp-digits-tiny_cnn-bs-lt/") and "@" not in pinned
    assert mlflow.get_run(launched).data.tags[schema.RESUMED_INTO] == run_id


def test_evaluate_refuses_a_run_that_is_not_a_train_run(trained) -> None:
    cfg, _result, cell = trained
    cfg = cfg.replace(train_run=cell.evaluate_run_id)
    with pytest.raises(
        TrackingError, match="is an evaluate run, not a train, decouple or ensemble run"
    ):
        run_evaluate(cfg)


def test_non_finite_loss_fails_the_run_naming_epoch_and_step(
    tiny_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that diverges is a run that trained and failed: kept FAILED, with the reason."""
    from ltexp.losses.base import ClassAwareLoss

    real = ClassAwareLoss.forward
    calls = {"n": 0}

    def diverging(self, logits, target):
        calls["n"] += 1
        loss = real(self, logits, target)
        return loss * float("inf") if calls["n"] >= 3 else loss

    monkeypatch.setattr(ClassAwareLoss, "forward", diverging)
    cfg = tiny_config(epochs=2, evaluate_after="false")
    with pytest.raises(TrainingError, match=r"non-finite .* at epoch 1, step 3\b"):
        run_cell(cfg)
    runs = mlflow.search_runs(
        filter_string="tags.`ltexp.step` = 'train'", search_all_experiments=True
    )
    assert runs["status"].tolist() == ["FAILED"]
    assert "epoch 1, step" in runs["tags.ltexp.error"].iloc[0]


def test_registered_version_carries_weights_and_model_info(trained, tmp_path: Path) -> None:
    _cfg, result, _ = trained
    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=result.model_uri, dst_path=str(tmp_path))
    )
    info = json.loads((local / "extra_files" / "ltexp_model.json").read_text())
    assert info["model"] == "tiny_cnn" and info["num_classes"] == 10 and info["head"] == "linear"
    assert (local / "data" / "model.pth").is_file()  # the TorchScript program


def test_a_tampered_resume_checkpoint_is_refused_with_the_way_out(tiny_config) -> None:
    import torch

    cfg = tiny_config(epochs=2, evaluate_after="false")
    done = run_cell(cfg).train
    client = mlflow.MlflowClient()
    client.set_terminated(done.run_id, "FAILED")  # as if it had died after its last epoch
    folder = Path(cfg.runtime.checkpoint_dir) / done.run_id
    state = torch.load(folder / "last.pt", weights_only=True)
    state["epoch"] = 1_000_000
    torch.save(state, folder / "last.pt")
    with pytest.raises(TrainingError, match=r"epoch 1000000 is outside 1\.\.2.*resume=false"):
        run_cell(cfg)
    again = run_cell(cfg.replace(resume="false")).train  # the way out the message names
    assert again.run_id != done.run_id and mlflow.get_run(again.run_id).info.status == "FINISHED"


def test_a_resumed_run_replays_sampling_and_mixing_exactly(tiny_config) -> None:
    """Class-balanced sampling and Remix, interrupted after epoch 2: resumed, the end state is
    the uninterrupted run's, bit for bit (deterministic CPU)."""
    import torch

    from ltexp.steps.train import TrainHooks, run_train

    extra = {"epochs": 3, "sampler": "class_balanced", "mixing": "remix", "register": "false"}
    whole = run_train(run_cell_data(tiny_config(experiment="whole", **extra)))

    def stop_after_two(epoch: int, metrics: dict) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    cfg = run_cell_data(tiny_config(experiment="cut", **extra))
    with pytest.raises(KeyboardInterrupt):
        run_train(cfg, hooks=TrainHooks(on_epoch=stop_after_two))
    resumed = run_train(cfg)
    assert mlflow.get_run(resumed.run_id).data.tags[schema.RESUMED_FROM_EPOCH] == "2"
    folder = Path(cfg.runtime.checkpoint_dir)
    a = torch.load(folder / whole.run_id / "last.pt", weights_only=True)
    b = torch.load(folder / resumed.run_id / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    timing = {schema.EPOCH_SECONDS, schema.IMAGES_PER_S}

    def measured(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k not in timing} for row in history]

    # every epoch's metrics, the sampled counts included
    assert measured(a["history"]) == measured(b["history"])
    drawn = a["history"][0]
    assert drawn[schema.sampled_metric("tail")] > 0


def run_cell_data(cfg):
    """``cfg`` with its data prepared (run_train trains on prepared data)."""
    from ltexp.steps.prepare_data import run_prepare_data
    from ltexp.tracking.datasets import find_prepared_run

    return cfg.replace(data_run=find_prepared_run(cfg) or run_prepare_data(cfg))


def test_a_streamed_training_set_trains_the_same_model_as_a_resident_one(tiny_config) -> None:
    """data_on_device_gb=0 streams every batch from host memory: same weights, same metrics."""
    import torch

    from ltexp.steps.train import run_train

    extra = {"epochs": 2, "register": "false"}
    resident = run_train(run_cell_data(tiny_config(experiment="resident", **extra)))
    streamed = run_train(
        run_cell_data(tiny_config(experiment="streamed", data_on_device_gb=0, **extra))
    )
    folder = Path(tiny_config(experiment="x").runtime.checkpoint_dir)
    a = torch.load(folder / resident.run_id / "last.pt", weights_only=True)
    b = torch.load(folder / streamed.run_id / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert resident.best_val_acc1 == streamed.best_val_acc1


def test_temperature_scaling_changes_the_confidences_not_the_predictions(
    trained, tmp_path: Path
) -> None:
    """Issue 25: calibration, as long-tailed papers report it (Zhong et al. 2021): the expected
    calibration error of every group, and temperature scaling fitted on validation."""
    from ltexp.steps.aggregate import run_aggregate

    cfg, result, cell = trained
    plain = mlflow.get_run(cell.evaluate_run_id)
    run_id, metrics = run_evaluate(
        cfg.replace(temperature_scaling=True), train_run_id=result.run_id
    )
    scaled = mlflow.get_run(run_id)
    temperature = float(scaled.data.params[schema.TEMPERATURE])
    assert temperature > 0 and temperature != 1.0
    assert float(plain.data.params[schema.TEMPERATURE]) == 1.0
    for group in ("balanced", "lt", "head", "tail"):
        acc = schema.test_metric(group)
        assert metrics[acc] == plain.data.metrics[acc]  # the predictions are the same
        assert 0 <= metrics[schema.test_metric(group, "ece")] <= 1
        assert 0 <= plain.data.metrics[schema.test_metric(group, "ece")] <= 1
    assert metrics[schema.test_metric("balanced", "ece")] != pytest.approx(
        plain.data.metrics[schema.test_metric("balanced", "ece")]
    )
    # a post-hoc adjustment: not the cell's result, left out of the report's tables
    report = run_aggregate(cfg.replace(output_dir=str(tmp_path / "report")))
    runs = pd.read_csv(report.output_dir / "runs.csv")
    assert run_id not in set(runs["run_id"]) and cell.evaluate_run_id in set(runs["run_id"])
    calibration = pd.read_csv(report.output_dir / "calibration.csv")
    assert calibration.loc[0, "balanced_ece"] == pytest.approx(
        plain.data.metrics[schema.test_metric("balanced", "ece")], abs=1e-6
    )
