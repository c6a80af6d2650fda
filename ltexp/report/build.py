"""Write the report: CSV tables, figures, and ``report.md`` / ``report.tex`` that show them all.

The report is a list of :class:`Table` and :class:`Figure` blocks in the thesis's order (Tables
3.2-3.3, Figures 3.3-3.4, Tables 4.1-4.11, Figures 4.1-4.6, then what goes beyond the thesis:
the paired comparisons with the Softmax loss). Markdown and LaTeX are two renderings of the same
blocks, so they cannot disagree. Numbers are fractions in the CSVs and, by default, in the text;
``percent`` prints percentages with two decimals, as the thesis text does.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ltexp.data.splits import FEW_SHOT_MAX, MANY_SHOT_MIN
from ltexp.report.paired import PairedDifference, paired_bootstrap
from ltexp.report.tables import (
    BASELINE_LOSS,
    COLUMN_TITLES,
    COLUMNS,
    LOSS_ORDER,
    MODEL_ORDER,
    SPLIT_ORDER,
    SPLIT_TITLES,
    axis_params,
    axis_table,
    axis_title,
    axis_values,
    backbones_table,
    benchmarks_table,
    cell_means,
    loss_title,
    lt_class_counts,
    model_title,
    ordered,
    reference_results,
    results_table,
    select_latest,
    split_sizes_table,
    summary,
    with_axes,
)
from ltexp.report.variants import axes_of, choose
from ltexp.tracking.schema import CELL_PARAMS, REPORT_COLUMNS, SHOT_COLUMNS

log = logging.getLogger(__name__)
DASH = "—"
# evaluate's predictions artifact: <split>_labels, <split>_top5 for test_balanced and test_lt
# (None: the run has none)
Predictions = Callable[[str], Mapping[str, np.ndarray] | None]


@dataclass
class Grid:
    """The cells a report expects (missing ones are reported)."""

    models: list[str]
    losses: list[str]
    train_splits: list[str]
    seeds: list[str] = field(default_factory=list)
    # the cells a study ran (ltexp.cells.cell_key): what its thesis tables hold
    cell_keys: set[str] | None = None


@dataclass
class ReportOptions:
    """How the report is written.

    Attributes:
        percent: percentages with two decimals in report.md/.tex (CSVs stay fractions).
        intervals: each single-seed cell of Tables 4.1-4.8 with its 95 % bootstrap interval in
            report.md.
        bootstrap_samples, bootstrap_seed: the paired bootstrap's resamples and seed.
        references: a CSV of published results (default: the thesis's, shipped with ltexp).
        variant: the variant of each cell the thesis tables hold (default: the plain one;
            :mod:`ltexp.report.variants`).
    """

    percent: bool = False
    intervals: bool = True
    bootstrap_samples: int = 1000
    bootstrap_seed: int = 0
    references: str = ""
    variant: str = ""


@dataclass
class ReportInputs:
    """What a report is built from (the aggregate step gathers it from the store).

    Attributes:
        results: one row per evaluate run (see :func:`results_frame`).
        manifest: the prepare_data manifest of the data the runs used (None: not found).
        predictions: loads an evaluate run's predictions by run id (None: no paired tables).
        notes: problems found while gathering, printed at the top of the report.
    """

    results: pd.DataFrame
    manifest: dict[str, Any] | None = None
    predictions: Predictions | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    """What was written, and what the reader must know."""

    output_dir: Path
    files: list[Path]
    missing: list[str]
    duplicates: list[str]
    n_runs: int
    notes: list[str] = field(default_factory=list)


@dataclass
class Table:
    """A table of the report: a numbered caption, a header, rows of rendered cells, notes."""

    number: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    tex_rows: list[list[str]] | None = None  # when LaTeX needs other text than Markdown
    align: str = ""  # l/r per column (default: the first left, the others right)

    def alignment(self) -> str:
        return self.align or "l" + "r" * (len(self.header) - 1)


@dataclass
class Figure:
    """A figure of the report (PNG for Markdown, PDF for LaTeX)."""

    number: str
    caption: str
    stem: str


def results_frame(records: list[dict]) -> pd.DataFrame:
    """Frame of evaluate results: run_id, end_time, the cell params, the five columns and their
    bootstrap bounds (NaN where not logged)."""
    frame = pd.DataFrame.from_records(records)
    bounds = [f"{c}_ci_{b}" for c in COLUMNS for b in ("low", "high")]
    for col in ("run_id", "end_time", *CELL_PARAMS, *COLUMNS, *bounds):
        if col not in frame:
            frame[col] = np.nan
    frame = with_axes(frame)
    for col in (*COLUMNS, *bounds):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame["seed"] = frame["seed"].astype(str)
    return frame


class _Fmt:
    """Numbers as the report prints them: fractions with 4 decimals, or percentages with 2."""

    def __init__(self, percent: bool) -> None:
        self.percent = percent

    def __call__(self, value: float, signed: bool = False) -> str:
        if value is None or pd.isna(value):
            return DASH
        sign = "+" if signed else ""
        return f"{value * 100:{sign}.2f}" if self.percent else f"{value:{sign}.4f}"

    def pm(self, mean: float, std: float) -> str:
        return DASH if pd.isna(mean) else f"{self(mean)} ± {self(std)}"

    def interval(self, value: float, low: float, high: float, signed: bool = False) -> str:
        if pd.isna(value):
            return DASH
        if pd.isna(low) or pd.isna(high):
            return self(value, signed)
        return f"{self(value, signed)} [{self(low, signed)}, {self(high, signed)}]"

    @property
    def unit(self) -> str:
        return "top-1 accuracy in %" if self.percent else "top-1 accuracy as a fraction"


def build_report(
    inputs: ReportInputs | pd.DataFrame,
    output_dir: Path,
    grid: Grid | None = None,
    options: ReportOptions | None = None,
) -> Report:
    """Write every table and figure of the report into ``output_dir``."""
    if isinstance(inputs, pd.DataFrame):
        inputs = ReportInputs(inputs)
    options = options or ReportOptions()
    output_dir.mkdir(parents=True, exist_ok=True)
    fmt = _Fmt(options.percent)
    selection = select_latest(inputs.results)
    # the thesis's tables hold one variant of each cell; every other result is in tables of its
    # own, labelled with what differs
    choice = choose(selection.results, grid.cell_keys if grid else None, options.variant)
    every_result = choice.results
    results = choice.thesis
    if grid is None:
        grid = Grid(
            ordered(results["model"].unique().tolist(), MODEL_ORDER),
            ordered(results["loss"].unique().tolist(), LOSS_ORDER),
            ordered(results["train_split"].unique().tolist(), SPLIT_ORDER),
            sorted(results["seed"].astype(str).unique().tolist()),
        )
    missing = _missing_cells(results, grid)
    notes = [*inputs.notes, *choice.notes]
    for line in missing:
        log.warning("missing result: %s", line)
    for line in selection.duplicates:
        log.warning("duplicate results: %s", line)
    references, problems = reference_results(options.references or None)
    notes += problems
    cells = cell_means(results)
    numbered = _is_full_thesis_grid(grid, cells)
    files: list[Path] = []

    def write_csv(df: pd.DataFrame, name: str) -> None:
        path = output_dir / name
        df.to_csv(path, index=False, float_format="%.6f")
        files.append(path)

    def number(n: str) -> str:
        return n if numbered else ""

    manifest = inputs.manifest
    tail_n = int(manifest["splits"]["test_tail"]["n"]) if manifest else None
    blocks: list[Table | Figure] = []

    # --- the data and the models ---------------------------------------------------------
    if manifest is not None:
        sizes = split_sizes_table(manifest)
        write_csv(sizes, "split_sizes.csv")
        blocks.append(
            Table(
                number("3.2"),
                f"The splits of {manifest['dataset']} (images, classes, images per class)",
                ["Split", "Images", "Classes", "Per class"],
                [[r.split, f"{r.images:,}", str(r.classes), _range(r)] for r in sizes.itertuples()],
            )
        )
    else:
        notes.append(
            "no prepare_data run of these results' data was found: Table 3.2 and Figures "
            "3.3/3.4 are left out, and the paired comparisons have no head/middle/tail columns"
        )
    num_classes = int(manifest["num_classes"]) if manifest else 100
    backbones = backbones_table(grid.models, num_classes)
    write_csv(backbones, "backbones.csv")
    blocks.append(
        Table(
            number("3.3"),
            f"The backbones (parameters with a {num_classes}-way linear head)",
            ["Backbone", "Type", "Pretraining", "Parameters (M)", "ImageNet top-1 (%)"],
            [
                [
                    model_title(r.model),
                    r.type,
                    r.pretraining,
                    DASH if pd.isna(r.params_millions) else f"{r.params_millions:.2f}",
                    DASH if pd.isna(r.imagenet_top1) else f"{r.imagenet_top1:.3f}",
                ]
                for r in backbones.itertuples()
            ],
            ["ImageNet top-1: from the weights' own metadata (torchvision); timm publishes none."],
            align="lllrr",
        )
    )
    if manifest is not None:
        # a set long-tailed as given may have a balanced test set only: its class groups' set
        test_split = manifest.get("group_split", "test_lt")
        for num, split, what in (("3.3", "train_lt", "training"), ("3.4", test_split, "test")):
            stem = f"fig_{split}_class_counts"
            kind = "balanced" if split == "test_balanced" else "long-tailed"
            counts = lt_class_counts(manifest, split)
            files += _class_count_figure(counts, output_dir / stem, f"{kind} {what}")
            blocks.append(
                Figure(
                    number(num),
                    f"Images per class of the {kind} {what} set, classes from most to "
                    f"least frequent",
                    stem,
                )
            )
        lacking = [
            title
            for title, split in (("balanced", "test_balanced"), ("long-tailed", "test_lt"))
            if not manifest["splits"][split]["n"]
        ]
        if lacking and test_split != "test_lt":
            notes.append(
                f"{manifest['dataset']} has no {' or '.join(lacking)} test set: that column is "
                f"empty (—); head/middle/tail are measured on its balanced test set"
            )
        elif lacking:
            notes.append(
                f"{manifest['dataset']} has no {' or '.join(lacking)} test set: that column is "
                f"empty (—)"
            )

    # --- Tables 4.1-4.8 ------------------------------------------------------------------
    # the axes appear only when the grid has them: a thesis grid's runs.csv stays as it was
    axes = [a for a, plain in axis_params().items() if (every_result[a] != plain).any()]
    if (every_result["label"] != "").any():
        axes.append("label")
    runs_out = every_result[["run_id", *CELL_PARAMS, *axes, *COLUMNS]].rename(
        columns={**REPORT_COLUMNS, "label": "variant"}
    )
    write_csv(runs_out, "runs.csv")
    thesis_tables = [(m, s) for m in MODEL_ORDER for s in SPLIT_ORDER]
    tail_note = _tail_note(tail_n, fmt)
    for model, split in itertools.product(grid.models, grid.train_splits):
        table = results_table(cells, model, split, grid.losses)
        write_csv(table, f"results_{model}_{split}.csv")
        several = "n_seeds" in table
        rows, tex_rows = [], []
        for _, row in table.iterrows():
            if several:
                shown = [fmt.pm(row[c], row[f"{c}_seed_std"]) for c in COLUMNS]
                tex = shown
            else:
                tex = [fmt(row[c]) for c in COLUMNS]
                shown = [
                    fmt.interval(row[c], row.get(f"{c}_ci_low"), row.get(f"{c}_ci_high"))
                    if options.intervals
                    else fmt(row[c])
                    for c in COLUMNS
                ]
            rows.append([loss_title(row["loss"]), *shown])
            tex_rows.append([loss_title(row["loss"]), *tex])
        table_notes = []
        if several:
            n = table["n_seeds"].dropna()
            table_notes.append(
                f"Mean ± population std over seeds (n = {', '.join(map(str, sorted(set(n))))})."
            )
        elif options.intervals:
            table_notes.append("In brackets: the 95 % bootstrap interval over the test images.")
        table_notes += tail_note
        key = (model, split)
        num = f"4.{thesis_tables.index(key) + 1}" if key in thesis_tables else ""
        blocks.append(
            Table(
                number(num),
                f"{model_title(model)} trained on the {SPLIT_TITLES.get(split, split)} set: "
                f"top-1 accuracy",
                ["Loss", *(COLUMN_TITLES[c] for c in COLUMNS)],
                rows,
                table_notes,
                tex_rows,
            )
        )

    # --- Tables 4.9-4.11 -----------------------------------------------------------------
    bench = benchmarks_table(cells, grid.models, references)
    # the published results are CIFAR-100's: a set long-tailed as given is not compared to them
    given = manifest is not None and manifest.get("protocol", {}).get("mode") == "given"
    if not given:
        write_csv(bench, "benchmarks.csv")
        blocks.append(
            Table(
                number("4.9"),
                "Best balanced-test top-1 over the losses (balanced training) beside a published "
                "CIFAR-100 result",
                ["Backbone", "This study", "Best loss", "Published", "Source"],
                [
                    [
                        model_title(r.model),
                        fmt(r.result),
                        loss_title(r.best_loss) if r.best_loss else DASH,
                        fmt(r.benchmark),
                        r.benchmark_source,
                    ]
                    for r in bench.itertuples()
                ],
                align="lrlrl",
            )
        )
    if given:
        blocks += _shot_tables(results, grid, manifest, fmt, write_csv)
    by_model = summary(cells, "model", MODEL_ORDER)
    by_loss = summary(cells, "loss", LOSS_ORDER)
    write_csv(by_model.drop(columns="n"), "summary_by_model.csv")
    write_csv(by_loss.drop(columns="n"), "summary_by_loss.csv")
    for frame, by, num, what in (
        (by_model, "model", "4.10", "per backbone, over the losses"),
        (by_loss, "loss", "4.11", "per loss, over the backbones"),
    ):
        name = model_title if by == "model" else loss_title
        blocks.append(
            Table(
                number(num),
                f"Long-tailed training, mean ± std {what}",
                ["Backbone" if by == "model" else "Loss", *(COLUMN_TITLES[c] for c in COLUMNS)],
                [
                    [name(r[by]), *(fmt.pm(r[f"{c}_mean"], r[f"{c}_std"]) for c in COLUMNS)]
                    for _, r in frame.iterrows()
                ],
                ["Standard deviation: population (ddof = 0).", *tail_note],
            )
        )

    # --- Figures 4.1-4.6 -----------------------------------------------------------------
    stem = "fig_summary_by_model"
    files += _errorbar_figure(by_model, "model", model_title, out=output_dir / stem)
    what = "mean ± std over the losses, long-tailed training"
    blocks.append(Figure(number("4.1"), f"{number('Table 4.10') or 'Per backbone'}: {what}", stem))
    for model in grid.models:
        stem = f"fig_{model.replace(':', '_')}"
        files += _lines_figure(cells, model, grid.losses, output_dir / stem)
        num = f"4.{MODEL_ORDER.index(model) + 2}" if model in MODEL_ORDER else ""
        blocks.append(
            Figure(
                number(num),
                f"{model_title(model)}, long-tailed training: one line per loss across the "
                f"five columns",
                stem,
            )
        )
    stem = "fig_summary_by_loss"
    files += _errorbar_figure(by_loss, "loss", loss_title, out=output_dir / stem)
    what = "mean ± std over the backbones, long-tailed training"
    blocks.append(Figure(number("4.6"), f"{number('Table 4.11') or 'Per loss'}: {what}", stem))

    # --- beyond the thesis: the values a search chose ------------------------------------
    if "tuned_params" in results and (results["tuned_params"].fillna("") != "").any():
        blocks.append(_tuned_table(results, number))

    # --- beyond the thesis: paired comparisons with the Softmax loss -----------------------
    if inputs.predictions is not None and BASELINE_LOSS in grid.losses:
        paired, unreadable = paired_frame(results, inputs.predictions, manifest, grid, options)
        if unreadable:
            notes.append(
                f"{unreadable} evaluate run(s) have no readable predictions artifact: their "
                f"paired comparisons with the Softmax loss are left out"
            )
        if len(paired):
            write_csv(paired, "paired_vs_softmax.csv")
            blocks += _paired_blocks(paired, grid, fmt, tail_note, number)
            files += _paired_figure(paired, grid, output_dir / "fig_paired_vs_softmax")
    elif inputs.predictions is not None:
        notes.append("the grid has no Softmax loss (ce): no paired comparisons")

    # --- beyond the thesis: the grid's other axes, each against the plain cell --------------
    for axis in axis_params():
        if len(axis_values(every_result, axis)) < 2:
            continue
        table = axis_table(every_result, axis)
        write_csv(table, f"by_{axis}.csv")
        blocks.append(_axis_block(table, axis, fmt, number))
    # --- beyond the thesis: every other variant, so that no result is left out --------------
    others = choice.others
    if len(others):
        table = variants_table(others)
        write_csv(table, "variants.csv")
        blocks.append(_variants_block(table, fmt, number))
    if inputs.predictions is not None and len(others):
        paired = paired_vs_plain(every_result, inputs.predictions, manifest, options)
        if len(paired):
            write_csv(paired, "paired_vs_plain.csv")
            blocks.append(_paired_plain_block(paired, fmt, tail_note, number))

    n_runs = len(every_result)
    files += _write_markdown(output_dir, blocks, fmt, notes, missing, selection.duplicates, n_runs)
    files += _write_latex(output_dir, blocks, fmt)
    return Report(output_dir, files, missing, selection.duplicates, n_runs, notes)


def _shot_tables(
    results: pd.DataFrame,
    grid: Grid,
    manifest: dict[str, Any],
    fmt: _Fmt,
    write_csv: Callable[[pd.DataFrame, str], None],
) -> list[Table]:
    """Many/medium/few-shot top-1 per loss (the ImageNet-LT papers' columns), mean over seeds:
    the table a set long-tailed as given is compared by (``shot_groups.csv``)."""
    shots = [g for g in SHOT_COLUMNS if g in results and results[g].notna().any()]
    if not shots:
        return []
    frame = results.copy()
    frame[shots] = frame[shots].apply(pd.to_numeric, errors="coerce")
    means = frame.groupby(["model", "train_split", "loss"], sort=False)[shots].mean()
    means = means.reset_index()
    write_csv(means, "shot_groups.csv")
    sizes = {g: len(manifest["groups"].get(g, [])) for g in shots}
    measured_on = "balanced" if manifest.get("group_split") == "test_balanced" else "long-tailed"
    blocks = []
    for model, split in itertools.product(grid.models, grid.train_splits):
        part = means[(means["model"] == model) & (means["train_split"] == split)]
        if part.empty:
            continue
        order = ordered(part["loss"].tolist(), LOSS_ORDER)
        part = part.set_index("loss").loc[order]
        blocks.append(
            Table(
                "",
                f"{model_title(model)} trained on the {SPLIT_TITLES.get(split, split)} set: "
                f"many/medium/few-shot top-1",
                ["Loss", *(f"{g.title()} ({sizes[g]} classes)" for g in shots)],
                [[loss_title(loss), *(fmt(r[g]) for g in shots)] for loss, r in part.iterrows()],
                [
                    f"Classes by training images: many > {MANY_SHOT_MIN - 1}, medium "
                    f"{FEW_SHOT_MAX + 1}–{MANY_SHOT_MIN - 1}, few < {FEW_SHOT_MAX + 1} (Liu et al. "
                    f"2019); measured on the {measured_on} test set; mean over seeds."
                ],
            )
        )
    return blocks


def _axis_block(table: pd.DataFrame, axis: str, fmt: _Fmt, number: Callable) -> Table:
    """Loss × the axis's values: balanced-test top-1 (the long-tailed literature's measure)."""
    values = axis_values(table, axis)
    rows = []
    for (model, split, loss), part in table.groupby(["model", "train_split", "loss"], sort=False):
        by_value = part.set_index(axis)["balanced"]
        rows.append(
            [
                model_title(model),
                SPLIT_TITLES.get(split, split),
                loss_title(loss),
                *(fmt(by_value[v]) if v in by_value else DASH for v in values),
            ]
        )
    title = axis_title(axis)
    return Table(
        number(""),
        f"Loss × {title}: balanced-test top-1, the other axes plain (beyond the thesis)",
        ["Backbone", "Training set", "Loss", *values],
        rows,
        [
            f"Mean over seeds; by_{axis}.csv has every column. Plain: "
            f"{axis_params()[axis]}; the thesis's tables hold only plain cells."
        ],
        align="lll" + "r" * len(values),
    )


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


def variants_table(others: pd.DataFrame) -> pd.DataFrame:
    """Per (model, training set, loss, variant) outside the thesis tables: the mean of every
    column over seeds and ``n_seeds``, in the thesis's order."""
    keys = ["model", "train_split", "loss", "label"]
    grouped = others.groupby(keys, sort=False)
    out = grouped[list(COLUMNS)].mean()
    out["n_seeds"] = grouped.size()
    out = out.reset_index().rename(columns={"label": "variant"})
    orders = {
        "model": ordered(set(out["model"]), MODEL_ORDER),
        "train_split": ordered(set(out["train_split"]), SPLIT_ORDER),
        "loss": ordered(set(out["loss"]), LOSS_ORDER),
        "variant": sorted(set(out["variant"])),
    }
    rank = {key: {v: i for i, v in enumerate(values)} for key, values in orders.items()}
    return out.sort_values(
        ["model", "train_split", "loss", "variant"],
        key=lambda col: col.map(rank[col.name]),
        ignore_index=True,
    )


def _variants_block(table: pd.DataFrame, fmt: _Fmt, number: Callable) -> Table:
    rows = [
        [
            model_title(r["model"]),
            SPLIT_TITLES.get(r["train_split"], r["train_split"]),
            loss_title(r["loss"]),
            r["variant"] or "plain",
            *(fmt(r[c]) for c in COLUMNS),
            str(int(r["n_seeds"])),
        ]
        for _, r in table.iterrows()
    ]
    return Table(
        number(""),
        "Every other variant of a cell: the results the tables above do not hold (beyond the "
        "thesis)",
        ["Backbone", "Training set", "Loss", "Variant", *(COLUMN_TITLES[c] for c in COLUMNS), "n"],
        rows,
        [
            "Variant: the axes off their plain value, tuned, and each option off its default or "
            "off the setting of the tables above (variants.csv). Mean over n seeds."
        ],
        align="llll" + "r" * (len(COLUMNS) + 1),
    )


def _paired_cells(row: Any, fmt: _Fmt) -> list[str]:
    """A paired difference per column with its interval; ``*`` where it excludes 0."""
    cells = []
    for c in COLUMNS:
        text = fmt.interval(row[c], row[f"{c}_ci_low"], row[f"{c}_ci_high"], signed=True)
        cells.append(f"{text} *" if row[f"{c}_excludes_zero"] else text)
    return cells


def _paired_plain_block(
    paired: pd.DataFrame, fmt: _Fmt, tail_note: list[str], number: Callable
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
                *_paired_cells(r, fmt),
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


def _range(row: Any) -> str:
    low, high = row.per_class_min, row.per_class_max
    return str(low) if low == high else f"{low}–{high}"


def _tail_note(tail_n: int | None, fmt: _Fmt) -> list[str]:
    if not tail_n:
        return []
    return [
        f"The tail column is measured on {tail_n} test images: one image moves it by "
        f"{fmt(1 / tail_n)}."
    ]


def _missing_cells(results: pd.DataFrame, grid: Grid) -> list[str]:
    have = set(
        zip(
            results["model"],
            results["loss"],
            results["train_split"],
            results["seed"].astype(str),
            strict=True,
        )
    )
    seeds = grid.seeds or sorted({s for *_, s in have})
    return [
        f"{m}/{lo}/{sp}/seed {s}"
        for m, lo, sp, s in itertools.product(grid.models, grid.losses, grid.train_splits, seeds)
        if (m, lo, sp, s) not in have
    ]


def _is_full_thesis_grid(grid: Grid, cells: pd.DataFrame) -> bool:
    if set(grid.models) != set(MODEL_ORDER) or set(grid.losses) != set(LOSS_ORDER):
        return False
    want = set(itertools.product(MODEL_ORDER, LOSS_ORDER, SPLIT_ORDER))
    have = set(zip(cells["model"], cells["loss"], cells["train_split"], strict=True))
    return want <= have


# --- paired comparisons ---------------------------------------------------------------------


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


def _tuned_table(results: pd.DataFrame, number: Callable) -> Table:
    """Which hyper-parameters each cell used, when ``ltexp main --tuned`` took them from a
    search (``ltexp tune``)."""
    import json

    rows = []
    keys = ["model", "loss", "train_split"]
    for (model, loss, split), part in results.groupby(keys, sort=False):
        values = next((v for v in part["tuned_params"].fillna("") if v), "")
        shown = (
            ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in json.loads(values).items()
            )
            if values
            else "as configured"
        )
        rows.append([model_title(model), loss_title(loss), SPLIT_TITLES.get(split, split), shown])
    return Table(
        number(""),
        "Hyper-parameters of each cell, tuned on the validation set (ltexp tune)",
        ["Backbone", "Loss", "Training set", "Values"],
        rows,
        ["Cells that were never tuned use the configured values."],
        align="llll",
    )


def _paired_blocks(
    paired: pd.DataFrame, grid: Grid, fmt: _Fmt, tail_note: list[str], number: Callable
) -> list[Table | Figure]:
    blocks: list[Table | Figure] = []
    for split in grid.train_splits:
        part = paired[paired["train_split"] == split]
        if not len(part):
            continue
        rows = []
        for _, r in part.iterrows():
            rows.append([model_title(r["model"]), loss_title(r["loss"]), *_paired_cells(r, fmt)])
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


# --- rendering --------------------------------------------------------------------------------


def _label(number: str, kind: str) -> str:
    return f"{kind} {number}: " if number else ""


def _write_markdown(
    out: Path,
    blocks: list[Table | Figure],
    fmt: _Fmt,
    notes: list[str],
    missing: list[str],
    duplicates: list[str],
    n_runs: int,
) -> list[Path]:
    lines = ["# Results", "", f"From {n_runs} evaluate runs; {fmt.unit}.", ""]
    for note in notes:
        lines += [f"**Note:** {note}", ""]
    if missing:
        lines += [f"**Missing cells ({len(missing)}), shown as {DASH}:** " + ", ".join(missing), ""]
    if duplicates:
        lines += [
            "**Duplicate runs (the latest finished one is used):** " + "; ".join(duplicates),
            "",
        ]
    for block in blocks:
        if isinstance(block, Figure):
            lines += [f"![{_label(block.number, 'Figure')}{block.caption}]({block.stem}.png)", ""]
            lines += [f"*{_label(block.number, 'Figure')}{block.caption}*", ""]
            continue
        lines += [f"### {_label(block.number, 'Table')}{block.caption}", ""]
        lines.append("| " + " | ".join(block.header) + " |")
        lines.append("|" + "".join("---:|" if a == "r" else "---|" for a in block.alignment()))
        lines += ["| " + " | ".join(row) + " |" for row in block.rows]
        lines.append("")
        for note in block.notes:
            lines += [note, ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return [path]


def _tex_escape(text: str) -> str:
    out = text.replace("\\", r"\textbackslash{}")
    for a, b in (("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("$", r"\$")):
        out = out.replace(a, b)
    return out.replace("±", r"$\pm$").replace("—", "--").replace("–", "--").replace("*", r"$^{*}$")


def _write_latex(out: Path, blocks: list[Table | Figure], fmt: _Fmt) -> list[Path]:
    parts = [
        "% Generated by ltexp aggregate. Needs \\usepackage{booktabs,graphicx}.",
        f"% Numbers: {fmt.unit}.",
        "",
    ]
    for block in blocks:
        if isinstance(block, Figure):
            parts += [
                "\\begin{figure}[t]",
                "\\centering",
                f"\\includegraphics[width=\\linewidth]{{{block.stem}.pdf}}",
                f"\\caption{{{_tex_escape(block.caption)}}}",
                f"\\label{{fig:{block.stem}}}",
                "\\end{figure}",
                "",
            ]
            continue
        rows = block.tex_rows if block.tex_rows is not None else block.rows
        spec = block.alignment()
        if block.header[-1] == "Source":  # long citations wrap
            spec = spec[:-1] + "p{5cm}"
        parts += [
            "\\begin{table}[t]",
            "\\centering",
            "\\small",
            f"\\caption{{{_tex_escape(block.caption)}}}",
            f"\\begin{{tabular}}{{{spec}}}",
            "\\toprule",
            " & ".join(_tex_escape(h) for h in block.header) + " \\\\",
            "\\midrule",
            *(" & ".join(_tex_escape(c) for c in row) + " \\\\" for row in rows),
            "\\bottomrule",
            "\\end{tabular}",
        ]
        parts += [f"\\par\\footnotesize {_tex_escape(n)}" for n in block.notes]
        parts += ["\\end{table}", ""]
    path = out / "report.tex"
    path.write_text("\n".join(parts))
    return [path]


# --- figures ----------------------------------------------------------------------------------


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


def _errorbar_figure(frame: pd.DataFrame, by: str, name: Callable, *, out: Path) -> list[Path]:
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


def _lines_figure(cells: pd.DataFrame, model: str, losses: list[str], stem: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(COLUMNS))
    part = cells[(cells["model"] == model) & (cells["train_split"] == "lt")]
    for loss in losses:
        row = part[part["loss"] == loss]
        if len(row):
            ax.plot(x, [row.iloc[0][c] for c in COLUMNS], marker="o", label=loss_title(loss))
    _style(ax, x, f"{model_title(model)}, long-tailed training")
    return _save(fig, stem)


def _class_count_figure(counts: np.ndarray, stem: Path, what: str) -> list[Path]:
    """Images per class of the ``what`` set (``long-tailed training``), most frequent first."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(np.arange(len(counts)), counts, width=1.0, color="#4472c4")
    ax.set_xlabel("class, from most to least frequent")
    ax.set_ylabel("images")
    ax.set_title(f"{what[0].upper()}{what[1:]} set: {int(counts.sum()):,} images")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, stem)


def _paired_figure(paired: pd.DataFrame, grid: Grid, stem: Path) -> list[Path]:
    part = paired[paired["train_split"] == "lt"] if "lt" in grid.train_splits else paired
    models = [m for m in grid.models if m in set(part["model"])]
    fig, axes = plt.subplots(
        1, max(len(models), 1), figsize=(4.5 * max(len(models), 1), 3.8), squeeze=False
    )
    x = np.arange(len(COLUMNS))
    for ax, model in zip(axes[0], models, strict=False):
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
    return _save(fig, stem)
