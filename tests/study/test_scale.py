"""Scaling out: parallel workers, Ray tasks, and a PostgreSQL-backed MLflow tracking server."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pandas as pd
import psutil
import pytest
import torch
from pandas.testing import assert_frame_equal

from ltexp import schema
from ltexp.cells import grid_cells
from ltexp.study.run import run_study
from tests.conftest import step_counts

GRID = {"models": "tiny_cnn", "losses": "ce,bs", "train_splits": "balanced,lt", "epochs": 2}
EXPECTED = {"main": 1, "prepare_data": 1, "train": 4, "evaluate": 4, "aggregate": 1}


def _check_study(study_run: str, epochs: int = 2) -> None:
    """Every run arrived, under the study, with every epoch's metrics."""
    assert step_counts() == EXPECTED
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert all(r.info.status == "FINISHED" for r in runs)
    client = mlflow.MlflowClient()
    for run in runs:
        step = run.data.tags[schema.STEP]
        if step in ("train", "prepare_data", "aggregate"):
            assert run.data.tags[schema.PARENT_RUN] == study_run
        if step == "evaluate":
            parent = client.get_run(run.data.tags[schema.PARENT_RUN])
            assert parent.data.tags[schema.STEP] == "train"
            assert len([k for k in run.data.metrics if k.endswith("_acc1")]) >= 7
        if step == "train":
            for metric in ("train_loss", "val_acc1", "images_per_s"):
                assert len(client.get_metric_history(run.info.run_id, metric)) == epochs


# every axis off its plain value somewhere: 4 trained cells, each also τ-normalised (no training)
EVERY_AXIS = {
    "models": "tiny_cnn",
    "losses": "ce",
    "train_splits": "lt",
    "samplers": "instance,sqrt",
    "study_mixing": "none,cutmix",
    "study_stage2": "none,tau_norm",
    "epochs": 1,
}


def _check_every_cell_once_as_itself(cfg, result) -> None:
    """Each cell of the grid has exactly one finished run whose params are the cell's values
    (a train run; a decouple run for a second stage), and one row in the report."""

    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert all(r.info.status == "FINISHED" for r in runs)
    grid = grid_cells(cfg)
    assert len(grid) == 8
    for cell in grid:
        step = "decouple" if cell.stage == 2 else "train"
        mine = [
            r
            for r in runs
            if r.data.tags[schema.STEP] == step
            and all(r.data.params.get(k) == str(v) for k, v in cell.values if k != "stage2")
            and r.data.params.get("stage2", "none") == cell["stage2"]
        ]
        assert len(mine) == 1, cell
    table = pd.read_csv(result.report_dir / "runs.csv")
    assert len(table) == 8
    assert len(table[["sampler", "mixing", "stage2"]].drop_duplicates()) == 8


@pytest.mark.slow
def test_every_cell_of_a_grid_over_every_axis_is_trained_once_as_itself(tiny_config) -> None:
    """Workers receive the whole cell (issue 23: a parallel grid dropped its sampler and mixing,
    and trained or reused the plain cell in their place). Ray tasks run the same command lines:
    the three-node test below gives them this grid, after one process trains it serially."""
    cfg = tiny_config(**EVERY_AXIS, workers=2)
    result = run_study(cfg)
    _check_every_cell_once_as_itself(cfg, result)
    again = run_study(cfg)  # and the same command trains nothing again
    assert again.ran == [] and len(again.reused) == 8


@pytest.mark.slow
def test_local_workers_run_cells_in_parallel_processes(tiny_config) -> None:
    result = run_study(tiny_config(**GRID, workers=2))
    assert len(result.ran) == 4
    _check_study(result.run_id)


def _cell_processes(node) -> list[psutil.Process]:
    """The ``ltexp train`` processes a Ray node runs (under its raylet: worker, then cell)."""
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    found = []
    for proc in raylet.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.cmdline()[1:4] == ["-m", "ltexp", "train"]:
                found.append(proc)
    return found


def _kill_node_mid_cell(cluster, nodes: list, ckpt: Path, deadline: float) -> str:
    """Wait until a worker node's cell has written its first checkpoint, then lose that node as
    a machine is lost: its processes killed (SIGKILL), the node removed. Returns the cell's run."""
    client = mlflow.MlflowClient()
    while time.time() < deadline:
        for node in nodes:
            for proc in _cell_processes(node):
                found = client.search_runs(
                    [e.experiment_id for e in client.search_experiments()],
                    f"tags.`{schema.PID}` = '{proc.pid}' and attributes.status = 'RUNNING'",
                )
                if found and (ckpt / found[0].info.run_id / "last.pt").exists():
                    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
                    for child in raylet.children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            child.kill()
                    cluster.remove_node(node, allow_graceful=False)
                    return found[0].info.run_id
        time.sleep(0.05)
    raise AssertionError("no cell was caught between its first checkpoint and its end")


def _results(report_dir: Path) -> pd.DataFrame:
    """The report's results, one row per cell, without the run ids."""
    table = pd.read_csv(report_dir / "runs.csv").drop(columns=["run_id"])
    keys = [*schema.CELL_PARAMS, "sampler", "mixing", "stage2"]
    return table.sort_values(keys).reset_index(drop=True)


@pytest.mark.slow
@pytest.mark.ray
def test_a_grid_over_a_three_node_ray_cluster_survives_a_lost_worker_node(
    tiny_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 40 item 5: a head and two worker nodes; one worker node is lost while a cell
    trains; Ray runs that cell's task again on the other node, where it resumes from the
    checkpoint. Every cell (all axes off their plain value somewhere) has one finished run and
    one registered version, and the report is a serial run's."""
    ray = pytest.importorskip("ray", reason="the optional ray extra: pip install 'ltexp[ray]'")
    from ray.cluster_utils import Cluster

    grid = {**EVERY_AXIS, "epochs": 3}
    serial_cfg = tiny_config(**grid, experiment="serial")
    serial = run_study(serial_cfg)  # in one process: each cell once, as itself, then reused
    _check_every_cell_once_as_itself(serial_cfg, serial)
    again = run_study(serial_cfg)
    assert again.ran == [] and len(again.reused) == 8
    # the nodes' workers at normal priority, as ltexp starts a local Ray (Ray's default, 15,
    # starves the cells beside the other tests' processes)
    monkeypatch.setenv("RAY_worker_niceness", "0")
    monkeypatch.setenv("LTEXP_POLL_SECONDS", "1")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the driver's node
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        cfg = tiny_config(**grid, executor="ray", experiment="ray")
        outcome: list = []
        study = threading.Thread(target=lambda: outcome.append(_attempt(run_study, cfg)))
        study.start()
        ckpt = Path(cfg.runtime.checkpoint_dir)
        lost = _kill_node_mid_cell(cluster, workers, ckpt, time.time() + 240)
        study.join(timeout=480)
        assert not study.is_alive(), "the study did not finish after its node was lost"
    finally:
        ray.shutdown()
        cluster.shutdown()
    (result,) = outcome
    assert not isinstance(result, BaseException), result
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("ray").experiment_id
    runs = client.search_runs([exp], max_results=1000)
    assert all(r.info.status == "FINISHED" for r in runs)
    trains = [r for r in runs if r.data.tags[schema.STEP] == "train"]
    assert len(trains) == len({r.data.tags[schema.CONFIG_HASH] for r in trains}) == 4
    resumed = client.get_run(lost)  # the lost cell's run, continued to its end elsewhere
    assert resumed.info.status == "FINISHED" and schema.RESUMED_FROM_EPOCH in resumed.data.tags
    decoupled = [r for r in runs if r.data.tags[schema.STEP] == "decouple"]
    assert len(decoupled) == 4
    uris = [r.data.tags[schema.MODEL_URI] for r in trains + decoupled]
    versions = {
        (v.name, v.run_id)
        for name in {u.split("/")[1] for u in uris}
        for v in client.search_model_versions(f"name = '{name}'")
        if v.run_id in {r.info.run_id for r in trains + decoupled}
    }
    assert len(versions) == len(set(uris)) == 8  # one version per cell, none twice
    assert_frame_equal(_results(result.report_dir), _results(serial.report_dir))


def _attempt(function, *args):
    try:
        return function(*args)
    except BaseException as e:  # noqa: BLE001 - handed to the test's thread
        return e


@pytest.mark.slow
def test_ray_missing_says_how_to_install_before_any_run(
    tiny_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from ltexp.errors import ConfigError

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install 'ltexp\[ray\]'"):
        run_study(tiny_config(**{**GRID, "losses": "ce", "train_splits": "lt"}, executor="ray"))
    assert step_counts() == {}


@pytest.mark.slow
@pytest.mark.postgres
def test_study_with_workers_against_a_postgres_tracking_server(
    postgres_server: str, tmp_path: Path
) -> None:
    from ltexp.config import build_config
    from tests.conftest import tiny_overrides

    cfg = build_config("demo", tiny_overrides(tmp_path, **GRID, workers=2))
    result = run_study(cfg)
    _check_study(result.run_id)
    # artifacts went through the server into its destination folder
    stored = {p.name for p in (tmp_path / "server" / "artifacts").rglob("*")}
    assert {"manifest.json", "model.pth", "report.md", "predictions.npz"} <= stored
    model = mlflow.pytorch.load_model("models:/ltexp-digits-tiny_cnn-bs-lt@champion")
    import torch

    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow
def test_torchrun_data_parallel_run_on_cpu(tmp_path: Path) -> None:
    """``torchrun --nproc_per_node=2`` (gloo), with a sampler and a mixing axis: one run, logged
    by rank 0 only, whose registered model loads and was evaluated."""
    from tests.conftest import tiny_args

    torchrun = Path(sys.executable).parent / "torchrun"
    args = [str(torchrun), "--nproc_per_node=2", "-m", "ltexp", "train"]
    args += tiny_args(
        tmp_path, epochs=2, train_split="balanced", sampler="class_balanced", mixing="mixup"
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run(
        args,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("train run:") == 1  # rank 1 says nothing
    assert step_counts(uri) == {"prepare_data": 1, "train": 1, "evaluate": 1}
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    train = next(r for r in runs if r.data.tags[schema.STEP] == "train")
    assert train.data.params["world_size"] == "2" and train.info.status == "FINISHED"
    history = mlflow.MlflowClient().get_metric_history(train.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2]
    assert len(list((tmp_path / "ckpt").glob("*/last.pt"))) == 1
    assert train.data.params["sampler"] == "class_balanced"
    assert train.data.params["mixing"] == "mixup"
    import ltexp

    mlflow.set_tracking_uri(uri)
    model = ltexp.load_model(train.data.tags[schema.MODEL_URI])
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
