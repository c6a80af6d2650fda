"""Ensembles of registered models: the mean of the members' logits, registered, loaded and
served like any model, evaluated, never built twice, and refused when it cannot be one model."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

import ltexp
from ltexp import schema
from ltexp.cli import main
from ltexp.models import build_model
from ltexp.models.ensemble import Ensemble
from ltexp.study.run import run_cell, run_ensembled
from tests.conftest import step_counts, store_in, tiny_overrides


@pytest.fixture(scope="module")
def two_cells(tmp_path_factory: pytest.TempPathFactory):
    """Two finished cells (ce and focal) in a store of their own, and their config."""
    from ltexp.config import build_config

    folder = tmp_path_factory.mktemp("ensemble")
    with store_in(folder):
        cfg = build_config("demo", tiny_overrides(folder, epochs=1, evaluate_after="false"))
        uris = [run_cell(cfg.replace(loss=loss)).train.model_uri for loss in ("ce", "focal")]
    return folder, cfg, uris


def test_the_ensembles_logits_are_the_mean_of_its_members() -> None:
    torch.manual_seed(0)
    members = [build_model("tiny_cnn", 4, pretrained=False).eval() for _ in range(3)]
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        each = torch.stack([m(x) for m in members])
        assert torch.equal(Ensemble(members)(x), each.mean(0))
        probs = Ensemble(members, "probs")(x)
        assert torch.allclose(probs.exp(), each.softmax(2).mean(0), atol=1e-6)
        # scripted (what MLflow logs) it computes the same
        assert torch.equal(torch.jit.script(Ensemble(members))(x), each.mean(0))


def test_members_normalised_otherwise_get_their_own_inputs() -> None:
    torch.manual_seed(0)
    a, b = (build_model("tiny_cnn", 4, pretrained=False).eval() for _ in range(2))
    stats_a = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    stats_b = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    raw = torch.rand(3, 3, 32, 32)
    x_a = (raw - torch.tensor(stats_a[0]).view(1, 3, 1, 1)) / torch.tensor(stats_a[1]).view(
        1, 3, 1, 1
    )
    x_b = (raw - torch.tensor(stats_b[0]).view(1, 3, 1, 1)) / torch.tensor(stats_b[1]).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        both = Ensemble([a, b], stats=[stats_a, stats_b])(x_a)
        assert torch.allclose(both, (a(x_a) + b(x_b)) / 2, atol=1e-5)


def test_an_ensemble_registers_loads_three_ways_and_is_evaluated(two_cells) -> None:
    folder, cfg, uris = two_cells
    with store_in(folder):
        cell = run_ensembled(cfg.replace(evaluate_after="true"), uris)
        result, evaluate_run = cell.train, cell.evaluate_run_id
        run = mlflow.get_run(result.run_id)
        assert run.data.tags[schema.STEP] == "ensemble"
        # only declared names (tests/tracking/test_schema.py checks the other steps)
        own_tags = {k for k in run.data.tags if not k.startswith("mlflow.")}
        assert own_tags <= set(schema.RUN_TAGS), own_tags - set(schema.RUN_TAGS)
        assert set(run.data.params) == set(schema.ENSEMBLE_PARAMS) | set(schema.MODEL_DIGEST_PARAMS)
        assert set(run.data.metrics) <= {schema.BEST_VAL_ACC1, *schema.HEADLINE_TEST_METRICS}
        assert run.info.run_name == "ensemble-tiny_cnn-ce+tiny_cnn-focal-lt"
        versions = run.data.tags[schema.ENSEMBLE_MEMBERS].split(",")
        assert versions == uris
        assert result.model_uri == "models:/ltexp-digits-ensemble-tiny_cnn-ce+tiny_cnn-focal-lt/1"
        version = mlflow.MlflowClient().get_model_version(
            "ltexp-digits-ensemble-tiny_cnn-ce+tiny_cnn-focal-lt", "1"
        )
        assert version.tags["members"] == ",".join(uris) and version.tags["stage"] == "ensemble"
        no_seed = {schema.VersionTag.SEED, schema.VersionTag.EPOCH, schema.VersionTag.METHOD}
        assert set(version.tags) == {t.value for t in schema.VersionTag} - no_seed
        members = [ltexp.load_model(u) for u in uris]
        x = torch.randn(6, 3, 32, 32)
        with torch.no_grad():
            mean = torch.stack([m(x) for m in members]).mean(0).numpy()
            rebuilt = ltexp.load_model(result.model_uri)(x).numpy()
            scripted = mlflow.pytorch.load_model(result.model_uri)(x).numpy()
        served = np.asarray(mlflow.pyfunc.load_model(result.model_uri).predict(x.numpy()))
        for out in (rebuilt, scripted, served):
            np.testing.assert_allclose(out, mean, atol=1e-5)
        evaluated = mlflow.get_run(evaluate_run)
        assert evaluated.data.params[schema.TRAIN_RUN_ID] == result.run_id
        assert 0 < evaluated.data.metrics["test_balanced_acc1"] <= 1
        # the same members again: found, not built twice
        again = run_ensembled(cfg.replace(evaluate_after="true"), list(reversed(uris)))
        assert (again.train.run_id, again.train.model_uri, again.evaluate_run_id) == (
            result.run_id,
            result.model_uri,
            evaluate_run,
        )
        assert step_counts()["ensemble"] == 1


def test_the_ensemble_command_takes_repeated_model_uris(two_cells, capsys) -> None:
    folder, _cfg, uris = two_cells
    args = ["--preset", "demo", "--data-root", str(folder / "data"), "--combine", "probs"]
    with store_in(folder):
        code = main(["ensemble", *args, "--model-uri", uris[0], "--model-uri", uris[1]])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "models:/ltexp-digits-ensemble-tiny_cnn-ce+tiny_cnn-focal-lt-probs/1" in out
    assert "evaluate run:" in out


@pytest.mark.parametrize(
    ("members", "said"),
    [
        (["{0}"], "an ensemble needs at least two registered models"),
        (["{0}", "{0}"], "are the same version"),
        (["{0}", "models:/nope@champion"], "no registered model 'nope'"),
    ],
)
def test_members_that_cannot_be_one_model_are_refused_in_one_line(
    two_cells, capsys, members: list[str], said: str
) -> None:
    folder, _cfg, uris = two_cells
    uris_given = [m.format(*uris) for m in members]
    with store_in(folder):
        before = step_counts()
        code = main(["ensemble", "--preset", "demo", "--members", ",".join(uris_given)])
        assert step_counts() == before
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and said in err[0], err


def test_members_of_other_training_sets_are_refused(two_cells, capsys) -> None:
    folder, cfg, uris = two_cells
    with store_in(folder):
        balanced = run_cell(cfg.replace(train_split="balanced")).train.model_uri
        code = main(["ensemble", "--preset", "demo", "--members", f"{uris[0]},{balanced}"])
    err = capsys.readouterr().err
    assert code == 2 and "the members have different training sets (lt, balanced)" in err


def test_an_ensemble_is_not_a_member(two_cells, capsys) -> None:
    folder, cfg, uris = two_cells
    with store_in(folder):
        ensemble = run_ensembled(cfg, uris).train
        code = main(
            ["ensemble", "--preset", "demo", "--members", f"{uris[0]},{ensemble.model_uri}"]
        )
    err = capsys.readouterr().err
    assert (
        code != 0
        and "is the model of an ensemble run; this needs the model of a train or decouple run"
        in err
    )
    assert Path(folder).is_dir()


@pytest.mark.slow
def test_a_study_ensembles_its_best_losses_and_reports_each_axis(tiny_config) -> None:
    """The issue's study: a finetune axis beside the plain cells, and the ensemble of the best
    two losses of each backbone and variant; the report has a table per axis, the paired
    comparisons with the plain cell, and the ensembles beside their best member."""
    from ltexp.study.run import run_study

    cfg = tiny_config(
        models="tiny_cnn",
        losses="ce,focal",
        train_splits="lt",
        finetunes="full,linear",
        epochs=1,
        ensemble_top_k=2,
    )
    lines: list[str] = []
    result = run_study(cfg, progress=lines.append)
    assert step_counts()["ensemble"] == 2  # the full and the linear cells' losses
    said = [line for line in lines if line.startswith("[ensemble ")]
    assert [line.split(":")[0] for line in said] == [
        "[ensemble 1/2] tiny_cnn-top2-lt-s42",
        "[ensemble 2/2] tiny_cnn-top2-lt-s42-linear",
    ]
    report = result.report_dir
    by_finetune = pd.read_csv(report / "by_finetune.csv")
    assert set(by_finetune["finetune"]) == {"full", "linear"}
    paired = pd.read_csv(report / "paired_vs_plain.csv")
    assert set(paired["value"]) == {"linear"}
    ensembles = pd.read_csv(report / "ensembles.csv")
    assert len(ensembles) == 2 and set(ensembles["members_reported"]) == {2}
    assert ensembles["delta_balanced"].notna().all()
    text = (report / "report.md").read_text()
    assert "Ensembles of registered models beside their best member" in text
    assert "Loss × fine-tuning" in text
    # the ensembles are not cells: the thesis tables hold the two plain losses only
    runs_table = pd.read_csv(report / "runs.csv")
    assert "ensemble" not in set(runs_table["model"])


def test_an_ensemble_killed_as_its_version_was_created_is_registered_once(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 39: a process killed once MLflow had created the version row left version 1 READY
    on a FAILED run, and the same command registered version 2."""
    from ltexp.config import build_config
    from ltexp.tracking import registered_models

    folder = tmp_path_factory.mktemp("ensemble-killed")
    with store_in(folder):
        cfg = build_config("demo", tiny_overrides(folder, epochs=1, evaluate_after="false"))
        uris = [run_cell(cfg.replace(loss=loss)).train.model_uri for loss in ("ce", "bs")]
        real = registered_models.update_champion

        def killed(*args, **kwargs):
            raise KeyboardInterrupt  # the process dies after the version row exists

        monkeypatch.setattr(registered_models, "update_champion", killed)
        with pytest.raises(KeyboardInterrupt):
            run_ensembled(cfg, uris)
        monkeypatch.setattr(registered_models, "update_champion", real)
        client = mlflow.MlflowClient()
        (orphan,) = client.search_model_versions("name LIKE 'ltexp-digits-ensemble-%'")
        name = orphan.name
        assert client.get_run(orphan.run_id).info.status != "FINISHED"
        done = run_ensembled(cfg, uris)
        (version,) = client.search_model_versions(f"name = '{name}'")
        assert version.run_id == done.train.run_id
        assert client.get_run(version.run_id).info.status == "FINISHED"
