"""Paired comparisons: is a loss better than the Softmax loss on the same test images?

Two models tested on the same images are compared image by image: the difference of their
top-1 accuracies, with a 95 % paired-bootstrap interval that resamples the test images jointly
for both models (Efron & Tibshirani 1993, ch. 13). Resampling them jointly keeps the correlation
between the two models' errors, so the interval is much tighter than two separate intervals
would suggest, and honest: where it excludes 0, the difference is not an accident of which
images the test set happens to hold. With several seeds, each image's difference is first
averaged over the seeds (the images are the same for every seed).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ltexp.evaluation import bootstrap_means, percentile_interval
from ltexp.report.model import Block, Figure, Fmt, Grid, Predictions, ReportOptions, Table
from ltexp.report.tables import (
    BASELINE_LOSS,
    COLUMN_TITLES,
    COLUMNS,
    SPLIT_ORDER,
    SPLIT_TITLES,
    axis_params,
    axis_title,
    loss_title,
    model_title,
)
from ltexp.report.variants import axes_of


@dataclass(frozen=True)
class PairedDifference:
    """``acc(a) − acc(b)`` on ``n`` images, its interval, and whether the interval excludes 0."""

    diff: float
    ci_low: float
    ci_high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.n > 0 and (self.ci_low > 0 or self.ci_high < 0)


def paired_bootstrap(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> PairedDifference:
    """Difference of top-1 accuracy of model a and model b on the same images.

    Args:
        correct_a, correct_b: 0/1 per image, ``(N,)``, or ``(S, N)`` for S seeds; image i of a
            and of b is the same image.
        samples: bootstrap resamples.
        seed: seed of the resampling.
        level: the interval's coverage.

    Returns:
        The mean difference and its percentile interval (NaN when there are no images).
    """
    a = np.atleast_2d(np.asarray(correct_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(correct_b, dtype=np.float64))
    if a.shape != b.shape:
        raise ValueError(f"paired predictions differ in shape: {a.shape} vs {b.shape}")
    per_image = (a - b).mean(axis=0)  # over seeds
    n = per_image.size
    if n == 0:
        return PairedDifference(float("nan"), float("nan"), float("nan"), 0)
    low, high = percentile_interval(bootstrap_means(per_image, samples, seed), level)
    return PairedDifference(float(per_image.mean()), low, high, n)


# --- the report's paired tables ------------------------------------------------------------


def _correct(pred: Mapping[str, np.ndarray], split: str) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(pred[f"{split}_labels"])
    return labels, (np.asarray(pred[f"{split}_top5"])[:, 0] == labels).astype(np.float64)


def paired_frame(
    results: pd.DataFrame,
    predictions: Predictions,
    manifest: dict[str, Any] | None,
    grid: Grid,
    options: ReportOptions,
) -> tuple[pd.DataFrame, int]:
    """Every loss against the Softmax loss, per backbone, training set and column: the paired
    difference of top-1 on the same test images (see :mod:`ltexp.report.paired`); and how many
    runs had no predictions to compare."""
    groups = _thirds(manifest)
    load = _OnceEach(predictions)
    rows = []
    for model, split in itertools.product(grid.models, grid.train_splits):
        part = results[(results["model"] == model) & (results["train_split"] == split)]
        base = part[part["loss"] == BASELINE_LOSS].set_index("seed")["run_id"]
        for loss in grid.losses:
            if loss == BASELINE_LOSS:
                continue
            other = part[part["loss"] == loss].set_index("seed")["run_id"]
            row = _paired_row(
                base, other, load, groups, options, f"{model}/{split}: {loss} and {BASELINE_LOSS}"
            )
            if row is not None:
                rows.append({"model": model, "train_split": split, "loss": loss, **row})
    return pd.DataFrame(rows), load.unreadable()


class _OnceEach:
    """An evaluate run's predictions by run id, each read from the store once."""

    def __init__(self, predictions: Predictions) -> None:
        self.predictions = predictions
        self.loaded: dict[str, Mapping[str, np.ndarray] | None] = {}

    def __call__(self, run_id: str) -> Mapping[str, np.ndarray] | None:
        if run_id not in self.loaded:
            self.loaded[run_id] = self.predictions(run_id)
        return self.loaded[run_id]

    def unreadable(self) -> int:
        """Runs read that had no predictions."""
        return sum(p is None for p in self.loaded.values())


def _thirds(manifest: dict[str, Any] | None) -> dict[str, list[int]]:
    """The head/middle/tail classes of the manifest (none without one)."""
    return {g: manifest["groups"][g] for g in ("head", "middle", "tail")} if manifest else {}


def _paired_row(
    base: pd.Series,
    other: pd.Series,
    load: Predictions,
    groups: dict[str, list[int]],
    options: ReportOptions,
    what: str,
) -> dict[str, Any] | None:
    """``other`` minus ``base`` (run ids by seed) on the seeds both have predictions for, per
    column: the paired-bootstrap difference of top-1; None when no seed pairs up."""
    seeds = [
        s
        for s in sorted(set(base.index) & set(other.index))
        if load(base[s]) is not None and load(other[s]) is not None
    ]
    if not seeds:
        return None
    row: dict[str, Any] = {"n_seeds": len(seeds)}
    for column, test_split, group in (
        ("balanced", "test_balanced", None),
        ("long_tailed", "test_lt", None),
        ("head", "test_lt", "head"),
        ("middle", "test_lt", "middle"),
        ("tail", "test_lt", "tail"),
    ):
        if group is not None and group not in groups:
            diff = PairedDifference(np.nan, np.nan, np.nan, 0)
        else:
            a_rows, b_rows, labels = [], [], None
            for seed in seeds:
                labels, a = _correct(load(other[seed]), test_split)
                labels_b, b = _correct(load(base[seed]), test_split)
                if not np.array_equal(labels, labels_b):
                    raise ValueError(f"{what} were tested on different {test_split} images")
                a_rows.append(a)
                b_rows.append(b)
            mask = np.isin(labels, groups[group]) if group else np.ones(len(labels), bool)
            diff = paired_bootstrap(
                np.stack(a_rows)[:, mask],
                np.stack(b_rows)[:, mask],
                options.bootstrap_samples,
                options.bootstrap_seed,
            )
        row[column] = diff.diff
        row[f"{column}_ci_low"] = diff.ci_low
        row[f"{column}_ci_high"] = diff.ci_high
        row[f"{column}_n"] = diff.n
        row[f"{column}_excludes_zero"] = diff.excludes_zero
    return row


def paired_vs_plain(
    results: pd.DataFrame,
    predictions: Predictions,
    manifest: dict[str, Any] | None,
    options: ReportOptions,
) -> pd.DataFrame:
    """Every result outside the thesis tables against the thesis tables' cell of the same model,
    loss and training set, on the seeds both have: the paired difference of top-1 on the same
    test images. ``axis`` names what differs (``sampler``, ``sampler+mixing``, ``settings``),
    ``value`` the variant's label."""
    groups = _thirds(manifest)
    load = _OnceEach(predictions)
    plain = results[results["thesis"]]
    rows = []
    keys = ["model", "train_split", "loss", "label"]
    for (model, split, loss, label), other in results[~results["thesis"]].groupby(keys, sort=False):
        base = plain[
            (plain["model"] == model) & (plain["train_split"] == split) & (plain["loss"] == loss)
        ]
        row = _paired_row(
            base.set_index("seed")["run_id"],
            other.set_index("seed")["run_id"],
            load,
            groups,
            options,
            f"{model}/{split}/{loss}: {label} and the thesis tables' cell",
        )
        if row is not None:
            first = other.iloc[0]
            rows.append(
                {
                    "model": model,
                    "train_split": split,
                    "loss": loss,
                    "axis": _what_differs(first),
                    "value": label,
                    **row,
                }
            )
    return pd.DataFrame(rows)


def _what_differs(row: Any) -> str:
    """The axes off their plain value, ``+settings`` when other options differ too."""
    only = axes_of(str(row["label"]), row["identity"])
    if only:
        return "+".join(only)
    off = [a for a, plain in axis_params().items() if row[a] != plain]
    return "+".join([*off, "settings"])


def paired_cells(row: Any, fmt: Fmt) -> list[str]:
    """A paired difference per column with its interval; ``*`` where it excludes 0."""
    cells = []
    for c in COLUMNS:
        text = fmt.interval(row[c], row[f"{c}_ci_low"], row[f"{c}_ci_high"], signed=True)
        cells.append(f"{text} *" if row[f"{c}_excludes_zero"] else text)
    return cells


def paired_softmax_blocks(
    paired: pd.DataFrame, grid: Grid, fmt: Fmt, tail_note: list[str], number: Callable[[str], str]
) -> list[Block]:
    blocks: list[Block] = []
    for split in grid.train_splits:
        part = paired[paired["train_split"] == split]
        if not len(part):
            continue
        rows = []
        for _, r in part.iterrows():
            rows.append([model_title(r["model"]), loss_title(r["loss"]), *paired_cells(r, fmt)])
        blocks.append(
            Table(
                number(f"4.{12 + SPLIT_ORDER.index(split)}" if split in SPLIT_ORDER else ""),
                f"Each loss minus the Softmax loss on the same test images, "
                f"{SPLIT_TITLES.get(split, split)} training (beyond the thesis)",
                ["Backbone", "Loss", *(COLUMN_TITLES[c] for c in COLUMNS)],
                rows,
                [
                    "Difference of top-1 accuracy; in brackets its 95 % paired-bootstrap "
                    "interval (test images resampled jointly for both models); * where the "
                    "interval excludes 0.",
                    *tail_note,
                ],
                align="llrrrrr",
            )
        )
    blocks.append(
        Figure(
            number("4.7"),
            "Each loss minus the Softmax loss, long-tailed training, with 95 % paired-bootstrap "
            "intervals",
            "fig_paired_vs_softmax",
        )
    )
    return blocks


def paired_plain_block(
    paired: pd.DataFrame, fmt: Fmt, tail_note: list[str], number: Callable[[str], str]
) -> Table:
    rows = []
    for _, r in paired.iterrows():
        rows.append(
            [
                model_title(r["model"]),
                SPLIT_TITLES.get(r["train_split"], r["train_split"]),
                loss_title(r["loss"]),
                f"{axis_title(r['axis'])} {r['value']}"
                if r["axis"] in axis_params()
                else r["value"],
                *paired_cells(r, fmt),
            ]
        )
    return Table(
        number(""),
        "Each variant minus the thesis tables' cell of the same backbone, loss and training set "
        "on the same test images (beyond the thesis)",
        ["Backbone", "Training set", "Loss", "Method", *(COLUMN_TITLES[c] for c in COLUMNS)],
        rows,
        [
            "Difference of top-1 accuracy; in brackets its 95 % paired-bootstrap interval; * "
            "where the interval excludes 0.",
            *tail_note,
        ],
        align="llll" + "r" * len(COLUMNS),
    )
