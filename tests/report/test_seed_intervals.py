"""The report's intervals and marks with several seeds, on a planted study (no training): each
cell's interval covers seeds and images and stays in [0, 1], a planted effect is marked after
Holm's correction, a planted null is not, and the notes say how many were tested (issue 37)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ltexp.report.build import Grid, ReportInputs, build_report
from ltexp.statistics import accuracy_interval, paired_difference
from tests.planted import cifar_manifest, plant

EFFECTS = {("resnet50", "ce"): 0.0, ("resnet50", "focal"): 0.0, ("resnet50", "bs"): 0.3}
GRID = Grid(["resnet50"], ["ce", "focal", "bs"], ["lt"])


@pytest.fixture(scope="module")
def manifest() -> dict:
    return cifar_manifest()


@pytest.fixture(scope="module")
def three_seeds(manifest: dict, tmp_path_factory: pytest.TempPathFactory):
    study = plant(manifest, EFFECTS, seeds=(1, 2, 3))
    out = tmp_path_factory.mktemp("three-seeds")
    build_report(ReportInputs(study.frame(), manifest, study.load), out, GRID)
    return study, out


def _correct(study, run_ids: list[str], split: str, classes=None) -> np.ndarray:
    rows = []
    for run_id in run_ids:
        pred = study.predictions[run_id]
        labels = pred[f"{split}_labels"]
        right = pred[f"{split}_top5"][:, 0] == labels
        rows.append(right if classes is None else right[np.isin(labels, classes)])
    return np.stack(rows)


def test_a_planted_effect_is_marked_after_holm_and_a_planted_null_is_not(three_seeds) -> None:
    study, out = three_seeds
    paired = pd.read_csv(out / "paired_vs_softmax.csv").set_index("loss")
    bs, focal = paired.loc["bs"], paired.loc["focal"]
    assert bs["balanced_significant"] and bs["balanced_p_holm"] < 0.05
    assert not focal["balanced_significant"] and focal["balanced_p_value"] > 0.05
    # the CSV's numbers (6 decimals) are the library's on the planted predictions, recomputed here
    ce_runs = [f"resnet50-ce-lt-s{s}" for s in (1, 2, 3)]
    bs_runs = [f"resnet50-bs-lt-s{s}" for s in (1, 2, 3)]
    direct = paired_difference(
        _correct(study, bs_runs, "test_balanced"), _correct(study, ce_runs, "test_balanced")
    )
    assert bs["balanced"] == pytest.approx(direct.value, abs=1e-6)
    assert (bs["balanced_ci_low"], bs["balanced_ci_high"]) == pytest.approx(
        (direct.ci_low, direct.ci_high), abs=1e-6
    )
    assert bs["balanced_p_value"] == pytest.approx(direct.p_value, abs=1e-6)
    # Holm over the table's 10 differences (2 losses × 5 columns): at least the raw p-value
    assert bs["balanced_p_holm"] >= bs["balanced_p_value"]
    md = (out / "report.md").read_text()
    assert "Holm's correction over the 10 differences of this table that were tested" in md
    row = next(
        line for line in md.splitlines() if line.startswith("| ResNet-50 | Balanced Softmax")
    )
    assert row.split("|")[3].strip().endswith("*")


def test_several_seed_cells_carry_one_interval_over_seeds_and_images(three_seeds) -> None:
    study, out = three_seeds
    table = pd.read_csv(out / "results_resnet50_lt.csv").set_index("loss")
    assert set(table["interval"]) == {"seeds and images"}
    for loss in ("ce", "bs"):
        runs = [f"resnet50-{loss}-lt-s{s}" for s in (1, 2, 3)]
        direct = accuracy_interval(_correct(study, runs, "test_balanced"))
        row = table.loc[loss]
        assert (row["balanced_ci_low"], row["balanced_ci_high"]) == pytest.approx(
            (direct.ci_low, direct.ci_high), abs=1e-6
        )
        for c in ("balanced", "long_tailed", "head", "middle", "tail"):
            assert 0 <= row[f"{c}_ci_low"] <= row[c] <= row[f"{c}_ci_high"] <= 1
    md = (out / "report.md").read_text()
    assert "cells of several seeds (n = 3): the 95 % interval of the mean over seeds and test" in md


def test_one_seed_a_side_marks_nothing_and_gives_no_p_value(manifest: dict, tmp_path: Path) -> None:
    study = plant(manifest, EFFECTS, seeds=(1,))
    build_report(ReportInputs(study.frame(), manifest, study.load), tmp_path, GRID)
    paired = pd.read_csv(tmp_path / "paired_vs_softmax.csv")
    assert not paired.filter(like="_significant").to_numpy().any()
    assert paired.filter(like="_p_value").isna().all(axis=None)
    table = pd.read_csv(tmp_path / "results_resnet50_lt.csv")
    assert set(table["interval"]) == {"exact binomial"}
    md = (tmp_path / "report.md").read_text()
    note = next(line for line in md.splitlines() if line.startswith("Difference of top-1"))
    assert "so nothing is marked" in note and "Holm" not in note


def test_a_truncated_predictions_artifact_leaves_that_run_out_with_a_note(
    manifest: dict, tmp_path: Path
) -> None:
    study = plant(manifest, EFFECTS, seeds=(1, 2, 3))
    pred = study.predictions["resnet50-focal-lt-s2"]
    pred["test_balanced_top5"] = pred["test_balanced_top5"][:10]  # cut short
    report = build_report(ReportInputs(study.frame(), manifest, study.load), tmp_path, GRID)
    assert any("1 evaluate run(s) have no readable predictions" in n for n in report.notes)
    paired = pd.read_csv(tmp_path / "paired_vs_softmax.csv").set_index("loss")
    assert paired.loc["focal", "n_seeds"] == 2 and paired.loc["bs", "n_seeds"] == 3
    table = pd.read_csv(tmp_path / "results_resnet50_lt.csv").set_index("loss")
    assert table.loc["focal", "interval"] == "seeds only"  # its seeds' own spread, said so


def test_a_loss_that_is_another_by_construction_is_labelled_and_left_out_of_the_family(
    manifest: dict, tmp_path: Path
) -> None:
    """Issue 37: la at τ = 1 is Balanced Softmax by construction: its rows say so, as the
    (= Softmax) rows do, and its comparison is not counted twice."""
    effects = {("resnet50", "ce"): 0.0, ("resnet50", "bs"): 0.3, ("resnet50", "la"): 0.3}
    study = plant(manifest, effects, seeds=(1, 2, 3))
    grid = Grid(["resnet50"], ["ce", "bs", "la"], ["lt"])
    build_report(ReportInputs(study.frame(), manifest, study.load), tmp_path, grid)
    md = (tmp_path / "report.md").read_text()
    assert "| Logit-adjusted loss (= Balanced Softmax) |" in md
    assert "is the Balanced Softmax loss by construction" in md
    paired = pd.read_csv(tmp_path / "paired_vs_softmax.csv").set_index("loss")
    assert paired.loc["la", "same_as"] == "bs" and not paired.loc["la", "same_as_softmax"]
    assert not paired.loc["la"].filter(like="_significant").any()
    assert paired.loc["bs", "balanced_significant"]
    assert "over the 5 differences of this table that were tested" in md  # bs's five only
