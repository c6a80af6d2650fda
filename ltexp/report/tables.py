"""The report's tables (SPEC.md, "The grid and the report") from a frame of evaluate results.

Input: one row per evaluate run with the params ``dataset, model, loss, train_split, seed`` and
the five metrics of :data:`ltexp.tracking.schema.REPORT_COLUMNS`. Nothing else is read, so results
logged by any tool in that schema count. Standard deviations are population (ddof = 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import pandas as pd

from ltexp.tracking.schema import CELL_PARAMS, REPORT_COLUMNS

COLUMNS = tuple(REPORT_COLUMNS)  # balanced, long_tailed, head, middle, tail
COLUMN_TITLES = {
    "balanced": "Balanced",
    "long_tailed": "Long-tailed",
    "head": "Head",
    "middle": "Middle",
    "tail": "Tail",
}
# SPEC's orders: rows of Tables 4.1-4.8, and the order of the tables.
LOSS_ORDER = ("ce", "focal", "wce", "cb", "bs", "seql", "ldam")
MODEL_ORDER = ("resnet50", "mobilenet_v2", "vit_b16", "convnext_base")
SPLIT_ORDER = ("balanced", "lt")
MODEL_TITLES = {
    "resnet50": "ResNet-50",
    "mobilenet_v2": "MobileNetV2",
    "vit_b16": "ViT-B/16",
    "convnext_base": "ConvNeXt-Base",
    "tiny_cnn": "Tiny CNN",
    **{f"cifar_resnet{d}": f"ResNet-{d} (CIFAR)" for d in (8, 20, 32)},
}
SPLIT_TITLES = {"balanced": "balanced", "lt": "long-tailed"}


def ordered(values: list[str] | set[str], order: tuple[str, ...]) -> list[str]:
    """``values`` in SPEC's order, then the others alphabetically."""
    values = set(values)
    return [v for v in order if v in values] + sorted(values - set(order))


def loss_title(loss: str) -> str:
    """Display name of a loss (from the loss registry)."""
    from ltexp.losses import LOSSES

    return LOSSES[loss].display_name if loss in LOSSES else loss


def model_title(model: str) -> str:
    """Display name of a backbone."""
    return MODEL_TITLES.get(model, model)


@dataclass
class Selection:
    """The evaluate results a report uses, after duplicates are resolved."""

    results: pd.DataFrame
    duplicates: list[str] = field(default_factory=list)


def select_latest(frame: pd.DataFrame) -> Selection:
    """One result per (dataset, model, loss, train_split, seed): the latest finished run.

    ``frame`` needs ``run_id``, ``end_time``, the cell params and the metric columns.
    """
    frame = frame.sort_values(["end_time", "run_id"])
    dup_mask = frame.duplicated(list(CELL_PARAMS), keep="last")
    notes = []
    for key, group in frame[frame.duplicated(list(CELL_PARAMS), keep=False)].groupby(
        list(CELL_PARAMS)
    ):
        kept = group.iloc[-1]["run_id"]
        notes.append(f"{'/'.join(map(str, key))}: {len(group)} runs, used the latest ({kept})")
    return Selection(frame[~dup_mask].reset_index(drop=True), notes)


def cell_means(results: pd.DataFrame) -> pd.DataFrame:
    """Mean (and population std, n) over seeds for each (model, loss, train_split)."""
    keys = ["model", "loss", "train_split"]
    grouped = results.groupby(keys)[list(COLUMNS)]
    means = grouped.mean()
    stds = grouped.std(ddof=0).add_suffix("_seed_std")
    counts = grouped.size().rename("n_seeds")
    return pd.concat([means, stds, counts], axis=1).reset_index()


def results_table(cells: pd.DataFrame, model: str, split: str, losses: list[str]) -> pd.DataFrame:
    """Tables 4.1-4.8: one row per loss (SPEC's order), the five columns; NaN = missing."""
    sub = cells[(cells["model"] == model) & (cells["train_split"] == split)].set_index("loss")
    table = sub.reindex(losses)
    table.index.name = "loss"
    cols = list(COLUMNS)
    if (table["n_seeds"].fillna(0) > 1).any():
        cols += [f"{c}_seed_std" for c in COLUMNS] + ["n_seeds"]
    out = table[cols].reset_index()
    if "n_seeds" in out:
        out["n_seeds"] = out["n_seeds"].astype("Int64")
    return out


def summary(cells: pd.DataFrame, by: str, over_order: tuple[str, ...]) -> pd.DataFrame:
    """Tables 4.10 (by=model) / 4.11 (by=loss): mean and population std over the other axis,
    long-tailed training, over the cells present."""
    lt = cells[cells["train_split"] == "lt"]
    rows = []
    for key in ordered(lt[by].unique().tolist(), over_order):
        part = lt[lt[by] == key]
        row: dict[str, object] = {by: key}
        for c in COLUMNS:
            values = part[c].dropna().to_numpy()
            row[f"{c}_mean"] = float(np.mean(values)) if len(values) else np.nan
            row[f"{c}_std"] = float(np.std(values, ddof=0)) if len(values) else np.nan
        row["n"] = len(part)
        rows.append(row)
    columns = [by, *(f"{c}_{s}" for c in COLUMNS for s in ("mean", "std")), "n"]
    return pd.DataFrame(rows, columns=columns)


def reference_results() -> pd.DataFrame:
    """Published CIFAR-100 results per backbone, with citations (``reference_results.csv``)."""
    with resources.files("ltexp.report").joinpath("reference_results.csv").open() as f:
        return pd.read_csv(f)


def benchmarks_table(cells: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """Table 4.9: best balanced-test top-1 over losses (balanced training) beside a reference."""
    refs = reference_results().set_index("model")
    rows = []
    for model in models:
        part = cells[(cells["model"] == model) & (cells["train_split"] == "balanced")]
        result = part["balanced"].max() if len(part) else np.nan
        bench = refs["benchmark"].get(model, np.nan)
        source = refs["benchmark_source"].get(model, "no reference recorded")
        rows.append(
            {"model": model, "result": result, "benchmark": bench, "benchmark_source": source}
        )
    return pd.DataFrame(rows, columns=["model", "result", "benchmark", "benchmark_source"])
