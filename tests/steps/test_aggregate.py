"""The report from evaluate runs written straight to a tracking store (as any tool could)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from ltexp import schema
from ltexp.config import build_config
from ltexp.errors import ConfigError
from ltexp.steps.aggregate import run_aggregate

MODELS = ["resnet50", "vit_b16"]
LOSSES = ["ce", "focal", "bs"]
METRICS = list(schema.REPORT_COLUMNS.values())
PNG = b"\x89PNG\r\n\x1a\n"


def _value(model: str, loss: str, split: str, seed: int, metric: str) -> float:
    """A known, distinct value per cell (what the runs log and the tests expect)."""
    return round(
        (
            MODELS.index(model) * 0.2
            + LOSSES.index(loss) * 0.05
            + (0.1 if split == "balanced" else 0.0)
            + seed * 0.01
            + METRICS.index(metric) * 0.002
        ),
        6,
    )


def _log_eval(
    exp_id: str,
    model: str,
    loss: str,
    split: str,
    seed: int,
    override: float | None = None,
    status: str = "FINISHED",
) -> str:
    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.set_tag(schema.STEP, "evaluate")
        mlflow.log_params(
            {
                "dataset": "cifar100",
                "model": model,
                "loss": loss,
                "train_split": split,
                "seed": seed,
            }
        )
        mlflow.log_metrics(
            {
                m: override if override is not None else _value(model, loss, split, seed, m)
                for m in METRICS
            }
        )
    if status != "FINISHED":
        mlflow.MlflowClient().set_terminated(run.info.run_id, status)
    time.sleep(0.01)  # distinct end times
    return run.info.run_id


@pytest.fixture
def store(tracking: str) -> str:
    exp_id = mlflow.create_experiment("synthetic-report")
    for model, loss, split, seed in itertools.product(MODELS, LOSSES, ["balanced", "lt"], [1, 2]):
        if (model, loss, split) == ("vit_b16", "bs", "lt") and seed == 2:
            continue  # one missing cell (seed 2 only)
        _log_eval(
            exp_id,
            model,
            loss,
            split,
            seed,
            override=0.0 if (model, loss, split, seed) == ("resnet50", "ce", "lt", 1) else None,
        )
    # the duplicate: a later run of the cell overrides the 0.0 one above
    _log_eval(exp_id, "resnet50", "ce", "lt", 1)
    _log_eval(exp_id, "resnet50", "ce", "lt", 2, override=0.99, status="FAILED")  # ignored
    return exp_id


def _report(tmp_path: Path):
    cfg = build_config("thesis", {"output_dir": str(tmp_path / "out")})
    cfg = cfg.replace(experiment="synthetic-report")
    return run_aggregate(cfg)


def test_results_tables_are_seed_means_in_spec_order(store: str, tmp_path: Path) -> None:
    result = _report(tmp_path)
    out = result.output_dir
    for model, split in itertools.product(MODELS, ["balanced", "lt"]):
        table = pd.read_csv(out / f"results_{model}_{split}.csv")
        assert table["loss"].tolist() == ["ce", "focal", "bs"]  # SPEC's order, not alphabetical
        assert list(table.columns[:6]) == [
            "loss",
            "balanced",
            "long_tailed",
            "head",
            "middle",
            "tail",
        ]
        assert "n_seeds" in table and "balanced_seed_std" in table
        for _, row in table.iterrows():
            seeds = [1] if (model, row["loss"], split) == ("vit_b16", "bs", "lt") else [1, 2]
            for col, metric in schema.REPORT_COLUMNS.items():
                values = [_value(model, row["loss"], split, s, metric) for s in seeds]
                assert row[col] == pytest.approx(np.mean(values), abs=1e-6)
                assert row[f"{col}_seed_std"] == pytest.approx(np.std(values), abs=1e-6)
            assert row["n_seeds"] == len(seeds)


def test_summaries_are_population_mean_and_std(store: str, tmp_path: Path) -> None:
    out = _report(tmp_path).output_dir
    by_model = pd.read_csv(out / "summary_by_model.csv")
    assert by_model["model"].tolist() == ["resnet50", "vit_b16"]
    for _, row in by_model.iterrows():
        for col, metric in schema.REPORT_COLUMNS.items():
            cell_means = [
                np.mean(
                    [
                        _value(row["model"], lo, "lt", s, metric)
                        for s in ([1] if (row["model"], lo) == ("vit_b16", "bs") else [1, 2])
                    ]
                )
                for lo in LOSSES
            ]
            assert row[f"{col}_mean"] == pytest.approx(np.mean(cell_means), abs=1e-6)
            assert row[f"{col}_std"] == pytest.approx(np.std(cell_means, ddof=0), abs=1e-6)
    by_loss = pd.read_csv(out / "summary_by_loss.csv")
    assert by_loss["loss"].tolist() == ["ce", "focal", "bs"]
    row = by_loss[by_loss["loss"] == "focal"].iloc[0]
    values = [
        np.mean([_value(m, "focal", "lt", s, "test_tail_acc1") for s in (1, 2)]) for m in MODELS
    ]
    assert row["tail_mean"] == pytest.approx(np.mean(values))
    assert row["tail_std"] == pytest.approx(np.std(values, ddof=0))


def test_missing_cells_duplicates_and_failed_runs(store: str, tmp_path: Path) -> None:
    result = _report(tmp_path)
    assert result.report.missing == ["vit_b16/bs/lt/seed 2"]
    assert len(result.report.duplicates) == 1 and "resnet50/ce/lt/1" in result.report.duplicates[
        0
    ].replace("cifar100/", "")
    runs = pd.read_csv(result.output_dir / "runs.csv")
    assert len(runs) == 2 * 3 * 2 * 2 - 1  # one row per cell and seed used
    assert set(METRICS) <= set(runs.columns)
    assert runs["test_balanced_acc1"].max() < 0.99  # the FAILED run is not used
    md = (result.output_dir / "report.md").read_text()
    assert "Missing cells (1)" in md and "vit_b16/bs/lt/seed 2" in md
    assert "Duplicate runs" in md


def test_benchmarks_table_and_report_files(store: str, tmp_path: Path) -> None:
    out = _report(tmp_path).output_dir
    bench = pd.read_csv(out / "benchmarks.csv")
    assert list(bench.columns) == [
        "model",
        "result",
        "benchmark",
        "benchmark_source",
        "best_loss",
    ]
    vit = bench[bench["model"] == "vit_b16"].iloc[0]
    best = max(
        np.mean([_value("vit_b16", lo, "balanced", s, "test_balanced_acc1") for s in (1, 2)])
        for lo in LOSSES
    )
    assert vit["result"] == pytest.approx(best)
    # the thesis's reference for ViT-B/16 (docs/protocol.md): 93.51 %, Ye et al. 2023
    assert vit["benchmark"] == pytest.approx(0.9351)
    assert "arXiv:2312.15681" in vit["benchmark_source"]
    for name in ("fig_summary_by_model", "fig_summary_by_loss", "fig_resnet50", "fig_vit_b16"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG
        assert (out / f"{name}.pdf").read_bytes()[:4] == b"%PDF"
    tex = (out / "report_body.tex").read_text()
    assert "\\toprule" in tex and "Balanced Softmax loss" in tex
    md = (out / "report.md").read_text()
    assert "± " in md and "Softmax loss" in md and "ViT-B/16" in md


def test_report_is_logged_on_an_aggregate_run(store: str, tmp_path: Path) -> None:
    result = _report(tmp_path)
    run = mlflow.get_run(result.run_id)
    assert run.data.tags[schema.STEP] == "aggregate" and run.info.status == "FINISHED"
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id, "report")}
    assert "report/report.md" in names and "report/results_resnet50_lt.csv" in names


def test_numbered_captions_with_the_full_grid(tracking: str, tmp_path: Path) -> None:
    exp_id = mlflow.create_experiment("full-grid")
    losses = ["ce", "focal", "wce", "cb", "bs", "seql", "ldam"]
    for model, loss, split in itertools.product(
        ["resnet50", "mobilenet_v2", "vit_b16", "convnext_base"], losses, ["balanced", "lt"]
    ):
        _log_eval(exp_id, model, loss, split, 1, override=0.5)
    cfg = build_config("thesis", {"output_dir": str(tmp_path / "full")})
    cfg = cfg.replace(experiment="full-grid")
    md = (run_aggregate(cfg).output_dir / "report.md").read_text()
    assert "Table 4.1: ResNet-50 trained on the balanced set" in md
    assert "Table 4.8: ConvNeXt-Base trained on the long-tailed set" in md
    assert "Table 4.9" in md and "Table 4.11" in md


@pytest.mark.slow
def test_a_thousand_runs_are_all_reported(tracking: str, tmp_path: Path) -> None:
    exp_id = mlflow.create_experiment("many")
    client = mlflow.MlflowClient()
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    for i in range(1000):
        run = client.create_run(exp_id, tags={schema.STEP: "evaluate"})
        model, loss = ["resnet50", "vit_b16"][i % 2], LOSSES[i % 3]
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(m, 0.5, now, 0) for m in METRICS],
            params=[
                Param("dataset", "cifar100"),
                Param("model", model),
                Param("loss", loss),
                Param("train_split", "lt"),
                Param("seed", str(i)),
            ],
            tags=[RunTag("x", "y")],
        )
        client.set_terminated(run.info.run_id)
    cfg = build_config("thesis", {"output_dir": str(tmp_path / "many")})
    cfg = cfg.replace(experiment="many")
    result = run_aggregate(cfg)
    assert result.report.n_runs == 1000  # every run, not the first page only
    runs = pd.read_csv(result.output_dir / "runs.csv")
    assert runs["seed"].nunique() == 1000


def test_unwritable_output_dir(store: str, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = build_config("thesis", {"output_dir": str(blocker / "sub")})
    cfg = cfg.replace(experiment="synthetic-report")
    with pytest.raises(ConfigError, match="cannot be written"):
        run_aggregate(cfg)
    n = len(
        mlflow.search_runs(experiment_ids=[store], filter_string="tags.`ltexp.step` = 'aggregate'")
    )
    assert n == 0


def test_without_an_experiment_the_latest_evaluated_study_is_reported(
    tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = mlflow.create_experiment("old-study")
    _log_eval(old, "resnet50", "ce", "lt", 1)
    new = mlflow.create_experiment("new-study")
    _log_eval(new, "resnet50", "bs", "lt", 1)
    mlflow.create_experiment("empty")
    lines: list[str] = []
    cfg = build_config("thesis", {"output_dir": str(tmp_path / "a")})
    result = run_aggregate(cfg, announce=lines.append)
    assert lines[0].startswith("reporting experiment 'new-study' (the latest evaluated)")
    assert "-P experiment=<name>" in lines[0]
    assert mlflow.get_run(result.run_id).info.experiment_id == new
    # under `mlflow run`, the experiment it chose wins when it holds evaluate runs
    wrapper = mlflow.MlflowClient().create_run(old).info.run_id
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", old)
    monkeypatch.setenv("MLFLOW_RUN_ID", wrapper)
    lines.clear()
    result = run_aggregate(cfg.replace(output_dir=str(tmp_path / "b")), announce=lines.append)
    assert "'old-study' (the experiment mlflow run chose)" in lines[0]
    assert result.run_id == wrapper  # the run mlflow run created is the aggregate run
    assert mlflow.get_run(wrapper).data.tags[schema.STEP] == "aggregate"


def test_a_named_experiment_becomes_a_safe_folder_name(store: str, tmp_path: Path) -> None:
    from ltexp.report.folder import report_folder

    assert report_folder("../../victim") == Path("reports/victim")
    assert report_folder("/etc/passwd") == Path("reports/etc_passwd")
    assert report_folder("   ") == Path("reports/experiment")
    mlflow.MlflowClient().rename_experiment(store, "../../victim")
    cfg = build_config("thesis").replace(experiment="../../victim")
    result = run_aggregate(cfg)
    assert result.output_dir.resolve() == (Path.cwd() / "reports" / "victim").resolve()
    assert not (tmp_path.parent.parent / "victim").exists()


def test_the_mlflow_run_wrapper_in_default_explains_itself_and_the_report_is_linked(
    tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's stray run: `mlflow run . -e aggregate` left an empty, randomly named run
    (gentle-crab-354) in "Default"; the report now opens from the run's description."""
    study = mlflow.create_experiment("some-study")
    _log_eval(study, "resnet50", "ce", "lt", 1)
    wrapper = mlflow.MlflowClient().create_run("0", run_name="gentle-crab-354").info.run_id
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "0")
    monkeypatch.setenv("MLFLOW_RUN_ID", wrapper)
    cfg = build_config("thesis", {"output_dir": str(tmp_path / "r")})
    result = run_aggregate(cfg.replace(experiment="some-study"))
    assert result.run_id != wrapper
    assert mlflow.get_run(result.run_id).info.experiment_id == study
    left = mlflow.get_run(wrapper)
    assert left.info.run_name == f"mlflow-run-{mlflow.get_run(result.run_id).info.run_name}"
    assert left.data.tags[schema.RESUMED_INTO] == result.run_id
    assert f"#/experiments/{study}/runs/{result.run_id})" in left.data.tags[schema.DESCRIPTION_TAG]
    assert "'some-study'" in left.data.tags[schema.DESCRIPTION_TAG]
    # wrappers no longer collect in "Default": the next command's deletes this one, once ended
    # (as `mlflow run` does after the process); the latest stays, explaining itself
    mlflow.MlflowClient().set_terminated(wrapper)
    second = mlflow.MlflowClient().create_run("0").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", second)
    again = run_aggregate(cfg.replace(experiment="some-study"))
    assert mlflow.get_run(wrapper).info.lifecycle_stage == "deleted"  # restorable
    assert [r.info.run_id for r in mlflow.search_runs(["0"], output_format="list")] == [second]
    assert mlflow.get_run(second).data.tags[schema.RESUMED_INTO] == again.run_id
    # the aggregate run's description links to the report page it logged
    description = mlflow.get_run(result.run_id).data.tags[schema.DESCRIPTION_TAG]
    link = f"#/experiments/{study}/runs/{result.run_id}/artifacts/{schema.REPORT_HTML}"
    assert f"[Open the report]({link})" in description
    logged = mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path=schema.REPORT_HTML, dst_path=str(tmp_path / "d")
    )
    assert Path(logged).read_text().startswith("<!DOCTYPE html>")


def test_a_failed_step_leaves_its_mlflow_run_wrapper_visible_with_the_reason(
    tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a wrapper whose step FINISHED is retired: a failure stays in sight, with its error."""
    study = mlflow.create_experiment("some-study")
    _log_eval(study, "resnet50", "ce", "lt", 1)
    wrapper = mlflow.MlflowClient().create_run("0").info.run_id
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "0")
    monkeypatch.setenv("MLFLOW_RUN_ID", wrapper)
    cfg = build_config("thesis", {"output_dir": str(tmp_path / "r")})

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mlflow, "log_metrics", disk_full)  # inside the aggregate run
    with pytest.raises(OSError):
        run_aggregate(cfg.replace(experiment="some-study"))
    left = mlflow.get_run(wrapper)
    assert left.info.lifecycle_stage == "active"
    assert left.data.tags[schema.RESUMED_INTO]  # linked to the failed aggregate run
