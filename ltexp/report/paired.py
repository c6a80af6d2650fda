"""Paired comparisons: is a loss better than the Softmax loss, a variant better than its cell?

Two methods tested on the same images are compared image by image: the difference of their
top-1 accuracies, each averaged over its seeds, with the interval and p-value of
:func:`ltexp.statistics.paired_difference` (seeds and test images, each variance counted once).
With one seed a side the interval covers the test images only and nothing is marked. Each table
is one family of comparisons: a difference is marked (``*``) where Holm's correction over the
table's differences that cover training noise still rejects at 5 %; the CSVs keep the
uncorrected p-values beside the corrected ones (docs/protocol.md, "Statistics").
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from ltexp.report.correctness import Correctness
from ltexp.report.model import Block, Figure, Fmt, Grid, Table
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
from ltexp.statistics import ALPHA, NO_IMAGES, holm, paired_difference

# --- the report's paired tables ------------------------------------------------------------


def paired_frame(
    results: pd.DataFrame,
    correctness: Correctness,
    grid: Grid,
    same_as: Callable[[str, str], str] = lambda loss, split: "",
) -> pd.DataFrame:
    """Every loss against the Softmax loss, per backbone, training set and column: the paired
    difference of top-1 on the same test images (see :mod:`ltexp.report.paired`), marked after
    Holm's correction over each training set's table.

    Args:
        same_as: ``(loss, training set)`` → the loss of :data:`EQUIVALENTS` it is by
            construction there (:func:`ltexp.losses.same_as_loss`), or ``""``: such a row is
            labelled so, never significant, and not counted in the family (it repeats a row).
    """
    rows = []
    for model, split in itertools.product(grid.models, grid.train_splits):
        part = results[(results["model"] == model) & (results["train_split"] == split)]
        base = part[part["loss"] == BASELINE_LOSS].set_index("seed")["run_id"]
        for loss in grid.losses:
            if loss == BASELINE_LOSS:
                continue
            other = part[part["loss"] == loss].set_index("seed")["run_id"]
            row = _paired_row(base, other, correctness)
            if row is None:
                continue
            other = same_as(loss, split)
            if other:  # a difference here is seed noise (or another row's), not a finding
                row.update({f"{c}_p_value": np.nan for c in COLUMNS})
            rows.append(
                {
                    "model": model,
                    "train_split": split,
                    "loss": loss,
                    **row,
                    "same_as_softmax": other == BASELINE_LOSS,
                    "same_as": other,
                }
            )
    frame = pd.DataFrame(rows)
    return with_marks(frame, "train_split") if len(frame) else frame


def _paired_row(base: pd.Series, other: pd.Series, correctness: Correctness) -> dict | None:
    """``other`` minus ``base`` (run ids by seed), each over its seeds with predictions, per
    column (:func:`ltexp.statistics.paired_difference`); None when a side has no predictions."""
    mine = correctness.readable(other[s] for s in sorted(other.index))
    theirs = correctness.readable(base[s] for s in sorted(base.index))
    if not mine or not theirs:
        return None
    row: dict[str, Any] = {"n_seeds": len(mine), "n_seeds_baseline": len(theirs)}
    for column in COLUMNS:
        a, b = correctness.column(mine, column), correctness.column(theirs, column)
        same_images = a is not None and b is not None and a.shape[1] == b.shape[1]
        diff = paired_difference(a, b) if same_images else NO_IMAGES
        row[column] = diff.value
        row[f"{column}_ci_low"] = diff.ci_low
        row[f"{column}_ci_high"] = diff.ci_high
        row[f"{column}_n"] = diff.n
        row[f"{column}_excludes_zero"] = diff.excludes_zero
        row[f"{column}_p_value"] = diff.p_value
    return row


def with_marks(paired: pd.DataFrame, family: str | None = None) -> pd.DataFrame:
    """``paired`` with ``<column>_p_holm`` (Holm-adjusted over each family: the rows sharing
    ``family``'s value, or all rows) and ``<column>_significant`` (the adjusted p-value below
    5 %). A p-value is NaN where the interval does not cover training noise; it is not
    counted."""
    out = paired.copy()
    p_columns = [f"{c}_p_value" for c in COLUMNS]
    keys = out[family] if family else pd.Series("", index=out.index)
    for c in COLUMNS:
        out[f"{c}_p_holm"] = np.nan
    for _, index in out.groupby(keys, sort=False).groups.items():
        adjusted = holm(out.loc[index, p_columns].to_numpy(dtype=float).ravel())
        out.loc[index, [f"{c}_p_holm" for c in COLUMNS]] = adjusted.reshape(len(index), -1)
    for c in COLUMNS:
        out[f"{c}_significant"] = out[f"{c}_p_holm"].lt(ALPHA)
    return out


def tested(paired: pd.DataFrame) -> int:
    """How many differences of ``paired`` were tested (cover training noise)."""
    return int(paired[[f"{c}_p_value" for c in COLUMNS]].notna().to_numpy().sum())


def paired_vs_plain(results: pd.DataFrame, correctness: Correctness) -> pd.DataFrame:
    """Every result outside the thesis tables against the thesis tables' cell of the same model,
    loss and training set: the paired difference of top-1 on the same test images, marked after
    Holm's correction over the whole table. ``axis`` names what differs (``sampler``,
    ``sampler+mixing``, ``settings``), ``value`` the variant's label."""
    plain = results[results["thesis"]]
    rows = []
    keys = ["model", "train_split", "loss", "label"]
    for (model, split, loss, label), other in results[~results["thesis"]].groupby(keys, sort=False):
        base = plain[
            (plain["model"] == model) & (plain["train_split"] == split) & (plain["loss"] == loss)
        ]
        row = _paired_row(
            base.set_index("seed")["run_id"], other.set_index("seed")["run_id"], correctness
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
    frame = pd.DataFrame(rows)
    return with_marks(frame) if len(frame) else frame


def _what_differs(row: Any) -> str:
    """The axes off their plain value, ``+settings`` when other options differ too."""
    only = axes_of(str(row["label"]), row["identity"])
    if only:
        return "+".join(only)
    off = [a for a, plain in axis_params().items() if row[a] != plain]
    return "+".join([*off, "settings"])


def paired_cells(row: Any, fmt: Fmt) -> list[str]:
    """A paired difference per column with its interval; ``*`` where it is significant (it
    covers training noise and Holm's correction over the table still rejects)."""
    cells = []
    for c in COLUMNS:
        text = fmt.interval(row[c], row[f"{c}_ci_low"], row[f"{c}_ci_high"], signed=True)
        cells.append(f"{text} *" if row[f"{c}_significant"] else text)
    return cells


# the losses a row can be by construction, and why (the report labels such rows "(= …)")
EQUIVALENTS = (BASELINE_LOSS, "bs")
SAME_AS_NOTES = {
    BASELINE_LOSS: "= Softmax: the loss is the Softmax loss by construction on this training set "
    "(uniform class weights, a constant logit shift, no rare class); its runs repeat the Softmax "
    "run and are not findings of their own.",
    "bs": "= Balanced Softmax: the loss is the Balanced Softmax loss by construction (the "
    "logit-adjusted loss at τ = 1 shifts the logits by log π, as Balanced Softmax does); its runs "
    "repeat the Balanced Softmax runs and are not findings of their own.",
}


def equal_label(loss: str, same_as: str) -> str:
    """A loss's title, with ``(= Softmax)`` (or another loss) where it is that loss by
    construction."""
    title = loss_title(loss)
    return f"{title} (= {loss_title(same_as).removesuffix(' loss')})" if same_as else title


def same_as_notes(others: set[str]) -> list[str]:
    """The notes that explain a table's ``(= …)`` rows, in :data:`EQUIVALENTS`' order."""
    return [SAME_AS_NOTES[o] for o in EQUIVALENTS if o in others]


def loss_label(row: Any) -> str:
    """A row's loss, marked when it is another loss by construction there."""
    other = row.get("same_as", "")
    return equal_label(row["loss"], other if isinstance(other, str) else "")


def paired_note(paired: pd.DataFrame) -> str:
    """What the intervals and marks of a paired table mean, in words."""
    one_seed = (paired[["n_seeds", "n_seeds_baseline"]].max(axis=1) < 2).any()
    several = (paired[["n_seeds", "n_seeds_baseline"]].max(axis=1) >= 2).any()
    parts = ["Difference of top-1 accuracy, each side averaged over its seeds."]
    if several:
        count = tested(paired)
        marked = int(paired[[f"{c}_significant" for c in COLUMNS]].to_numpy().sum())
        parts.append(
            "Where a side has two seeds or more, in brackets the 95 % interval over training "
            "noise and test images (seeds × images variance components, Satterthwaite's t; "
            "docs/protocol.md, Statistics). * marks a difference that stays significant after "
            f"Holm's correction over the {count} differences of this table that were tested "
            f"(family-wise error 5 %): {marked} marked. The CSV has each uncorrected p-value "
            "(p_value) beside the corrected one (p_holm)."
        )
    if one_seed:
        parts.append(
            "Where each side has one seed, in brackets the 95 % interval over the test images "
            "only: it says whether these two trained models differ on this test set, not "
            "whether the method is better (another seed moves a model too), so nothing is "
            "marked; train more seeds (seeds=1,2,3) to compare methods."
        )
    return " ".join(parts)


def paired_softmax_blocks(
    paired: pd.DataFrame, grid: Grid, fmt: Fmt, number: Callable[[str], str]
) -> list[Block]:
    blocks: list[Block] = []
    for split in grid.train_splits:
        part = paired[paired["train_split"] == split]
        if not len(part):
            continue
        rows = []
        for _, r in part.iterrows():
            rows.append([model_title(r["model"]), loss_label(r), *paired_cells(r, fmt)])
        others = set(part["same_as"].fillna("")) if "same_as" in part else set()
        notes = [paired_note(part), *same_as_notes(others)]
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
            "Each loss minus the Softmax loss, long-tailed training, with 95 % paired intervals",
            "fig_paired_vs_softmax",
        )
    )
    return blocks


def paired_plain_block(paired: pd.DataFrame, fmt: Fmt, number: Callable[[str], str]) -> Table:
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
        [paired_note(paired)],
        align="llll" + "r" * len(COLUMNS),
    )
