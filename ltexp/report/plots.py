"""Figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ltexp.report.tables import COLUMN_TITLES, COLUMNS, loss_title, model_title

if TYPE_CHECKING:
    from ltexp.report.model import Grid


def class_counts_figure(
    counts: dict[str, Sequence[int]], class_rank: Sequence[int], path: Path, log_scale: bool = True
) -> None:
    """Bar charts of images per class, classes in frequency-rank order, one panel per split."""
    fig, axes = plt.subplots(1, len(counts), figsize=(5 * len(counts), 3.2), squeeze=False)
    for ax, (name, per_class) in zip(axes[0], counts.items(), strict=True):
        values = np.asarray(per_class)[np.asarray(class_rank)]
        ax.bar(np.arange(len(values)), values, width=1.0, color="#4472c4")
        ax.set_title(f"{name} ({int(values.sum()):,} images)")
        ax.set_xlabel("class (frequency rank)")
        ax.set_ylabel("images")
        if log_scale:
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def per_class_accuracy_figure(
    train_counts: Sequence[int], accuracy: Sequence[float], path: Path, title: str
) -> None:
    """Per-class test accuracy against train frequency: the long-tail diagnostic."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    counts = np.asarray(train_counts, dtype=float)
    ax.scatter(counts, accuracy, s=14, alpha=0.75)
    ax.set_xscale("log")
    ax.set_xlabel("train images of the class (log)")
    ax.set_ylabel("test top-1 accuracy of the class")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title)
    # fixed margins instead of tight_layout: one figure per evaluate run, and measuring the text
    # to place it would cost as much as drawing it (docs/performance.md)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.13, top=0.92)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion_figure(confusion: np.ndarray, path: Path, title: str) -> None:
    """Row-normalised confusion matrix (true class × predicted class)."""
    rows = confusion.sum(axis=1, keepdims=True)
    norm = np.divide(confusion, rows, out=np.zeros_like(confusion, dtype=float), where=rows > 0)
    k = len(confusion)
    fig, ax = plt.subplots(figsize=(6, 5.2))
    im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if k <= 20:
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
    fig.subplots_adjust(left=0.1, right=0.9, bottom=0.1, top=0.93)  # as per_class_accuracy_figure
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the report's figures ----------------------------------------------------------------------

# one marker and dash per line, so that lines stay apart in grey print and where they coincide
MARKERS = "osD^v<>ph*"
LINESTYLES = ("-", "--", "-.", ":")


def _style(ax, x: np.ndarray, title: str, ylim: tuple[float, float] | None = (0, 1)) -> None:
    ax.set_xticks(x)
    ax.set_xticklabels([COLUMN_TITLES[c] for c in COLUMNS])
    ax.set_ylabel("top-1 accuracy")
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _save(fig, stem: Path) -> list[Path]:
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p, dpi=130)
    plt.close(fig)
    return paths


def errorbar_figure(frame: pd.DataFrame, by: str, name: Callable, *, out: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(COLUMNS))
    n = max(len(frame), 1)
    for i, (_, row) in enumerate(frame.iterrows()):
        offset = (i - (n - 1) / 2) * 0.08
        ax.errorbar(
            x + offset,
            [row[f"{c}_mean"] for c in COLUMNS],
            yerr=[row[f"{c}_std"] for c in COLUMNS],
            fmt="o",
            capsize=3,
            label=name(row[by]),
        )
    over = "losses" if by == "model" else "backbones"
    _style(ax, x, f"Long-tailed training: mean ± std over {over}")
    return _save(fig, out)


def lines_figure(cells: pd.DataFrame, model: str, losses: list[str], stem: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(COLUMNS))
    part = cells[(cells["model"] == model) & (cells["train_split"] == "lt")]
    drawn: dict[tuple[float, ...], str] = {}
    shown = [loss for loss in losses if (part["loss"] == loss).any()]
    for i, loss in enumerate(shown):
        values = tuple(float(part[part["loss"] == loss].iloc[0][c]) for c in COLUMNS)
        label = loss_title(loss)
        if values in drawn:  # a line under another would vanish: the legend says where it is
            label += f" (= {drawn[values]})"
        drawn.setdefault(values, loss_title(loss))
        ax.plot(
            x + (i - (len(shown) - 1) / 2) * 0.03,  # a small offset keeps equal points apart
            values,
            marker=MARKERS[i % len(MARKERS)],
            linestyle=LINESTYLES[i % len(LINESTYLES)],
            label=label,
        )
    _style(ax, x, f"{model_title(model)}, long-tailed training")
    return _save(fig, stem)


def ranked_counts_figure(counts: np.ndarray, stem: Path, what: str) -> list[Path]:
    """Images per class of the ``what`` set (``long-tailed training``), most frequent first."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(np.arange(len(counts)), counts, width=1.0, color="#4472c4")
    ax.set_xlabel("class, from most to least frequent")
    ax.set_ylabel("images")
    ax.set_title(f"{what[0].upper()}{what[1:]} set: {int(counts.sum()):,} images")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, stem)


def paired_figure(paired: pd.DataFrame, grid: Grid, stem: Path) -> list[Path]:
    part = paired[paired["train_split"] == "lt"] if "lt" in grid.train_splits else paired
    models = [m for m in grid.models if m in set(part["model"])]
    # two panels a row: four side by side shrink to unreadable on a page
    ncols = min(max(len(models), 1), 2)
    nrows = -(-max(len(models), 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[len(models) :]:
        ax.set_visible(False)
    x = np.arange(len(COLUMNS))
    for ax, model in zip(axes.flat, models, strict=False):
        rows = part[part["model"] == model]
        n = max(len(rows), 1)
        for i, (_, r) in enumerate(rows.iterrows()):
            values = np.array([r[c] for c in COLUMNS], dtype=float)
            low = np.array([r[f"{c}_ci_low"] for c in COLUMNS], dtype=float)
            high = np.array([r[f"{c}_ci_high"] for c in COLUMNS], dtype=float)
            ax.errorbar(
                x + (i - (n - 1) / 2) * 0.1,
                values,
                yerr=[values - low, high - values],
                fmt="o",
                capsize=3,
                label=loss_title(r["loss"]),
            )
        ax.axhline(0, color="black", lw=0.8)
        _style(ax, x, model_title(model), ylim=None)
        ax.set_ylabel("top-1 minus Softmax loss")
        # five labels on a narrow panel: slanted, so that neighbours never overlap
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    return _save(fig, stem)


def reliability_figure(
    curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], title: str, stem: Path
) -> list[Path]:
    """Reliability diagram: per loss, the accuracy of each confidence bin against its mean
    confidence (``ltexp.evaluation.reliability``); the diagonal is perfect calibration."""
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="calibrated")
    for i, (label, (conf, acc, count)) in enumerate(curves.items()):
        filled = count > 0
        ax.plot(conf[filled], acc[filled], marker=MARKERS[i % len(MARKERS)], ms=4, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 softmax probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, stem)
