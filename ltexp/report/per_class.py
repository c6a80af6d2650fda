"""What one evaluate run shows of a model: its per-class table (accuracy and exact interval per
class and test set, beside the class's training count, frequency group and shot group), the
per-class accuracy and confusion figures, and the predictions the report reads back."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from ltexp import schema
from ltexp.data import PreparedData
from ltexp.data.splits import FREQUENCY_GROUPS, SHOT_GROUPS
from ltexp.evaluation import (
    binomial_interval,
    confusion_matrix,
    per_class_accuracy,
    spreadsheet_safe,
)
from ltexp.evaluation import topk as top_k
from ltexp.report.plots import confusion_figure, per_class_accuracy_figure


def write_evaluation_artifacts(
    out: Path,
    outputs: dict[str, tuple[np.ndarray, np.ndarray]],
    prepared: PreparedData,
    train_counts: list[int],
    title: str,
) -> pd.DataFrame:
    """Write the per-class CSV, the figures and the predictions into ``out``; return the
    per-class table (numbers, not text) for the UI's table view."""
    k = prepared.num_classes
    groups = prepared.groups()
    group_of = {c: g for g in FREQUENCY_GROUPS for c in groups[g]}
    shot_of = {c: g for g in SHOT_GROUPS for c in groups[g]}
    per_split = {}
    for split, (labels, logits) in outputs.items():
        per_split[split] = per_class_accuracy(labels, logits.argmax(1), k)
    lt_counts = prepared.class_counts("train_lt")
    names = prepared.class_names
    header = [
        "class",
        "name",
        "train_count",
        "train_lt_count",
        "group",
        "shot",
        *(
            f"{split}_{what}"
            for split in ("test_balanced", "test_lt")
            for what in ("n", "acc1", "acc1_ci_low", "acc1_ci_high")
        ),
    ]
    rows = []
    for c in range(k):
        columns = []
        for split in ("test_balanced", "test_lt"):
            n, acc = per_split[split][0][c], per_split[split][1][c]
            # the exact binomial interval: a class has a few test images
            low, high = binomial_interval(round(acc * n) if n else 0, int(n))
            columns += [int(n), _decimal(acc), _decimal(low), _decimal(high)]
        rows.append(
            [
                c,
                spreadsheet_safe(names[c]),
                train_counts[c],
                lt_counts[c],
                group_of.get(c, ""),
                shot_of.get(c, ""),
                *columns,
            ]
        )
    with open(out / schema.PER_CLASS_ARTIFACT, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    per_class = pd.DataFrame(rows, columns=header)
    numeric = [c for c in header if c.endswith(("_acc1", "_ci_low", "_ci_high"))]
    per_class[numeric] = per_class[numeric].apply(pd.to_numeric, errors="coerce")
    # the balanced test set where the set has one (every class equally weighted)
    shown = "test_balanced" if prepared.has("test_balanced") else "test_lt"
    per_class_accuracy_figure(
        train_counts,
        per_split[shown][1],
        out / schema.PER_CLASS_FIGURE,
        f"{title}: {shown}",
    )
    labels_shown, logits_shown = outputs[shown]
    confusion_figure(
        confusion_matrix(labels_shown, logits_shown.argmax(1), k),
        out / schema.CONFUSION_FIGURE,
        f"{title}: {shown}",
    )
    np.savez_compressed(
        out / schema.PREDICTIONS_ARTIFACT,
        **{
            f"{split}_{key}": value
            for split, (labels, logits) in outputs.items()
            for key, value in (
                ("labels", labels),
                ("top5", top_k(logits, 5).astype(np.int32)),
                ("logits", logits.astype(np.float16)),
            )
        },
    )
    return per_class


def _decimal(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.6f}"
