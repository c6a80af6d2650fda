"""The report's tables (docs/protocol.md, "The grid and the report"), as plain data frames.

Input: one row per evaluate run with the params ``dataset, model, loss, train_split, seed``, the
five metrics of :data:`ltexp.schema.REPORT_COLUMNS` and, where logged, their 95 %
bootstrap bounds; the prepare_data manifest for the data tables. Nothing else is read, so results
logged by any tool in that schema count. Standard deviations are population (ddof = 0).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from ltexp.config import grid as config_grid
from ltexp.errors import ConfigError
from ltexp.losses import LOSSES
from ltexp.models import MODELS, build_model, count_parameters, model_spec
from ltexp.report.variants import axes_of, with_identities
from ltexp.schema import CELL_PARAMS, REPORT_COLUMNS
from ltexp.textfiles import read_small_text

COLUMNS = tuple(REPORT_COLUMNS)  # balanced, long_tailed, head, middle, tail
CI_SUFFIXES = ("_ci_low", "_ci_high")
COLUMN_TITLES = {
    "balanced": "Balanced",
    "long_tailed": "Long-tailed",
    "head": "Head",
    "middle": "Middle",
    "tail": "Tail",
}
# the thesis's orders: rows of Tables 4.1-4.8, and the order of the tables
LOSS_ORDER = config_grid.axis("loss").default  # the thesis grid's own order (ltexp/config/grid.py)
MODEL_ORDER = config_grid.axis("model").default
SPLIT_ORDER = config_grid.axis("train_split").default
SPLIT_TITLES = {"balanced": "balanced", "lt": "long-tailed"}
BASELINE_LOSS = "ce"  # what the paired comparisons compare against (the Softmax loss)
# Table 3.2: (row title, manifest split)
DATA_SPLITS = (
    ("Balanced train", "train_balanced"),
    ("Validation", "val"),
    ("Balanced test", "test_balanced"),
    ("Long-tailed train", "train_lt"),
    ("Long-tailed test", "test_lt"),
    ("Head (long-tailed test)", "test_head"),
    ("Middle (long-tailed test)", "test_middle"),
    ("Tail (long-tailed test)", "test_tail"),
)


def ordered(values: list[str] | set[str], order: tuple[str, ...]) -> list[str]:
    """``values`` in the thesis's order, then the others alphabetically."""
    values = set(values)
    return [v for v in order if v in values] + sorted(values - set(order))


def loss_title(loss: str) -> str:
    """Display name of a loss (from the loss registry)."""
    return LOSSES[loss].display_name if loss in LOSSES else loss


def model_title(model: str) -> str:
    """Display name of a backbone (from the model registry)."""
    return MODELS[model].title if model in MODELS else model


@dataclass
class Selection:
    """The evaluate results a report uses, after duplicates are resolved."""

    results: pd.DataFrame
    duplicates: list[str] = field(default_factory=list)


def axis_params() -> dict[str, Any]:
    """The grid's axes with a plain value (sampler, mixing, stage2, and any registered one),
    and that value (:mod:`ltexp.config.grid`)."""
    return {a.key: a.plain for a in config_grid.variant_axes()}


def axis_title(key: str) -> str:
    """What the report calls an axis (``batch mixing``)."""
    return config_grid.axis(key).title


def with_axes(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every grid axis as a column (results from before the axes were plain)."""
    missing = {a: plain for a, plain in axis_params().items() if a not in frame}
    out = frame.assign(**missing)
    for axis, plain in axis_params().items():
        out[axis] = out[axis].fillna(plain).astype(str)
    return out


def select_latest(frame: pd.DataFrame) -> Selection:
    """One result per identity (the same cell and seed): the latest finished run. Results of
    different identities are all kept, however alike their params (:mod:`ltexp.report.variants`).

    ``frame`` needs ``run_id``, ``end_time``, the cell params, the axes and the metric columns.
    """
    frame = with_identities(with_axes(frame)).sort_values(["end_time", "run_id"])
    dup_mask = frame.duplicated("result_key", keep="last")
    notes = []
    for _, group in frame[frame.duplicated("result_key", keep=False)].groupby("result_key"):
        last = group.iloc[-1]
        plain = axis_params()
        keys = [*CELL_PARAMS, *plain]
        shown = [str(last[k]) for k in keys if plain.get(k) != last[k]]
        if last["variant"]:
            shown.append(last["variant"])
        notes.append(f"{'/'.join(shown)}: {len(group)} runs, used the latest ({last['run_id']})")
    return Selection(frame[~dup_mask].reset_index(drop=True), notes)


def axis_values(results: pd.DataFrame, axis: str) -> list[str]:
    """The values of a grid axis in ``results``: the plain one first, then alphabetically."""
    return ordered(set(results[axis]), (axis_params()[axis],))


def only_axis(results: pd.DataFrame, axis: str) -> pd.DataFrame:
    """The thesis tables' rows and the rows that differ from them in ``axis`` only (what a loss
    × axis table compares); without labels, the rows where every other axis is plain."""
    if "label" not in results:
        mask = pd.Series(True, index=results.index)
        for other, plain in axis_params().items():
            if other != axis:
                mask &= results[other] == plain
        return results[mask]

    differs = results.apply(lambda r: axes_of(r["label"], r["identity"]) == [axis], axis=1)
    return results[results["thesis"] | differs]


def axis_table(results: pd.DataFrame, axis: str) -> pd.DataFrame:
    """Per (model, train_split, loss, value of ``axis``), the other axes plain: the mean of
    every column over seeds and ``n_seeds``. Only the cells the axis varies in, in the thesis's
    order of backbones, training sets and losses, the plain value first."""
    part = only_axis(results, axis)
    cell = ["model", "train_split", "loss"]
    varied = part[part[axis] != axis_params()[axis]][cell].drop_duplicates()
    part = part.merge(varied, on=cell)
    grouped = part.groupby([*cell, axis])
    out = grouped[list(COLUMNS)].mean()
    out["n_seeds"] = grouped.size()
    out = out.reset_index()
    orders = {
        "model": ordered(set(out["model"]), MODEL_ORDER),
        "train_split": ordered(set(out["train_split"]), SPLIT_ORDER),
        "loss": ordered(set(out["loss"]), LOSS_ORDER),
        axis: axis_values(out, axis) if len(out) else [],
    }
    rank = {key: {v: i for i, v in enumerate(values)} for key, values in orders.items()}
    return out.sort_values(
        [*cell, axis], key=lambda col: col.map(rank[col.name]), ignore_index=True
    )


def cell_means(results: pd.DataFrame) -> pd.DataFrame:
    """Per (model, loss, train_split): the mean over seeds, the population std, n, and a 95 %
    interval: of the run when there is a single seed (its test images, Clopper-Pearson); of the
    mean over seeds when there are several (their spread, Student's t with n − 1 degrees of
    freedom, within [0, 1]). The report replaces the latter by the interval over seeds and test
    images where the runs' predictions are there
    (:func:`ltexp.report.correctness.with_seed_intervals`)."""
    keys = ["model", "loss", "train_split"]
    grouped = results.groupby(keys)
    means = grouped[list(COLUMNS)].mean()
    stds = grouped[list(COLUMNS)].std(ddof=0).add_suffix("_seed_std")
    counts = grouped.size().rename("n_seeds")
    ci_cols = [f"{c}{s}" for c in COLUMNS for s in CI_SUFFIXES if f"{c}{s}" in results]
    cis = grouped[ci_cols].first() if ci_cols else pd.DataFrame(index=means.index)
    out = pd.concat([means, stds, counts, cis], axis=1).reset_index()
    several = out["n_seeds"] > 1
    sample_std = grouped[list(COLUMNS)].std(ddof=1).reset_index(drop=True)
    t = stats.t.ppf(0.975, np.maximum(out["n_seeds"] - 1, 1))
    for c in COLUMNS:
        half = t * sample_std[c] / np.sqrt(out["n_seeds"])
        out.loc[several, f"{c}_ci_low"] = (out[c] - half).clip(lower=0.0)[several]
        out.loc[several, f"{c}_ci_high"] = (out[c] + half).clip(upper=1.0)[several]
    return out


def results_table(cells: pd.DataFrame, model: str, split: str, losses: list[str]) -> pd.DataFrame:
    """Tables 4.1-4.8: one row per loss (the given order), the five columns; NaN = missing.

    With several seeds: ``<col>_seed_std``, ``n_seeds`` and the interval of the mean; with one:
    the run's interval (``<col>_ci_low/high`` both ways); ``interval`` says what each covers.
    """
    sub = cells[(cells["model"] == model) & (cells["train_split"] == split)].set_index("loss")
    table = sub.reindex(losses)
    table.index.name = "loss"
    cols = list(COLUMNS)
    if (table["n_seeds"].fillna(0) > 1).any():
        cols += [f"{c}_seed_std" for c in COLUMNS] + ["n_seeds"]
    cols += [f"{c}{s}" for c in COLUMNS for s in CI_SUFFIXES if f"{c}{s}" in table]
    cols += ["interval"] if "interval" in table else []
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


# --- references (Table 4.9) --------------------------------------------------------------------


def reference_results(
    path: str | Path | None = None, text: str | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """Published CIFAR-100 results per backbone with their sources, and one line per row that
    cannot be used (the row is left out).

    Args:
        path: a CSV with ``model,benchmark,benchmark_source`` (benchmark a fraction); default:
            the file shipped with ltexp (the thesis's four references).
        text: the file's text, when the caller has read it already.
    """
    if path:
        text = read_small_text(path, "references file") if text is None else text
        name = str(path)
    else:
        text = resources.files("ltexp.report").joinpath("reference_results.csv").read_text()
        name = "reference_results.csv"
    rows, problems = [], []
    reader = csv.DictReader(io.StringIO(text))
    wanted = {"model", "benchmark", "benchmark_source"}
    if not wanted <= set(reader.fieldnames or []):
        return _empty_references(), [
            f"reference file {name!r} needs the columns model,benchmark,benchmark_source; "
            f"Table 4.9 shows no references"
        ]
    for line, row in enumerate(reader, start=2):
        model, source = (
            (row.get("model") or "").strip(),
            (row.get("benchmark_source") or "").strip(),
        )
        try:
            value = float(row.get("benchmark") or "")
        except ValueError:
            value = float("nan")
        if not model or not source or not 0.0 <= value <= 1.0:
            problems.append(
                f"reference file {name!r} line {line} is malformed (model {model!r}, benchmark "
                f"{row.get('benchmark')!r}, source {source!r}); it needs a model, a fraction in "
                f"[0, 1] and a source, and is left out"
            )
            continue
        rows.append({"model": model, "benchmark": value, "benchmark_source": source})
    frame = pd.DataFrame(rows, columns=["model", "benchmark", "benchmark_source"])
    return frame.drop_duplicates("model", keep="last"), problems


def _empty_references() -> pd.DataFrame:
    return pd.DataFrame(columns=["model", "benchmark", "benchmark_source"])


def benchmarks_table(
    cells: pd.DataFrame, models: list[str], references: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Table 4.9: best balanced-test top-1 over losses (balanced training) beside a reference."""
    refs = (references if references is not None else reference_results()[0]).set_index("model")
    rows = []
    for model in models:
        part = cells[(cells["model"] == model) & (cells["train_split"] == "balanced")]
        result = part["balanced"].max() if len(part) else np.nan
        best = part.loc[part["balanced"].idxmax(), "loss"] if part["balanced"].notna().any() else ""
        rows.append(
            {
                "model": model,
                "result": result,
                "best_loss": best,
                "benchmark": refs["benchmark"].get(model, np.nan),
                "benchmark_source": refs["benchmark_source"].get(model, "no reference recorded"),
            }
        )
    # best_loss last: readers of the earlier four columns keep working
    return pd.DataFrame(
        rows, columns=["model", "result", "benchmark", "benchmark_source", "best_loss"]
    )


# --- the data and the models (Tables 3.2, 3.3) ------------------------------------------------


def split_sizes_table(manifest: dict[str, Any]) -> pd.DataFrame:
    """Table 3.2: images of every split, classes present, and images per class (min-max).

    A set long-tailed as given lists only the splits it has, and names the test set its class
    groups come from."""
    rows = []
    group_split = manifest.get("group_split", "test_lt")
    for title, split in DATA_SPLITS:
        info = manifest["splits"].get(split)
        if info is None or (group_split != "test_lt" and not info["n"]):
            continue
        if split in ("test_head", "test_middle", "test_tail") and group_split != "test_lt":
            title = title.replace("long-tailed test", "balanced test")
        counts = [c for c in info["per_class"] if c > 0]
        rows.append(
            {
                "split": title,
                "name": split,
                "images": int(info["n"]),
                "classes": len(counts),
                "per_class_min": min(counts) if counts else 0,
                "per_class_max": max(counts) if counts else 0,
            }
        )
    return pd.DataFrame(
        rows, columns=["split", "name", "images", "classes", "per_class_min", "per_class_max"]
    )


def backbones_table(models: list[str], num_classes: int) -> pd.DataFrame:
    """Table 3.3: type, pretraining, parameters (millions, with a ``num_classes``-way head,
    counted on the built model) and the weights' ImageNet-1K top-1 (%) from the library."""
    rows = []
    for name in models:
        try:
            spec = model_spec(name)
        except ConfigError:  # a model some other tool logged: nothing known about it
            rows.append({"model": name, "type": "", "pretraining": "", "weights": ""})
            continue
        with torch.device("meta"):  # counts parameters without allocating or downloading them
            params = count_parameters(build_model(name, num_classes, pretrained=False))
        top1 = spec.imagenet_top1()
        rows.append(
            {
                "model": name,
                "type": spec.kind,
                "pretraining": spec.pretraining,
                "params_millions": params / 1e6,
                "imagenet_top1": np.nan if top1 is None else float(top1),
                "weights": spec.weights,
            }
        )
    return pd.DataFrame(
        rows,
        columns=["model", "type", "pretraining", "params_millions", "imagenet_top1", "weights"],
    )


def lt_class_counts(manifest: dict[str, Any], split: str) -> np.ndarray:
    """Images per class of ``split``, classes from most to least frequent in train_lt (Figures
    3.3/3.4)."""
    train = np.asarray(manifest["splits"]["train_lt"]["per_class"])
    rank = np.asarray(manifest.get("class_rank", range(len(train))))
    order = sorted(range(len(train)), key=lambda c: (-train[c], list(rank).index(c)))
    return np.asarray(manifest["splits"][split]["per_class"])[order]
