"""Figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


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
    fig.tight_layout()
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
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
