"""Tuning on the validation set: a small search on the digits demo, its runs and files, its best
config trained again, the study with tuned cells, resume after kill, two workers, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml

from ltexp import schema
from ltexp.cli import main
from ltexp.config import build_config
from ltexp.study.run import run_study
from ltexp.study.tune import TuneResult, run_tune
from ltexp.tracking import runs
from tests.conftest import PG, postgres_reachable, store_in, tiny_overrides

SPACE = "lr=loguniform:1e-4:1e-2,focal_gamma=uniform:0:4"
SEARCH = {"loss": "focal", "space": SPACE, "trials": 5, "epochs": 3}
TRAIN_RUNS = "tags.`ltexp.step` = 'train'"
TUNE_RUNS = "tags.`ltexp.step` = 'tune'"


@dataclass
class Search:
    folder: Path
    result: TuneResult


@pytest.fixture(scope="module")
def search_store(tmp_path_factory: pytest.TempPathFactory) -> Search:
    folder = tmp_path_factory.mktemp("tune")
    with store_in(folder):
        cfg = build_config("demo", tiny_overrides(folder, **SEARCH))
        return Search(folder, run_tune(cfg))


@pytest.fixture
def search(search_store: Search) -> Iterator[Search]:
    with store_in(search_store.folder):
        yield search_store


def _trial_runs(tune_run: str) -> list:
    return mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`{schema.PARENT_RUN}` = '{tune_run}' and "
        f"tags.`{schema.STEP}` = 'train'",
        output_format="list",
    )


def test_every_trial_is_a_child_run_and_weak_ones_are_pruned(search: Search) -> None:
    result = search.result
    trials = _trial_runs(result.run_id)
    assert sorted(int(r.data.tags[schema.TRIAL]) for r in trials) == list(range(5))
    assert result.states["COMPLETE"] + result.states["PRUNED"] == 5
    assert result.states["PRUNED"] >= 1  # the median pruner stopped at least one
    for run in trials:
        state = run.data.tags[schema.TRIAL_STATE]
        assert run.data.params["loss"] == "focal" and "focal_gamma" in run.data.params
        if state == "PRUNED":
            assert run.info.status == "KILLED"
            assert "pruned at epoch" in run.data.tags[schema.ERROR]
        else:
            assert state == "COMPLETE" and run.info.status == "FINISHED"
        assert not any(k.startswith("test_") for k in run.data.metrics)  # never tested
    tune = mlflow.get_run(result.run_id)
    assert tune.data.tags[schema.STEP] == "tune" and tune.info.status == "FINISHED"
    assert json.loads(tune.data.tags[schema.BEST_PARAMS]) == result.best_params
    assert tune.data.metrics["best_value"] == pytest.approx(result.best_value)
    assert set(tune.data.params) == set(schema.TUNE_PARAMS)
    assert set(tune.data.metrics) == set(schema.TUNE_METRICS)
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id)}
    assert {schema.BEST_CONFIG_ARTIFACT, schema.TRIALS_ARTIFACT} <= names
    assert schema.TUNE_HISTORY_FIGURE in names
    assert not mlflow.MlflowClient().search_registered_models()  # trials register nothing


def test_the_best_config_reproduces_the_best_trial(search: Search, tmp_path: Path) -> None:
    path = mlflow.artifacts.download_artifacts(
        run_id=search.result.run_id,
        artifact_path=schema.BEST_CONFIG_ARTIFACT,
        dst_path=str(tmp_path),
    )
    document = yaml.safe_load(Path(path).read_text())
    assert document["train"]["lr"] == pytest.approx(search.result.best_params["lr"])
    # the settings of where it runs are not in the file: the same ones as the search's
    runtime = ["--checkpoint-dir", str(search.folder / "ckpt"), "--num-threads", "1"]
    runtime += ["--system-metrics", "false", "--evaluate-after", "false"]
    assert main(["train", "--preset", path, *runtime, "--experiment", "again"]) == 0
    (again,) = mlflow.search_runs(
        experiment_names=["again"],
        filter_string="tags.`ltexp.step` = 'train'",
        output_format="list",
    )
    # deterministic CPU training: the same validation accuracy as the best trial
    assert again.data.metrics[schema.BEST_VAL_ACC1] == pytest.approx(search.result.best_value)


def test_a_tuned_study_trains_each_cell_with_its_best_values(search: Search) -> None:
    cfg = build_config(
        "demo",
        tiny_overrides(
            search.folder,
            models="tiny_cnn",
            losses="ce,focal",
            train_splits="lt",
            epochs=3,
            tuned="true",
            experiment="tuned-study",
        ),
    )
    result = run_study(cfg)
    trains = {
        r.data.params["loss"]: r
        for r in mlflow.search_runs(
            experiment_names=["tuned-study"],
            filter_string="tags.`ltexp.step` = 'train'",
            output_format="list",
        )
    }
    focal = trains["focal"]
    assert focal.data.tags[schema.TUNED_FROM] == search.result.run_id
    assert float(focal.data.params["lr"]) == pytest.approx(search.result.best_params["lr"])
    assert schema.TUNED_FROM not in trains["ce"].data.tags  # never tuned: as configured
    md = (result.report_dir / "report.md").read_text()
    assert "tuned on the validation set" in md and "focal_gamma=" in md and "as configured" in md


def test_a_tuned_study_in_the_search_s_own_experiment_trains_the_tuned_cell(
    search: Search,
) -> None:
    """The README's sequence in one experiment: ``ltexp tune``, then ``ltexp main --tuned``. The
    tuned cell has exactly the best trial's config, and a trial is still not taken for it."""
    cfg = build_config(
        "demo",
        tiny_overrides(
            search.folder,
            models="tiny_cnn",
            losses="focal",
            train_splits="lt",
            epochs=SEARCH["epochs"],
            tuned="true",
        ),
    )
    assert cfg.experiment == "" and mlflow.get_experiment(
        mlflow.get_run(search.result.run_id).info.experiment_id
    ).name == runs.default_experiment("demo", "digits")
    gamma = search.result.best_params["focal_gamma"]
    result = run_study(cfg)
    assert result.ran == [f"tiny_cnn-focal-lt-s42-tuned+focal_gamma={gamma:.4g}"]
    (cell,) = [
        r
        for r in mlflow.search_runs(
            search_all_experiments=True,
            filter_string=f"{TRAIN_RUNS} and tags.`{schema.PARENT_RUN}` = '{result.run_id}'",
            output_format="list",
        )
    ]
    assert cell.data.tags[schema.TUNED_FROM] == search.result.run_id
    assert json.loads(cell.data.tags[schema.IDENTITY])["kind"] == "cell"
    name = f"ltexp-digits-tiny_cnn-focal-lt-tuned+focal_gamma={gamma:.4g}"
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name = '{name}'")
    assert cell.info.run_id in {v.run_id for v in versions}
    # the champion is a tuned cell's model (another test's study trained the same cell too)
    champion = client.get_model_version_by_alias(name, "champion")
    assert client.get_run(champion.run_id).data.tags[schema.TUNED_FROM] == search.result.run_id
    # the search's trials are still only trials: unregistered, untested
    for trial in _trial_runs(search.result.run_id):
        assert schema.MODEL_URI not in trial.data.tags
    md = (result.report_dir / "report.md").read_text()
    assert "tuned on the validation set" in md


BAD = [
    ({"space": "lrr=uniform:0:1"}, "unknown key 'lrr'"),
    ({"space": "lr=gauss:0:1"}, "unknown distribution 'gauss'"),
    ({"space": "lr=uniform:0.1:0.01"}, "low must be <= high"),
    ({"space": "lr=loguniform:0:0.1"}, "loguniform needs low > 0"),
    ({"space": "lr=uniform:-1:0.1"}, "lr must be > 0"),
    ({"space": "num_threads=int:1:4"}, "only changes how a run executes"),
    ({"space": "model=choice:tiny_cnn|cifar_resnet8"}, "is the cell being tuned"),
    ({"space": "imbalance_ratio=uniform:10:100"}, "is a data setting"),
    ({"space": "lr=uniform:1e-4:1e-2", "trials": "0"}, "trials must be >= 1"),
    ({"space": "lr=uniform:1e-4:1e-2", "objective": "test_lt_acc1"}, "not a validation metric"),
    ({}, "the search space is empty"),
]


@pytest.mark.parametrize("bad,message", BAD, ids=[m for _, m in BAD])
def test_bad_search_input_is_one_line_and_creates_no_run(
    bad: dict, message: str, tmp_path: Path, tracking: str, capsys: pytest.CaptureFixture
) -> None:
    args = ["tune", "--preset", "demo", "--loss", "focal", "--epochs", "1"]
    args += ["--checkpoint-dir", str(tmp_path / "ckpt"), "--system-metrics", "false"]
    for key, value in bad.items():
        args += [f"--{key}", value]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


def _tune_cmd(tmp_path: Path, trials: int) -> list[str]:
    args = [sys.executable, "-m", "ltexp", "tune", "--preset", "demo", "--loss", "focal"]
    args += ["--space", SPACE, "--epochs", "3", "--trials", str(trials), "--pruner", "none"]
    args += ["--checkpoint-dir", str(tmp_path / "ckpt"), "--system-metrics", "false"]
    return [*args, "--deterministic", "true", "--num-threads", "1"]


@pytest.mark.slow
def test_a_killed_search_resumes_with_the_same_command(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.Popen(
        _tune_cmd(tmp_path, 4), env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while time.time() < deadline:  # kill it during its third trial
        if (proc.stdout.readline() or "").startswith("trial 1 "):
            time.sleep(1.0)
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = subprocess.run(_tune_cmd(tmp_path, 4), env=env, cwd=tmp_path, capture_output=True)
    assert again.returncode == 0, again.stderr[-1500:]
    study = optuna.load_study(
        study_name=optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'optuna.db'}")[
            0
        ].study_name,
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
    )
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4 and len({t.number for t in study.trials}) == len(study.trials)
    mlflow.set_tracking_uri(uri)
    tunes = mlflow.search_runs(
        search_all_experiments=True,
        filter_string="tags.`ltexp.step` = 'tune'",
        output_format="list",
    )
    assert [t.info.status for t in tunes] == ["FINISHED"]  # the killed tune run, resumed
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert not [r for r in runs if r.info.status == "RUNNING"]


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_share_one_search_on_postgresql(tmp_path: Path) -> None:
    import uuid

    from tests.conftest import _pg_admin

    if not postgres_reachable():
        pytest.skip(f"no PostgreSQL reachable at {PG}")
    db = f"ltexp_{uuid.uuid4().hex[:10]}"
    _pg_admin(f"CREATE DATABASE {db}")
    uri = PG.replace("postgresql://", "postgresql+psycopg2://").rsplit("/", 1)[0] + f"/{db}"
    try:
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        subprocess.run(  # the store exists before the workers start, as a team's server does
            [sys.executable, "-m", "ltexp", "prepare-data", "--preset", "demo"],
            env=env,
            cwd=tmp_path,
            check=True,
            capture_output=True,
        )
        procs = [
            subprocess.Popen(_tune_cmd(tmp_path, 4), env=env, cwd=tmp_path, stderr=subprocess.PIPE)
            for _ in range(2)
        ]
        errors = [p.communicate(timeout=600)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), [e[-1500:] for e in errors]
        storage = f"{uri}?options=-csearch_path%3Dltexp_optuna"
        (summary,) = optuna.get_all_study_summaries(storage)
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        numbers = [t.number for t in study.trials]
        assert len(numbers) == len(set(numbers)) >= 4
        # trials are never one cell: no worker's trial was refused as another's (issue 23); a
        # trial drawn beyond the budget by the other worker is closed untrained (issue 39)
        trained = [t for t in study.trials if not t.user_attrs.get("ltexp_surplus")]
        assert not [t.number for t in trained if t.state.name == "FAIL"]
        assert len(trained) == 4
        mlflow.set_tracking_uri(uri)
        trial_runs = mlflow.search_runs(
            search_all_experiments=True,
            filter_string=f"tags.`{schema.TUNE_STUDY}` = '{summary.study_name}' and "
            f"tags.`{schema.STEP}` = 'train'",
            output_format="list",
        )
        tags = [r.data.tags[schema.TRIAL] for r in trial_runs]
        assert len(tags) == len(set(tags)) == 4
    finally:
        _pg_admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


@pytest.mark.slow
def test_two_workers_on_one_sqlite_store_train_the_budget_and_no_more(tmp_path: Path) -> None:
    """Issue 39: two `ltexp tune --trials 3` workers on one sqlite store ran 4 trials."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    subprocess.run(
        [sys.executable, "-m", "ltexp", "prepare-data", "--preset", "demo"],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    procs = [
        subprocess.Popen(_tune_cmd(tmp_path, 3), env=env, cwd=tmp_path, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-1500:] for e in errors]
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    trial_runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`{schema.STEP}` = 'train'",
        output_format="list",
    )
    assert len(trial_runs) == 3, [r.data.tags.get(schema.TRIAL) for r in trial_runs]


def test_the_readme_s_mlflow_run_tune_command_logs_its_space_as_mlflow_did(
    tmp_path: Path, tracking: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Issue 27: `mlflow run . -e tune -P space=lr=…,focal_gamma=…` failed with "param space is
    already 'a,b' on this run; it cannot become 'a b'": MLflow logs -P space as given."""
    space = "lr=loguniform:1e-5:1e-2,focal_gamma=uniform:0:5"
    with mlflow.start_run() as launched:  # what `mlflow run` does before ltexp starts
        mlflow.log_param("space", space)
    monkeypatch.setenv("MLFLOW_RUN_ID", launched.info.run_id)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", launched.info.experiment_id)
    args = ["tune", "--preset", "demo", "--loss", "focal", "--space", space, "--trials", "1"]
    args += ["--epochs", "1", "--system-metrics", "false", "--checkpoint-dir", str(tmp_path / "c")]
    args += ["--data-root", str(tmp_path / "data")]
    assert main(args) == 0, capsys.readouterr().err
    run = mlflow.get_run(launched.info.run_id)
    assert run.data.tags[schema.STEP] == "tune" and run.data.params["space"] == space


def test_a_trial_whose_worker_was_killed_is_failed_by_the_next_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24: after kill -9 during a search, the killed trial stayed RUNNING forever."""
    from ltexp.study import tune

    monkeypatch.setattr(tune, "TRIAL_HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(tune, "TRIAL_GRACE_SECONDS", 1)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    settings = build_config("demo", {"trials": 3}).tune
    study = tune._study(optuna, "killed", storage, settings)
    trial = study.ask()  # a worker starts a trial, beats once, and is killed
    study._storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)
    again = tune._study(optuna, "killed", storage, settings)  # the next worker (or resume)
    (state,) = [t.state for t in again.get_trials(deepcopy=False)]
    assert state == optuna.trial.TrialState.FAIL
