"""The decouple step and the grid's axes: stage 2 on a registered version (tracked, registered,
evaluated), its refusals, and a demo grid over two samplers and a second stage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from ltexp import schema
from ltexp.cli import main as cli_main
from ltexp.config import build_config
from ltexp.models import model_spec
from ltexp.study.run import run_cell, run_stage2
from ltexp.tracking import registered_models
from ltexp.training.decoupling import backbone_state
from tests.conftest import REPO, step_counts, store_in, tiny_overrides


@pytest.fixture(scope="module")
def stage1(tmp_path_factory: pytest.TempPathFactory):
    """A trained cell in a store of this module's own (stage 2 adds versions and may move the
    champion, which the shared store's tests must not see)."""
    folder = tmp_path_factory.mktemp("stage1")
    with store_in(folder):
        cfg = build_config("demo", tiny_overrides(folder, epochs=2))
        yield folder, cfg, run_cell(cfg)


@pytest.fixture
def in_store(stage1):
    folder, cfg, cell = stage1
    with store_in(folder):
        yield cfg, cell


def _version(uri: str):
    name, _, version = uri.removeprefix("models:/").rpartition("/")
    return mlflow.MlflowClient().get_model_version(name, version)


def test_crt_registers_a_stage_2_version_with_the_backbone_bit_identical(in_store) -> None:
    cfg, cell = in_store
    out = run_stage2(cfg.replace(stage2="crt", stage2_epochs=2), stage1_run_id=cell.train.run_id)
    c = mlflow.MlflowClient()
    run = c.get_run(out.train.run_id)
    assert run.data.tags[schema.STEP] == "decouple"
    assert run.data.tags[schema.STAGE1_RUN] == cell.train.run_id
    assert run.data.params["stage2"] == "crt" and run.data.params["stage2_epochs"] == "2"
    assert [m.step for m in c.get_metric_history(run.info.run_id, schema.VAL_ACC1)] == [1, 2]
    new, old = _version(out.train.model_uri), _version(cell.train.model_uri)
    # a variant is its own registered model: the plain cell's champion stays the plain cell's
    assert new.name == f"{old.name}-crt+stage2_epochs=2"
    assert run.info.run_name == "tiny_cnn-ce-lt-s42-crt+stage2_epochs=2"
    champion = mlflow.MlflowClient().get_model_version_by_alias(old.name, "champion")
    assert champion.version == old.version
    assert new.tags[schema.VersionTag.STAGE] == "2" and new.tags[schema.VersionTag.METHOD] == "crt"
    assert old.tags[schema.VersionTag.STAGE] == "1"
    path = model_spec(cfg.train.model).classifier
    before, _ = registered_models.load_classifier(cell.train.model_uri, "cpu")
    after, _ = registered_models.load_classifier(out.train.model_uri, "cpu")
    kept = dict(backbone_state(after, path))
    assert all(torch.equal(v, kept[k]) for k, v in backbone_state(before, path))
    assert not torch.equal(before.get_submodule(path).weight, after.get_submodule(path).weight)
    # evaluated like any model, with the axes as params
    evaluation = c.get_run(out.evaluate_run_id)
    assert evaluation.data.params[schema.TRAIN_RUN_ID] == out.train.run_id
    assert evaluation.data.params["stage2"] == "crt"
    assert evaluation.data.params["sampler"] == "instance"


def test_tau_norm_with_tau_zero_registers_the_same_weights(in_store) -> None:
    cfg, cell = in_store
    out = run_stage2(
        cfg.replace(
            stage2="tau_norm", stage2_tau=0.0, stage2_tau_form="keep_bias", evaluate_after=False
        ),
        stage1_run_id=cell.train.run_id,
    )
    before, _ = registered_models.load_classifier(cell.train.model_uri, "cpu")
    after, _ = registered_models.load_classifier(out.train.model_uri, "cpu")
    assert all(torch.equal(v, after.state_dict()[k]) for k, v in before.state_dict().items())
    # Kang et al.'s form (the default) drops the bias: τ = 0 leaves the rows and zeroes it
    kang = run_stage2(
        cfg.replace(stage2="tau_norm", stage2_tau=0.0, evaluate_after=False),
        stage1_run_id=cell.train.run_id,
    )
    dropped, _ = registered_models.load_classifier(kang.train.model_uri, "cpu")
    path = model_spec(cfg.train.model).classifier
    head_before, head_after = before.get_submodule(path), dropped.get_submodule(path)
    assert torch.equal(head_before.weight, head_after.weight)
    assert torch.equal(head_after.bias, torch.zeros_like(head_before.bias))
    run = mlflow.get_run(out.train.run_id)
    assert float(run.data.params["stage2_tau"]) == 0.0
    local = mlflow.artifacts.download_artifacts(
        run_id=out.train.run_id, artifact_path=schema.TAU_SEARCH_ARTIFACT
    )
    assert Path(local).read_text().splitlines()[0] == f"tau,{schema.VAL_ACC1}"


def test_tau_norm_searches_the_grid_on_validation(in_store) -> None:
    cfg, cell = in_store
    out = run_stage2(cfg.replace(stage2="tau_norm"), stage1_run_id=cell.train.run_id)
    local = mlflow.artifacts.download_artifacts(
        run_id=out.train.run_id, artifact_path=schema.TAU_SEARCH_ARTIFACT
    )
    rows = [line.split(",") for line in Path(local).read_text().splitlines()[1:]]
    assert [float(t) for t, _ in rows] == pytest.approx([i / 10 for i in range(21)])  # 0-2
    best = max(float(a) for _, a in rows)
    chosen = float(mlflow.get_run(out.train.run_id).data.params["stage2_tau"])
    assert min(float(t) for t, a in rows if float(a) == best) == pytest.approx(chosen)
    assert out.train.best_val_acc1 == pytest.approx(best)


def test_train_with_stage2_runs_both_stages_and_prints_both(
    in_store, capsys: pytest.CaptureFixture
) -> None:
    cfg, _cell = in_store
    args = ["train", "--preset", "demo", "--stage2", "tau_norm", "--stage2-tau", "0.5"]
    for key, value in tiny_overrides(Path(cfg.runtime.checkpoint_dir).parent, epochs=1).items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "train run:" in out and "decouple run:" in out
    decouple_id = out.split("decouple run: ")[1].split()[0]
    run = mlflow.get_run(decouple_id)
    train_id = out.split("train run: ")[1].split()[0]
    assert run.data.tags[schema.STAGE1_RUN] == train_id
    assert run.data.tags[schema.PARENT_RUN] == train_id  # nested under its stage 1 in the UI
    assert run.data.params["stage2_tau"] == "0.5"


def test_main_offers_study_stage2_not_stage2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli_main(["main", "--preset", "demo", "--stage2", "crt"])
    assert stopped.value.code == 2 and "--stage2" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stage2", "crt"], "give train_run=<train run id> or model_uri=models:/..."),
        (["--stage2", "foo", "--train-run", "RUN"], "unknown stage2 value 'foo'"),
        (["--train-run", "RUN"], "decouple needs stage2=crt, stage2=tau_norm or stage2=lws"),
        (["--stage2", "lws", "--stage2-epochs", "0", "--train-run", "RUN"], "stage2_epochs"),
        (["--stage2", "crt", "--train-run", "EVAL"], "is an evaluate run, not a train run"),
        (["--stage2", "crt", "--train-run", "STAGE2"], "is a decouple run, not a train run"),
    ],
)
def test_bad_decouple_requests_are_one_line_exit_2_and_leave_no_run(
    in_store, args: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    cfg, cell = in_store
    stage2 = mlflow.search_runs(
        search_all_experiments=True,
        output_format="list",
        filter_string=f"tags.`{schema.STEP}` = 'decouple'",
    )
    if not stage2:
        run_stage2(cfg.replace(stage2="tau_norm", evaluate_after=False), cell.train.run_id)
        stage2 = mlflow.search_runs(
            search_all_experiments=True,
            output_format="list",
            filter_string=f"tags.`{schema.STEP}` = 'decouple'",
        )
    ids = {"RUN": cell.train.run_id, "EVAL": cell.evaluate_run_id, "STAGE2": stage2[0].info.run_id}
    args = [ids.get(a, a) for a in args]
    before = step_counts()
    capsys.readouterr()  # what the setup above printed
    assert cli_main(["decouple", "--preset", "demo", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert step_counts() == before


def test_a_decouple_of_a_decoupled_model_uri_names_what_it_needs(in_store) -> None:
    cfg, cell = in_store
    out = run_stage2(
        cfg.replace(stage2="tau_norm", evaluate_after=False), stage1_run_id=cell.train.run_id
    )
    from ltexp.errors import TrackingError

    with pytest.raises(TrackingError, match="is the model of a decouple run; this needs"):
        run_stage2(cfg.replace(stage2="crt", model_uri=out.train.model_uri))


def test_study_axes_in_yaml_map_to_their_flat_keys(tmp_path: Path) -> None:
    preset = tmp_path / "grid.yaml"
    preset.write_text(
        "study:\n  samplers: [instance, class_balanced]\n  mixing: [none, mixup]\n"
        "  stage2: [none, crt]\ntrain:\n  mixing: cutmix\n"
    )
    cfg = build_config(str(preset))
    assert cfg.grid_values("sampler") == ["instance", "class_balanced"]
    assert cfg.grid_values("mixing") == ["none", "mixup"] and cfg.train.mixing == "cutmix"
    assert cfg.grid_values("stage2") == ["none", "crt"]
    flat = cfg.flat()
    assert flat["study_mixing"] == ["none", "mixup"] and flat["mixing"] == "cutmix"
    assert flat["study_stage2"] == ["none", "crt"]


@pytest.mark.slow
def test_demo_grid_over_two_samplers_and_crt_through_mlflow_run(tmp_path: Path) -> None:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PATH": path}
    grid = {
        "models": "tiny_cnn",
        "losses": "ce,focal",
        "train_splits": "lt",
        "samplers": "instance,class_balanced",
        "study_stage2": "none,crt",
        "stage2_epochs": 2,
        "epochs": 3,
        "checkpoint_dir": tmp_path / "ckpt",
        "system_metrics": "false",
        "output_dir": tmp_path / "report",
    }
    params = [a for k, v in grid.items() for a in ("-P", f"{k}={v}")]
    common = ["--env-manager", "local", "--experiment-name", "axes"]
    out = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), *params, *common],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    counts = step_counts(env["MLFLOW_TRACKING_URI"])
    assert counts["train"] == 4 and counts["decouple"] == 4 and counts["evaluate"] == 8
    md = (tmp_path / "report" / "report.md").read_text()
    table = md.split("Loss × sampler")[1].split("###")[0]
    assert "| Backbone | Training set | Loss | instance | class_balanced |" in table
    rows = [r for r in table.splitlines() if r.startswith("| Tiny CNN")]
    assert len(rows) == 2 and all("—" not in r for r in rows)
    assert "Loss × second stage" in md and "| none | crt |" in md
    assert "sampler class_balanced" in md and "second stage crt" in md  # paired vs plain
    # the thesis's table holds the plain cells only: one row per loss
    thesis = md.split("Tiny CNN trained on the long-tailed set")[1].split("###")[0]
    assert len([r for r in thesis.splitlines() if r.startswith(("| Softmax", "| Focal"))]) == 2
    # the decouple entry point on a stage-1 version (the first: instance sampling)
    uri = "models:/ltexp-digits-tiny_cnn-ce-lt/1"
    entry = ["-e", "decouple", "-P", f"model_uri={uri}", "-P", "stage2=tau_norm"]
    one = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), *entry, "-P", "preset=demo", *common],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    assert step_counts(env["MLFLOW_TRACKING_URI"])["decouple"] == 5
