"""The report's sections, one builder each, in the thesis's order: the data and the models
(Tables 3.2-3.3, Figures 3.3-3.4), the results (Tables 4.1-4.8), the comparisons (Tables
4.9-4.11), the figures (4.1-4.6), then what goes beyond the thesis: the values a search chose,
the paired comparisons with the Softmax loss, the grid's other axes, every other variant.

Each builder reads the :class:`Context`, writes its CSV tables and figures, and returns its
blocks (:mod:`ltexp.report.model`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ltexp.config import loss_key
from ltexp.data.splits import FEW_SHOT_MAX, MANY_SHOT_MIN, TRAINING_SETS
from ltexp.evaluation import CALIBRATION_BINS, reliability, softmax_confidence
from ltexp.losses import LOSSES, same_as_loss
from ltexp.report import plots
from ltexp.report.claims import (
    THESIS,
    Verdict,
    check_claims,
    claims_frame,
    family_size,
    load_claims,
)
from ltexp.report.correctness import EXACT, SEEDS_AND_IMAGES, SEEDS_ONLY, Correctness
from ltexp.report.model import (
    DASH,
    Block,
    Figure,
    Fmt,
    Grid,
    Predictions,
    ReportOptions,
    Table,
)
from ltexp.report.paired import (
    EQUIVALENTS,
    equal_label,
    paired_cells,
    paired_frame,
    paired_plain_block,
    paired_softmax_blocks,
    paired_vs_plain,
    same_as_notes,
)
from ltexp.report.published import reproduction_frame, reproduction_summary
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
    loss_title,
    lt_class_counts,
    model_title,
    ordered,
    results_table,
    split_sizes_table,
    summary,
)
from ltexp.schema import CELL_PARAMS, REPORT_COLUMNS, SHOT_COLUMNS


@dataclass
class Context:
    """What every section reads, and where it writes.

    Attributes:
        results: the thesis tables' results (one variant per cell).
        every_result: every result, labelled (``label``, ``thesis``).
        cells: ``results`` as cell means over seeds (:func:`ltexp.report.tables.cell_means`).
        numbered: the full thesis grid: tables and figures carry the thesis's numbers.
        notes: what the reader must know, printed at the top.
        files: every file written.
    """

    output_dir: Path
    fmt: Fmt
    grid: Grid
    options: ReportOptions
    manifest: dict[str, Any] | None
    predictions: Predictions | None
    correctness: Correctness | None
    results: pd.DataFrame
    every_result: pd.DataFrame
    cells: pd.DataFrame
    references: pd.DataFrame
    published: pd.DataFrame
    published_given: bool
    numbered: bool
    notes: list[str] = field(default_factory=list)
    ensembles: pd.DataFrame = field(default_factory=pd.DataFrame)  # ensembles' results
    files: list[Path] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)  # the claims checked
    _same: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)
    _paired: pd.DataFrame | None = field(default=None, repr=False)

    def write_csv(self, frame: pd.DataFrame, name: str) -> None:
        path = self.output_dir / name
        frame.to_csv(path, index=False, float_format="%.6f")
        self.files.append(path)

    def number(self, n: str) -> str:
        """A table's or figure's thesis number, on the full thesis grid only."""
        return n if self.numbered else ""

    def same_as(self, loss: str, split: str) -> str:
        """The loss of :data:`~ltexp.report.paired.EQUIVALENTS` that ``loss`` is by construction
        on training set ``split`` of these results (:func:`ltexp.losses.same_as_loss`, with the
        runs' own values), or ``""``."""
        if self.manifest is None or loss == BASELINE_LOSS:
            return ""
        key = (loss, split)
        if key not in self._same:
            self._same[key] = next(
                (
                    other
                    for other in EQUIVALENTS
                    if other != loss and _same_loss(self.manifest, self.results, loss, split, other)
                ),
                "",
            )
        return self._same[key]

    def paired(self) -> pd.DataFrame:
        """Each loss minus the Softmax loss (:func:`ltexp.report.paired.paired_frame`), computed
        once: the summary and Tables 4.12-4.13 both read it."""
        if self._paired is None:
            self._paired = (
                paired_frame(self.results, self.correctness, self.grid, self.same_as)
                if self.correctness is not None and BASELINE_LOSS in self.grid.losses
                else pd.DataFrame()
            )
        return self._paired

    def same_as_softmax(self, loss: str, split: str) -> bool:
        """``loss`` is the Softmax loss by construction on training set ``split``."""
        return self.same_as(loss, split) == BASELINE_LOSS

    @property
    def tail_note(self) -> list[str]:
        if not self.manifest:
            return []
        return _tail_note(int(self.manifest["splits"]["test_tail"]["n"]), self.fmt)


def _protocol_study(manifest: dict[str, Any] | None) -> bool:
    """The results are of CIFAR-100 under the protocol's splits (what the thesis reports)."""
    return (
        manifest is not None
        and manifest.get("dataset") == "cifar100"
        and manifest.get("protocol", {}).get("mode") != "given"
    )


def claims_section(ctx: Context) -> list[Block]:
    """What the study says of a paper's conclusions (``claims.csv``; :mod:`ltexp.report.claims`):
    one row per claim, its verdict, its evidence and the sentence it checks. First in the
    report."""
    spec = ctx.options.claims or (THESIS if _protocol_study(ctx.manifest) else "")
    if not spec:
        return []
    if ctx.correctness is None:
        ctx.notes.append("claims need the evaluate runs' predictions: none were read, none checked")
        return []
    claims = load_claims(spec)
    by_cell = (
        ctx.results.sort_values("seed")
        .groupby(["model", "loss", "train_split"])["run_id"]
        .apply(lambda ids: ctx.correctness.readable(ids))
    )
    grid = {
        "model": ctx.grid.models,
        "loss": ctx.grid.losses,
        "train_split": ctx.grid.train_splits,
    }
    ctx.verdicts = check_claims(claims, by_cell.to_dict(), ctx.correctness, grid)
    skipped = len(claims) - len(ctx.verdicts)
    frame = claims_frame(ctx.verdicts)
    ctx.write_csv(frame, "claims.csv")
    if not len(frame):
        ctx.notes.append(f"none of the {len(claims)} claims concerns the cells of this study")
        return []
    tested = family_size(ctx.verdicts)
    counts = frame["verdict"].value_counts()
    notes = [
        f"{len(frame)} claim{'s' * (len(frame) != 1)}: {counts.get('reproduced', 0)} reproduced, "
        f"{counts.get('contradicted', 0)} contradicted, {counts.get('inconclusive', 0)} "
        f"inconclusive. A claim is reproduced when every difference it needs (paired, on the "
        f"same test images, over seeds and images) excludes 0 in the claimed direction after "
        f"Holm's correction over the {tested} differences the claims tested (family-wise error "
        f"5 %); contradicted when one excludes 0 the other way. With one seed a side a "
        f"difference cannot be told from training noise: the verdict says what the point "
        f"estimates say, and that it is not testable.",
    ]
    if skipped:
        notes.append(f"{skipped} claim(s) of the thesis concern cells this study did not train.")
    return [
        Table(
            "",
            "Claims: what this study says of the paper's conclusions",
            ["Claim", "Verdict", "Evidence", "Sentence (source)"],
            [
                [v.claim.id, v.verdict, v.evidence, f"{v.claim.text} ({v.claim.source})"]
                for v in ctx.verdicts
            ],
            notes,
            align="llpp",
        )
    ]


def summary_section(ctx: Context) -> list[Block]:
    """What the study found, before any table: per training set and column, the best cell with
    its interval and its paired difference from the Softmax loss, and what the seeds allow it
    to claim; the notes that concern every table, said once."""
    fmt, cells, paired = ctx.fmt, ctx.cells, ctx.paired()
    rows = []
    for split in ctx.grid.train_splits:
        part = cells[cells["train_split"] == split]
        for column in COLUMNS:
            ranked = part.dropna(subset=[column])
            if not len(ranked):
                continue
            best = ranked.loc[ranked[column].idxmax()]
            versus = DASH
            if best["loss"] == BASELINE_LOSS:
                versus = "is the Softmax loss"
            elif len(paired):
                hit = paired[
                    (paired["model"] == best["model"])
                    & (paired["train_split"] == split)
                    & (paired["loss"] == best["loss"])
                ]
                if len(hit):
                    versus = paired_cells(hit.iloc[0], fmt)[COLUMNS.index(column)]
            rows.append(
                [
                    SPLIT_TITLES.get(split, split),
                    COLUMN_TITLES[column],
                    f"{model_title(best['model'])}, {loss_title(best['loss'])}",
                    fmt.interval(
                        best[column], best.get(f"{column}_ci_low"), best.get(f"{column}_ci_high")
                    ),
                    versus,
                ]
            )
    if not rows:
        return []
    seeds = int(cells["n_seeds"].max()) if "n_seeds" in cells and len(cells) else 1
    notes = [
        "The best cell of each column (its mean top-1 over its seeds) with its 95 % interval, "
        "and its paired difference from the Softmax loss of the same backbone on the same test "
        "images (* : significant after Holm's correction over that paired table)."
        + (
            " With one seed per cell no difference can be told from training noise, so none is "
            "marked: train seeds=1,2,3 to test them."
            if seeds < 2
            else ""
        ),
        *ctx.tail_note,
    ]
    return [
        Table(
            "",
            "Summary: the best cell of each training set and column",
            ["Training set", "Column", "Best cell", "Top-1", "Minus Softmax"],
            rows,
            notes,
            align="lllrr",
        )
    ]


def reproduction_section(ctx: Context) -> list[Block]:
    """Each cell beside its published value (``reproduction.csv``): the thesis's Tables 4.1-4.8
    for a CIFAR-100 protocol study, or the paper given with ``references=<csv>``."""
    if not ctx.published_given and not _protocol_study(ctx.manifest):
        if ctx.manifest is not None:
            ctx.notes.append(
                f"no reproduction table: the published results are CIFAR-100's under the "
                f"thesis's protocol, and this study is of {ctx.manifest.get('dataset')} (give "
                f"another paper's with references=<csv>)"
            )
        return []
    if not len(ctx.published):
        ctx.notes.append(
            "no reproduction table: ltexp ships no per-cell values of the thesis's Tables "
            "4.1-4.8 yet (ltexp/report/published_results.csv is empty); give them, or another "
            "paper's, with references=<csv> (columns: table,model,loss,train_split,balanced,"
            "long_tailed,head,middle,tail,source)"
        )
        return []
    frame = reproduction_frame(ctx.cells, ctx.published)
    ctx.write_csv(frame, "reproduction.csv")
    if not len(frame):
        ctx.notes.append("no cell of this study has a published value: no reproduction table")
        return []
    fmt = ctx.fmt
    return [
        Table(
            "",
            "Reproduction: each cell beside its published value",
            ["Backbone", "Training set", "Loss", "Column", "Published", "This study", "Δ", "In"],
            [
                [
                    model_title(r.model),
                    SPLIT_TITLES.get(r.train_split, r.train_split),
                    loss_title(r.loss),
                    COLUMN_TITLES[r.column],
                    fmt(r.published),
                    fmt.interval(r.result, r.ci_low, r.ci_high),
                    fmt(r.difference, signed=True),
                    "yes" if r.within_interval else "no",
                ]
                for r in frame.itertuples()
            ],
            [
                _sentence(reproduction_summary(frame)),
                "In: the published value lies inside this cell's 95 % interval (one seed: "
                "Clopper-Pearson over its test images; several: over seeds and test images).",
            ],
            align="llllrrrl",
        )
    ]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def data_section(ctx: Context) -> list[Block]:
    """Table 3.2 (the splits), Table 3.3 (the backbones), Figures 3.3-3.4 (images per class)."""
    manifest, number = ctx.manifest, ctx.number
    blocks: list[Block] = []
    if manifest is not None:
        sizes = split_sizes_table(manifest)
        ctx.write_csv(sizes, "split_sizes.csv")
        blocks.append(
            Table(
                number("3.2"),
                f"The splits of {manifest['dataset']} (images, classes, images per class)",
                ["Split", "Images", "Classes", "Per class"],
                [[r.split, f"{r.images:,}", str(r.classes), _range(r)] for r in sizes.itertuples()],
            )
        )
    else:
        ctx.notes.append(
            "no prepare_data run of these results' data was found: Table 3.2 and Figures "
            "3.3/3.4 are left out, and the paired comparisons have no head/middle/tail columns"
        )
    num_classes = int(manifest["num_classes"]) if manifest else 100
    backbones = backbones_table(ctx.grid.models, num_classes)
    ctx.write_csv(backbones, "backbones.csv")
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
    if manifest is None:
        return blocks
    # a set long-tailed as given may have a balanced test set only: its class groups' set
    test_split = manifest.get("group_split", "test_lt")
    for num, split, what in (("3.3", "train_lt", "training"), ("3.4", test_split, "test")):
        stem = f"fig_{split}_class_counts"
        kind = "balanced" if split == "test_balanced" else "long-tailed"
        counts = lt_class_counts(manifest, split)
        ctx.files += plots.ranked_counts_figure(counts, ctx.output_dir / stem, f"{kind} {what}")
        blocks.append(
            Figure(
                number(num),
                f"Images per class of the {kind} {what} set, classes from most to least frequent",
                stem,
            )
        )
    lacking = [
        title
        for title, split in (("balanced", "test_balanced"), ("long-tailed", "test_lt"))
        if not manifest["splits"][split]["n"]
    ]
    if lacking:
        where = "; head/middle/tail are measured on its balanced test set"
        ctx.notes.append(
            f"{manifest['dataset']} has no {' or '.join(lacking)} test set: that column is "
            f"empty (—){where if test_split != 'test_lt' else ''}"
        )
    return blocks


def results_section(ctx: Context) -> list[Block]:
    """``runs.csv`` (every result), and Tables 4.1-4.8: per backbone and training set, one row
    per loss: the mean over seeds with its 95 % interval (one seed: the run's Clopper-Pearson
    interval; several: over seeds and test images, :mod:`ltexp.statistics`)."""
    fmt, every_result = ctx.fmt, ctx.every_result
    # the axes appear only when the grid has them: a thesis grid's runs.csv stays as it was
    axes = [a for a, plain in axis_params().items() if (every_result[a] != plain).any()]
    if (every_result["label"] != "").any():
        axes.append("label")
    runs_out = every_result[["run_id", *CELL_PARAMS, *axes, *COLUMNS]].rename(
        columns={**REPORT_COLUMNS, "label": "variant"}
    )
    ctx.write_csv(runs_out, "runs.csv")
    thesis_tables = [(m, s) for m in MODEL_ORDER for s in SPLIT_ORDER]
    blocks: list[Block] = []
    for model, split in itertools.product(ctx.grid.models, ctx.grid.train_splits):
        table = results_table(ctx.cells, model, split, ctx.grid.losses)
        ctx.write_csv(table, f"results_{model}_{split}.csv")
        several = "n_seeds" in table
        rows = []
        for _, row in table.iterrows():
            shown = [
                fmt.interval(row[c], row.get(f"{c}_ci_low"), row.get(f"{c}_ci_high"))
                if ctx.options.intervals
                else fmt.pm(row[c], row[f"{c}_seed_std"])
                if several and pd.notna(row["n_seeds"]) and row["n_seeds"] > 1
                else fmt(row[c])
                for c in COLUMNS
            ]
            rows.append([equal_label(row["loss"], ctx.same_as(row["loss"], split)), *shown])
        table_notes = [n for n in [_interval_note(table)] if n] if ctx.options.intervals else []
        if several and not ctx.options.intervals:
            n = table["n_seeds"].dropna()
            table_notes.append(
                f"Mean ± population std over seeds (n = {', '.join(map(str, sorted(set(n))))})."
            )
        table_notes += same_as_notes({ctx.same_as(loss, split) for loss in table["loss"]})
        key = (model, split)
        num = f"4.{thesis_tables.index(key) + 1}" if key in thesis_tables else ""
        blocks.append(
            Table(
                ctx.number(num),
                f"{model_title(model)} trained on the {SPLIT_TITLES.get(split, split)} set: "
                f"top-1 accuracy",
                ["Loss", *(COLUMN_TITLES[c] for c in COLUMNS)],
                rows,
                table_notes,
            )
        )
    return blocks


def _interval_note(table: pd.DataFrame) -> str:
    """What the intervals of a results table cover (one kind per cell, named by its seeds)."""
    kinds = set(table["interval"].dropna())
    seeds = table["n_seeds"].dropna() if "n_seeds" in table else pd.Series([1])
    parts = []
    if EXACT in kinds:
        parts.append(
            "cells of one seed: the 95 % Clopper-Pearson interval of the run's accuracy, over "
            "the test images of this one trained model (another seed would differ too: train "
            "seeds=1,2,3 to see by how much)"
        )
    if SEEDS_AND_IMAGES in kinds:
        n = ", ".join(map(str, sorted({int(v) for v in seeds if v > 1})))
        parts.append(
            f"cells of several seeds (n = {n}): the 95 % interval of the mean over seeds and "
            "test images (seeds × images variance components; an exact binomial interval at "
            "the effective number of images, never narrower than one model's; docs/protocol.md, "
            "Statistics)"
        )
    if SEEDS_ONLY in kinds:
        parts.append(
            "cells of several seeds without predictions: Student's t over the seeds' accuracies "
            "(the training noise only)"
        )
    return "In brackets, " + "; ".join(parts) + "." if parts else ""


def comparisons_section(ctx: Context) -> list[Block]:
    """Table 4.9 (beside published CIFAR-100 results; for a set long-tailed as given, the
    many/medium/few-shot tables instead), Tables 4.10-4.11 (summaries over the losses and over
    the backbones)."""
    fmt, number = ctx.fmt, ctx.number
    blocks: list[Block] = []
    manifest = ctx.manifest
    # the published results are CIFAR-100's: a set long-tailed as given is not compared to them
    given = manifest is not None and manifest.get("protocol", {}).get("mode") == "given"
    if given:
        blocks += _shot_tables(ctx)
    else:
        bench = benchmarks_table(ctx.cells, ctx.grid.models, ctx.references)
        ctx.write_csv(bench, "benchmarks.csv")
        # published results are CIFAR-100's, for the protocol's backbones: where none applies
        # (another dataset, only small models) the table is left out; benchmarks.csv stays
        applies = (manifest or {}).get("dataset", "cifar100") == "cifar100"
        if applies and bench["benchmark"].notna().any():
            blocks.append(
                Table(
                    number("4.9"),
                    "Best balanced-test top-1 over the losses (balanced training) beside a "
                    "published CIFAR-100 result",
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
    for frame, by, num, what in (
        (
            summary(ctx.cells, "model", MODEL_ORDER),
            "model",
            "4.10",
            "per backbone, over the losses",
        ),
        (summary(ctx.cells, "loss", LOSS_ORDER), "loss", "4.11", "per loss, over the backbones"),
    ):
        ctx.write_csv(frame.drop(columns="n"), f"summary_by_{by}.csv")
        if not _spread_has_information(ctx, by):
            continue
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
                ["Standard deviation: population (ddof = 0)."],
            )
        )
    return blocks


def _spread_has_information(ctx: Context, by: str) -> bool:
    """Whether a mean ± std ``by`` backbone (over the losses) or ``by`` loss (over the
    backbones) spreads over more than one value; said once when it does not."""
    other = ctx.grid.losses if by == "model" else ctx.grid.models
    if len(other) > 1:
        return True
    what, whats = ("loss", "losses") if by == "model" else ("backbone", "backbones")
    note = (
        f"the mean ± std per {'backbone' if by == 'model' else 'loss'} over the {whats} (Table "
        f"{'4.10' if by == 'model' else '4.11'} and its figure) is left out: the grid has one "
        f"{what}, so every spread would be ± 0"
    )
    if note not in ctx.notes:
        ctx.notes.append(note)
    return False


def figures_section(ctx: Context) -> list[Block]:
    """Figures 4.1-4.6: the summaries as error bars, one line chart per backbone."""
    number, out = ctx.number, ctx.output_dir
    by_model = summary(ctx.cells, "model", MODEL_ORDER)
    by_loss = summary(ctx.cells, "loss", LOSS_ORDER)
    blocks: list[Block] = []
    stem = "fig_summary_by_model"
    if _spread_has_information(ctx, "model"):
        ctx.files += plots.errorbar_figure(by_model, "model", model_title, out=out / stem)
        what = "mean ± std over the losses, long-tailed training"
        blocks.append(
            Figure(number("4.1"), f"{number('Table 4.10') or 'Per backbone'}: {what}", stem)
        )
    for model in ctx.grid.models:
        stem = f"fig_{model.replace(':', '_')}"
        ctx.files += plots.lines_figure(ctx.cells, model, ctx.grid.losses, out / stem)
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
    if _spread_has_information(ctx, "loss"):
        ctx.files += plots.errorbar_figure(by_loss, "loss", loss_title, out=out / stem)
        what = "mean ± std over the backbones, long-tailed training"
        blocks.append(Figure(number("4.6"), f"{number('Table 4.11') or 'Per loss'}: {what}", stem))
    return blocks


def tuned_section(ctx: Context) -> list[Block]:
    """The values each cell took from a search (``ltexp main --tuned``), if any did."""
    results = ctx.results
    if "tuned_params" in results and (results["tuned_params"].fillna("") != "").any():
        return [_tuned_table(results, ctx.number)]
    return []


def paired_softmax_section(ctx: Context) -> list[Block]:
    """Each loss minus the Softmax loss on the same test images (Tables 4.12-4.13, Figure
    4.7; beyond the thesis)."""
    if ctx.correctness is None:
        return []
    if BASELINE_LOSS not in ctx.grid.losses:
        ctx.notes.append("the grid has no Softmax loss (ce): no paired comparisons")
        return []
    paired = ctx.paired()
    unreadable = ctx.correctness.unreadable()
    if unreadable:
        ctx.notes.append(
            f"{unreadable} evaluate run(s) have no readable predictions artifact: their "
            f"paired comparisons and their cells' intervals over seeds are left out"
        )
    if not len(paired):
        return []
    ctx.write_csv(paired, "paired_vs_softmax.csv")
    stem = ctx.output_dir / "fig_paired_vs_softmax"
    ctx.files += plots.paired_figure(paired, ctx.grid, stem)
    return paired_softmax_blocks(paired, ctx.grid, ctx.fmt, ctx.number)


def axes_section(ctx: Context) -> list[Block]:
    """One loss × axis table per grid axis in use (``by_<axis>.csv``), the other axes plain."""
    blocks: list[Block] = []
    for axis in axis_params():
        if len(axis_values(ctx.every_result, axis)) < 2:
            continue
        table = axis_table(ctx.every_result, axis)
        ctx.write_csv(table, f"by_{axis}.csv")
        blocks.append(_axis_block(table, axis, ctx.fmt, ctx.number))
    return blocks


def variants_section(ctx: Context) -> list[Block]:
    """Every result the thesis tables do not hold (``variants.csv``), so that none is left
    out, and each one's paired difference from its thesis cell (``paired_vs_plain.csv``)."""
    others = ctx.every_result[~ctx.every_result["thesis"]]
    if not len(others):
        return []
    table = variants_table(others)
    ctx.write_csv(table, "variants.csv")
    blocks: list[Block] = [_variants_block(table, ctx.fmt, ctx.number)]
    if ctx.correctness is not None:
        paired = paired_vs_plain(ctx.every_result, ctx.correctness)
        if len(paired):
            ctx.write_csv(paired, "paired_vs_plain.csv")
            blocks.append(paired_plain_block(paired, ctx.fmt, ctx.number))
    return blocks


def calibration_section(ctx: Context) -> list[Block]:
    """Expected calibration error per loss (``calibration.csv``; Zhong et al. 2021 report it
    for long-tailed recognition) and a reliability diagram per backbone, long-tailed training,
    on the balanced test set (beyond the thesis)."""
    columns = [c for c in COLUMNS if ctx.results[f"{c}_ece"].notna().any()]
    if not columns:
        return []
    keys = ["model", "train_split", "loss"]
    table = ctx.results.groupby(keys, sort=False)[[f"{c}_ece" for c in columns]].mean()
    table = table.reset_index()
    order = {
        "model": ordered(set(table["model"]), MODEL_ORDER),
        "train_split": ordered(set(table["train_split"]), SPLIT_ORDER),
        "loss": ordered(set(table["loss"]), LOSS_ORDER),
    }
    rank = {k: {v: i for i, v in enumerate(vs)} for k, vs in order.items()}
    table = table.sort_values(keys, key=lambda col: col.map(rank[col.name]), ignore_index=True)
    ctx.write_csv(table, "calibration.csv")
    blocks: list[Block] = [
        Table(
            ctx.number(""),
            "Expected calibration error of each loss (beyond the thesis)",
            ["Backbone", "Training set", "Loss", *(COLUMN_TITLES[c] for c in columns)],
            [
                [
                    model_title(r["model"]),
                    SPLIT_TITLES.get(r["train_split"], r["train_split"]),
                    loss_title(r["loss"]),
                    *(DASH if pd.isna(r[f"{c}_ece"]) else f"{r[f'{c}_ece']:.4f}" for c in columns),
                ]
                for _, r in table.iterrows()
            ],
            [
                f"|accuracy − confidence| over {CALIBRATION_BINS} equal-width confidence bins, "
                f"weighted by the bins' images (Guo et al. 2017); 0 is perfectly calibrated. "
                f"Mean over seeds. Evaluations with temperature_scaling are left out."
            ],
            align="lll" + "r" * len(columns),
        )
    ]
    if ctx.predictions is None:
        return blocks
    for model in ctx.grid.models:
        curves = {}
        for loss in ctx.grid.losses:
            rows = ctx.results[
                (ctx.results["model"] == model)
                & (ctx.results["train_split"] == "lt")
                & (ctx.results["loss"] == loss)
            ]
            pred = ctx.predictions(rows["run_id"].iloc[0]) if len(rows) else None
            if pred is None or "test_balanced_logits" not in pred:
                continue
            logits, labels = pred["test_balanced_logits"], pred["test_balanced_labels"]
            if not len(labels):
                continue
            correct = logits.argmax(1) == labels
            curves[loss_title(loss)] = reliability(softmax_confidence(logits), correct)
        if curves:
            stem = f"fig_reliability_{model.replace(':', '_')}"
            title = f"{model_title(model)}, long-tailed training: balanced test set"
            ctx.files += plots.reliability_figure(curves, title, ctx.output_dir / stem)
            blocks.append(
                Figure(
                    ctx.number(""),
                    f"Reliability of each loss, {model_title(model)}, long-tailed training, "
                    f"on the balanced test set (one seed)",
                    stem,
                )
            )
    return blocks


def ensembles_section(ctx: Context) -> list[Block]:
    """Each ensemble beside its best member (``ensembles.csv``): the member with the best
    validation top-1, chosen as a user would choose without the ensemble (never by test)."""
    if not len(ctx.ensembles):
        return []
    every = ctx.every_result
    if "train_run_id" not in every:
        every = every.assign(train_run_id="")
    members_of = every.set_index("train_run_id", drop=False)
    latest = ctx.ensembles.sort_values("end_time").drop_duplicates("ensemble", keep="last")
    columns = [c for c in ENSEMBLE_COLUMNS if c in latest]
    rows = []
    for e in latest.to_dict("records"):
        listed = str(e["members"]).split(",")
        ids = [i for i in listed if i in members_of.index]
        best = members_of.loc[ids].sort_values("best_val_acc1", ascending=False).head(1)
        row = {
            "ensemble": e["ensemble"],
            "combine": e["combine"],
            "members": len(listed),
            "members_reported": len(ids),
            "train_split": e["train_split"],
            "best_member": best["label"].iloc[0] if len(best) and "label" in best else "",
            **{c: e[c] for c in columns},
        }
        for c in ("balanced", "long_tailed"):
            member_value = best[c].iloc[0] if len(best) else float("nan")
            row[f"best_member_{c}"] = member_value
            row[f"delta_{c}"] = e[c] - member_value
        rows.append(row)
    table = pd.DataFrame(rows)
    ctx.write_csv(table, "ensembles.csv")
    fmt = ctx.fmt
    titles = [ENSEMBLE_COLUMNS[c] for c in columns]
    return [
        Table(
            "",
            "Ensembles of registered models beside their best member (beyond the thesis)",
            ["Ensemble", *titles, "Δ balanced", "Δ long-tailed"],
            [
                [
                    str(r["ensemble"]),
                    *(fmt(r[c]) for c in columns),
                    fmt(r["delta_balanced"], signed=True),
                    fmt(r["delta_long_tailed"], signed=True),
                ]
                for r in rows
            ],
            notes=[
                "Top-1 of each ensemble on the test sets; Δ: the ensemble minus its best member, "
                "the member with the best validation top-1 (ensembles.csv names it and has every "
                "column). An ensemble averages its members' logits (combine=probs: their "
                "probabilities)."
            ],
        )
    ]


# the ensembles table's columns (the report's result columns), and their titles
ENSEMBLE_COLUMNS = {
    "balanced": "Balanced",
    "long_tailed": "Long-tailed",
    "head": "Head",
    "middle": "Middle",
    "tail": "Tail",
}


SECTIONS: tuple[Callable[[Context], list[Block]], ...] = (
    claims_section,
    summary_section,
    reproduction_section,
    data_section,
    results_section,
    comparisons_section,
    figures_section,
    tuned_section,
    calibration_section,
    paired_softmax_section,
    axes_section,
    variants_section,
    ensembles_section,
)


def _shot_tables(ctx: Context) -> list[Table]:
    """Many/medium/few-shot top-1 per loss (the ImageNet-LT papers' columns), mean over seeds:
    the table a set long-tailed as given is compared by (``shot_groups.csv``)."""
    results, manifest, fmt = ctx.results, ctx.manifest, ctx.fmt
    shots = [g for g in SHOT_COLUMNS if g in results and results[g].notna().any()]
    if not shots:
        return []
    frame = results.copy()
    frame[shots] = frame[shots].apply(pd.to_numeric, errors="coerce")
    means = frame.groupby(["model", "train_split", "loss"], sort=False)[shots].mean()
    means = means.reset_index()
    ctx.write_csv(means, "shot_groups.csv")
    sizes = {g: len(manifest["groups"].get(g, [])) for g in shots}
    # the literature's measure: the balanced test set, where the set has one
    has_balanced = manifest["splits"].get("test_balanced", {}).get("n", 0) > 0
    measured_on = "balanced" if has_balanced else "long-tailed"
    blocks = []
    for model, split in itertools.product(ctx.grid.models, ctx.grid.train_splits):
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


def _axis_block(table: pd.DataFrame, axis: str, fmt: Fmt, number: Callable[[str], str]) -> Table:
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


def _variants_block(table: pd.DataFrame, fmt: Fmt, number: Callable[[str], str]) -> Table:
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


def _range(row: Any) -> str:
    low, high = row.per_class_min, row.per_class_max
    return str(low) if low == high else f"{low}–{high}"


def _tail_note(tail_n: int | None, fmt: Fmt) -> list[str]:
    if not tail_n:
        return []
    return [
        f"The tail column is measured on {tail_n} test images: one image moves it by "
        f"{fmt(1 / tail_n)}."
    ]


def _tuned_table(results: pd.DataFrame, number: Callable[[str], str]) -> Table:
    """Which hyper-parameters each cell used, when ``ltexp main --tuned`` took them from a
    search (``ltexp tune``)."""
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


def _same_loss(
    manifest: dict[str, Any], results: pd.DataFrame, loss: str, split: str, other: str
) -> bool:

    info = manifest["splits"].get(TRAINING_SETS.get(split, ""))
    if loss not in LOSSES or not info or not all(info["per_class"]):
        return False
    rows = results[(results["loss"] == loss) & (results["train_split"] == split)]
    identity = rows["identity"].iloc[0] if len(rows) else {}
    values = {
        hp.name: identity[loss_key(loss, hp.name)]
        for hp in LOSSES[loss].hparams
        if loss_key(loss, hp.name) in identity
    }
    if identity.get("drw_epoch") is not None:
        values.update(
            drw_epoch=identity["drw_epoch"],
            drw_beta=identity.get("drw_beta", 0.9999),
            drw_reduction=identity.get("drw_reduction", "weights"),
        )
    return same_as_loss(loss, other, info["per_class"], **values)
