"""Paired comparisons: is a loss better than the Softmax loss?

Two methods tested on the same images are compared image by image: the difference of their
top-1 accuracies, averaged over each method's seeds. Its uncertainty has two sources, and the
interval states which it covers (docs/protocol.md, "Statistics"):

- **test-set sampling**: which images the test set happens to hold. The images are resampled
  jointly for both methods (a paired bootstrap, Efron & Tibshirani 1993, ch. 13), which keeps the
  correlation of their errors. With one seed per method this is all an interval can cover: it
  says whether *these two trained models* differ on this test set, not whether one *method* is
  better, since a second seed of the same method differs by 0.2-0.6 points as well. Such an
  interval marks nothing as significant.
- **training noise**: which model a seed happens to train. With two seeds or more (on either
  side), the seed-to-seed variance of each method's accuracy is estimated and added to the
  test-sampling variance, and the interval is ``diff ± t_ν · SE`` with Welch-Satterthwaite
  degrees of freedom ν from the seeds (Welch 1947): with 2-5 seeds a bootstrap over seeds
  resamples from too few values to see their spread, and the t quantile pays for estimating it
  from so few. Only such an interval, excluding 0, is marked significant; a simulation of
  methods that differ only by seed noise (``tests/report/test_paired.py``) shows the marks fall
  below the nominal 5 %.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

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
    """``acc(a) − acc(b)`` on ``n`` images, averaged over each side's seeds, and its interval.

    Attributes:
        seeds: the seeds of a and of b.
        training_noise: the interval covers training noise too (two seeds or more on a side);
            else it covers test-set sampling only.
    """

    diff: float
    ci_low: float
    ci_high: float
    n: int
    seeds: tuple[int, int] = (1, 1)
    training_noise: bool = False

    @property
    def excludes_zero(self) -> bool:
        """The interval excludes 0 (whatever it covers)."""
        return self.n > 0 and (self.ci_low > 0 or self.ci_high < 0)

    @property
    def significant(self) -> bool:
        """One method is better than the other: an interval that covers training noise and
        excludes 0. With one seed per method nothing is (see the module docstring)."""
        return self.training_noise and self.excludes_zero


def paired_bootstrap(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> PairedDifference:
    """Difference of top-1 accuracy of method a and method b on the same images.

    Args:
        correct_a, correct_b: 0/1 per image, ``(N,)``, or ``(S, N)`` for S seeds (a and b may
            have different numbers of seeds); image i of a and of b is the same image.
        samples: bootstrap resamples of the test images.
        seed: seed of the resampling.
        level: the interval's coverage.

    Returns:
        The mean difference and its interval (NaN when there are no images): the paired
        bootstrap's percentile interval with one seed a side; with more, ``diff ± t_ν · SE``
        with the seeds' variance added (see the module docstring).
    """
    a = np.atleast_2d(np.asarray(correct_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(correct_b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired predictions differ in images: {a.shape} vs {b.shape}")
    per_image = a.mean(axis=0) - b.mean(axis=0)  # each side over its seeds
    n, seeds = per_image.size, (len(a), len(b))
    if n == 0:
        return PairedDifference(float("nan"), float("nan"), float("nan"), 0, seeds)
    diff = float(per_image.mean())
    test_means = bootstrap_means(per_image, samples, seed)
    if max(seeds) < 2:
        low, high = percentile_interval(test_means, level)
        return PairedDifference(diff, low, high, n, seeds)
    seed_var, dof = _seed_variance(a.mean(axis=1), b.mean(axis=1))
    se = float(np.sqrt(seed_var + test_means.var(ddof=1)))
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
    return PairedDifference(diff, diff - half, diff + half, n, seeds, training_noise=True)


def _seed_variance(acc_a: np.ndarray, acc_b: np.ndarray) -> tuple[float, float]:
    """The variance of ``mean(acc_a) − mean(acc_b)`` from the seeds' spread, and its Welch-
    Satterthwaite degrees of freedom. A side with one seed borrows the other side's variance
    (the same training procedure on another loss: the closest estimate there is)."""
    s_a, s_b = len(acc_a), len(acc_b)
    v_a = acc_a.var(ddof=1) if s_a > 1 else np.nan
    v_b = acc_b.var(ddof=1) if s_b > 1 else np.nan
    if s_a < 2:
        return v_b * (1 / s_a + 1 / s_b), float(s_b - 1)
    if s_b < 2:
        return v_a * (1 / s_a + 1 / s_b), float(s_a - 1)
    parts = (v_a / s_a, v_b / s_b)
    total = parts[0] + parts[1]
    denominator = parts[0] ** 2 / (s_a - 1) + parts[1] ** 2 / (s_b - 1)
    dof = total**2 / denominator if denominator > 0 else float(min(s_a, s_b) - 1)
    return float(total), float(max(dof, 1.0))


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
    same_as_softmax: Callable[[str, str], bool] = lambda loss, split: False,
) -> tuple[pd.DataFrame, int]:
    """Every loss against the Softmax loss, per backbone, training set and column: the paired
    difference of top-1 on the same test images (see :mod:`ltexp.report.paired`); and how many
    runs had no predictions to compare.

    Args:
        same_as_softmax: ``(loss, training set)`` is the Softmax loss by construction there
            (:func:`ltexp.losses.same_as_cross_entropy`): its row is marked so, never significant.
    """
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
            if row is None:
                continue
            identical = same_as_softmax(loss, split)
            if identical:  # a difference here is seed noise, whatever its interval says
                row.update({f"{c}_significant": False for c in COLUMNS})
            rows.append(
                {
                    "model": model,
                    "train_split": split,
                    "loss": loss,
                    **row,
                    "same_as_softmax": identical,
                }
            )
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
    """``other`` minus ``base`` (run ids by seed), each over its seeds with predictions, per
    column: the paired difference of top-1 (:func:`paired_bootstrap`); None when a side has no
    predictions."""
    mine = [s for s in sorted(other.index) if load(other[s]) is not None]
    theirs = [s for s in sorted(base.index) if load(base[s]) is not None]
    if not mine or not theirs:
        return None
    row: dict[str, Any] = {"n_seeds": len(mine), "n_seeds_baseline": len(theirs)}
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
            sides = []
            for runs, seeds in ((other, mine), (base, theirs)):
                tested = [_correct(load(runs[s]), test_split) for s in seeds]
                sides.append(tested)
            labels = sides[0][0][0]
            if any(not np.array_equal(labels, lab) for side in sides for lab, _ in side):
                raise ValueError(f"{what} were tested on different {test_split} images")
            a_rows = [c for _, c in sides[0]]
            b_rows = [c for _, c in sides[1]]
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
        row[f"{column}_significant"] = diff.significant
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
    """A paired difference per column with its interval; ``*`` where it is significant (an
    interval over training noise and test images that excludes 0)."""
    cells = []
    for c in COLUMNS:
        text = fmt.interval(row[c], row[f"{c}_ci_low"], row[f"{c}_ci_high"], signed=True)
        cells.append(f"{text} *" if row[f"{c}_significant"] else text)
    return cells


SAME_AS_SOFTMAX_NOTE = (
    "= Softmax: the loss is the Softmax loss by construction on this training set (uniform class "
    "weights, a constant logit shift, no rare class); its runs repeat the Softmax run and are "
    "not findings of their own."
)


def loss_label(row: Any) -> str:
    """A row's loss, marked when it is the Softmax loss by construction there."""
    title = loss_title(row["loss"])
    return f"{title} (= Softmax)" if row.get("same_as_softmax", False) else title


def paired_note(paired: pd.DataFrame) -> str:
    """What the intervals of a paired table cover, in words."""
    one_seed = (paired[["n_seeds", "n_seeds_baseline"]].max(axis=1) < 2).any()
    several = (paired[["n_seeds", "n_seeds_baseline"]].max(axis=1) >= 2).any()
    parts = ["Difference of top-1 accuracy, each side averaged over its seeds."]
    if several:
        parts.append(
            "Where a side has two seeds or more, in brackets the 95 % interval over training "
            "noise (the seeds' spread, Welch's t) and test images (paired bootstrap); * where it "
            "excludes 0."
        )
    if one_seed:
        parts.append(
            "Where each side has one seed, in brackets the 95 % paired-bootstrap interval over "
            "the test images only: it says whether these two trained models differ on this "
            "test set, not whether the method is better (another seed moves a model too), so "
            "nothing is marked; train more seeds (seeds=1,2,3) to compare methods."
        )
    return " ".join(parts)


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
            rows.append([model_title(r["model"]), loss_label(r), *paired_cells(r, fmt)])
        notes = [paired_note(part), *tail_note]
        if part.get("same_as_softmax", pd.Series(dtype=bool)).any():
            notes.insert(1, SAME_AS_SOFTMAX_NOTE)
        blocks.append(
            Table(
                number(f"4.{12 + SPLIT_ORDER.index(split)}" if split in SPLIT_ORDER else ""),
                f"Each loss minus the Softmax loss on the same test images, "
                f"{SPLIT_TITLES.get(split, split)} training (beyond the thesis)",
                ["Backbone", "Loss", *(COLUMN_TITLES[c] for c in COLUMNS)],
                rows,
                notes,
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
        [paired_note(paired), *tail_note],
        align="llll" + "r" * len(COLUMNS),
    )
