"""The report's tables from a frame of results (no tracking store): values computed here."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from ltexp.report.build import Grid, build_report, results_frame
from ltexp.report.tables import (
    COLUMNS,
    benchmarks_table,
    cell_means,
    results_table,
    select_latest,
    summary,
)

MODELS, LOSSES, SPLITS = ["resnet50", "vit_b16"], ["ce", "bs"], ["balanced", "lt"]


def _records(seeds: tuple[int, ...] = (1, 2)) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i, (m, lo, sp, s) in enumerate(itertools.product(MODELS, LOSSES, SPLITS, seeds)):
        out.append(
            {
                "run_id": f"r{i}",
                "end_time": i,
                "dataset": "cifar100",
                "model": m,
                "loss": lo,
                "train_split": sp,
                "seed": str(s),
                **{c: float(rng.uniform()) for c in COLUMNS},
            }
        )
    return out


def test_select_latest_keeps_the_newest_run_of_a_cell() -> None:
    records = _records()
    newer = {**records[0], "run_id": "new", "end_time": 1000, "balanced": 0.123}
    selection = select_latest(results_frame([*records, newer]))
    assert len(selection.results) == len(records)
    kept = selection.results[selection.results["run_id"] == "new"]
    assert kept["balanced"].tolist() == [0.123]
    assert len(selection.duplicates) == 1 and "used the latest (new)" in selection.duplicates[0]


def test_cell_means_and_results_table_are_seed_means_and_population_stds() -> None:
    frame = results_frame(_records())
    cells = cell_means(frame)
    table = results_table(cells, "vit_b16", "lt", ["bs", "ce"])
    assert table["loss"].tolist() == ["bs", "ce"]  # the order asked for
    for _, row in table.iterrows():
        part = frame[
            (frame["model"] == "vit_b16")
            & (frame["loss"] == row["loss"])
            & (frame["train_split"] == "lt")
        ]
        for c in COLUMNS:
            values = part[c].to_numpy()
            assert row[c] == pytest.approx(values.mean())
            assert row[f"{c}_seed_std"] == pytest.approx(np.std(values, ddof=0))
            # the interval of the mean over two seeds: t with 1 degree of freedom = 12.706
            half = 12.7062 * abs(values[0] - values[1]) / 2  # s/√2 for two values = |a − b|/2
            # ... within [0, 1]: accuracies can be nowhere else
            assert (row[f"{c}_ci_low"], row[f"{c}_ci_high"]) == pytest.approx(
                (max(0, values.mean() - half), min(1, values.mean() + half)), rel=1e-4
            )
        assert row["n_seeds"] == 2
    missing = results_table(cells, "vit_b16", "lt", ["bs", "focal"])
    assert missing[missing["loss"] == "focal"][list(COLUMNS)].isna().all(axis=None)


def test_summaries_average_the_cells_of_long_tailed_training() -> None:
    cells = cell_means(results_frame(_records(seeds=(1,))))
    by_model = summary(cells, "model", ("resnet50", "vit_b16"))
    lt = cells[cells["train_split"] == "lt"]
    for _, row in by_model.iterrows():
        values = lt[lt["model"] == row["model"]]["tail"].to_numpy()
        assert row["tail_mean"] == pytest.approx(values.mean())
        assert row["tail_std"] == pytest.approx(values.std(ddof=0))
        assert row["n"] == len(LOSSES)


def test_benchmarks_take_the_best_loss_of_balanced_training() -> None:
    cells = cell_means(results_frame(_records(seeds=(1,))))
    bench = benchmarks_table(cells, MODELS)
    for _, row in bench.iterrows():
        part = cells[(cells["model"] == row["model"]) & (cells["train_split"] == "balanced")]
        assert row["result"] == pytest.approx(part["balanced"].max())
        assert isinstance(row["benchmark_source"], str) and row["benchmark_source"]


def test_build_report_writes_every_table_without_a_store(tmp_path) -> None:
    frame = results_frame(_records())
    report = build_report(frame, tmp_path, Grid(MODELS, [*LOSSES, "focal"], SPLITS, ["1", "2"]))
    names = {p.name for p in report.files}
    for m, sp in itertools.product(MODELS, SPLITS):
        assert f"results_{m}_{sp}.csv" in names
    assert {"report.md", "report.tex", "benchmarks.csv", "runs.csv"} <= names
    assert len(report.missing) == len(MODELS) * len(SPLITS) * 2  # focal, both seeds
    written = pd.read_csv(tmp_path / "runs.csv")
    assert len(written) == len(frame)


def test_a_grid_without_axes_writes_the_thesis_report_and_no_axis_table(tmp_path) -> None:
    report = build_report(results_frame(_records()), tmp_path)
    written = pd.read_csv(tmp_path / "runs.csv")
    assert list(written.columns) == [
        "run_id",
        "dataset",
        "model",
        "loss",
        "train_split",
        "seed",
        "test_balanced_acc1",
        "test_lt_acc1",
        "test_head_acc1",
        "test_middle_acc1",
        "test_tail_acc1",
    ]
    assert not [p for p in report.files if p.name.startswith(("by_", "paired_vs_plain"))]
    assert "Loss ×" not in (tmp_path / "report.md").read_text()


def test_a_sampler_axis_gets_its_table_and_leaves_the_thesis_tables_to_plain_cells(
    tmp_path,
) -> None:
    plain = _records(seeds=(1,))
    balanced = [
        {**r, "run_id": f"cb{i}", "sampler": "class_balanced", "balanced": r["balanced"] / 2}
        for i, r in enumerate(plain)
    ]
    report = build_report(results_frame([*plain, *balanced]), tmp_path)
    assert report.n_runs == 2 * len(plain) and report.duplicates == []
    by_sampler = pd.read_csv(tmp_path / "by_sampler.csv")
    assert set(by_sampler["sampler"]) == {"instance", "class_balanced"}
    for r in plain:
        row = by_sampler[
            (by_sampler["model"] == r["model"])
            & (by_sampler["loss"] == r["loss"])
            & (by_sampler["train_split"] == r["train_split"])
        ].set_index("sampler")
        # the CSVs hold six decimals
        assert row.loc["instance", "balanced"] == pytest.approx(r["balanced"], abs=1e-6)
        assert row.loc["class_balanced", "balanced"] == pytest.approx(r["balanced"] / 2, abs=1e-6)
    # Tables 4.1-4.8 hold the plain runs only
    table = pd.read_csv(tmp_path / "results_resnet50_lt.csv").set_index("loss")
    want = {
        r["loss"]: r["balanced"]
        for r in plain
        if (r["model"], r["train_split"]) == ("resnet50", "lt")
    }
    assert table["balanced"].to_dict() == pytest.approx(want, abs=1e-6)
    md = (tmp_path / "report.md").read_text()
    assert "| Backbone | Training set | Loss | instance | class_balanced |" in md
    assert "sampler" in pd.read_csv(tmp_path / "runs.csv").columns


def test_an_axis_table_lists_only_the_cells_the_axis_varies_in_thesis_order(tmp_path) -> None:
    plain = _records(seeds=(1,))
    varied = [
        {**r, "run_id": f"v{r['run_id']}", "sampler": "sqrt"}
        for r in plain
        if r["train_split"] == "lt" and r["model"] == "vit_b16"
    ]
    build_report(results_frame([*reversed(varied), *plain]), tmp_path)
    by_sampler = pd.read_csv(tmp_path / "by_sampler.csv")
    rows = list(by_sampler[["model", "train_split", "loss", "sampler"]].itertuples(index=False))
    assert [tuple(r) for r in rows] == [
        ("vit_b16", "lt", "ce", "instance"),
        ("vit_b16", "lt", "ce", "sqrt"),
        ("vit_b16", "lt", "bs", "instance"),
        ("vit_b16", "lt", "bs", "sqrt"),
    ]
