"""Write the report: CSV tables, ``report.md``, ``report.tex`` and the figures."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ltexp.report.tables import (
    COLUMN_TITLES,
    COLUMNS,
    LOSS_ORDER,
    MODEL_ORDER,
    SPLIT_ORDER,
    SPLIT_TITLES,
    benchmarks_table,
    cell_means,
    loss_title,
    model_title,
    ordered,
    results_table,
    select_latest,
    summary,
)
from ltexp.tracking.schema import CELL_PARAMS, REPORT_COLUMNS

log = logging.getLogger(__name__)
DASH = "—"


@dataclass
class Grid:
    """The cells a report expects (missing ones are reported)."""

    models: list[str]
    losses: list[str]
    train_splits: list[str]
    seeds: list[str] = field(default_factory=list)


@dataclass
class Report:
    """What was written, and what the reader must know."""

    output_dir: Path
    files: list[Path]
    missing: list[str]
    duplicates: list[str]
    n_runs: int


def results_frame(records: list[dict]) -> pd.DataFrame:
    """Frame of evaluate results: run_id, end_time, the cell params, the five columns."""
    frame = pd.DataFrame.from_records(records)
    for col in ("run_id", "end_time", *CELL_PARAMS, *COLUMNS):
        if col not in frame:
            frame[col] = np.nan
    for col in COLUMNS:
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame


def build_report(frame: pd.DataFrame, output_dir: Path, grid: Grid | None = None) -> Report:
    """Write every table and figure of the report for ``frame`` into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    selection = select_latest(frame)
    results = selection.results
    if grid is None:
        grid = Grid(
            ordered(results["model"].unique().tolist(), MODEL_ORDER),
            ordered(results["loss"].unique().tolist(), LOSS_ORDER),
            ordered(results["train_split"].unique().tolist(), SPLIT_ORDER),
            sorted(results["seed"].astype(str).unique().tolist()),
        )
    missing = _missing_cells(results, grid)
    for line in missing:
        log.warning("missing result: %s", line)
    for line in selection.duplicates:
        log.warning("duplicate results: %s", line)
    cells = cell_means(results)
    files: list[Path] = []

    def write_csv(df: pd.DataFrame, name: str) -> None:
        path = output_dir / name
        df.to_csv(path, index=False, float_format="%.6f")
        files.append(path)

    runs_out = results[["run_id", *CELL_PARAMS, *COLUMNS]].rename(columns=REPORT_COLUMNS)
    write_csv(runs_out, "runs.csv")
    tables: dict[tuple[str, str], pd.DataFrame] = {}
    for model, split in itertools.product(grid.models, grid.train_splits):
        tables[(model, split)] = results_table(cells, model, split, grid.losses)
        write_csv(tables[(model, split)], f"results_{model}_{split}.csv")
    bench = benchmarks_table(cells, grid.models)
    write_csv(bench, "benchmarks.csv")
    by_model = summary(cells, "model", MODEL_ORDER)
    by_loss = summary(cells, "loss", LOSS_ORDER)
    write_csv(by_model.drop(columns="n"), "summary_by_model.csv")
    write_csv(by_loss.drop(columns="n"), "summary_by_loss.csv")

    numbered = _is_full_spec_grid(grid, cells)
    files += _write_markdown(
        output_dir,
        tables,
        bench,
        by_model,
        by_loss,
        numbered,
        missing,
        selection.duplicates,
        len(results),
    )
    files += _write_latex(output_dir, tables, bench, by_model, by_loss, numbered)
    files += _figures(output_dir, cells, by_model, by_loss, grid)
    return Report(output_dir, files, missing, selection.duplicates, len(results))


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


def _is_full_spec_grid(grid: Grid, cells: pd.DataFrame) -> bool:
    if set(grid.models) != set(MODEL_ORDER) or set(grid.losses) != set(LOSS_ORDER):
        return False
    want = set(itertools.product(MODEL_ORDER, LOSS_ORDER, SPLIT_ORDER))
    have = set(zip(cells["model"], cells["loss"], cells["train_split"], strict=True))
    return want <= have


def _fmt(value: float) -> str:
    return DASH if value is None or pd.isna(value) else f"{value:.4f}"


def _pm(mean: float, std: float) -> str:
    return DASH if pd.isna(mean) else f"{mean:.4f} ± {std:.4f}"


def _captions(tables: dict, numbered: bool) -> dict[tuple[str, str], str]:
    out = {}
    order = [(m, s) for m in MODEL_ORDER for s in SPLIT_ORDER]
    for key in tables:
        model, split = key
        text = f"{model_title(model)} trained on the {SPLIT_TITLES.get(split, split)} set: top-1"
        if numbered and key in order:
            text = f"Table 4.{order.index(key) + 1}: {text}"
        out[key] = text
    return out


def _write_markdown(
    out: Path,
    tables: dict,
    bench: pd.DataFrame,
    by_model: pd.DataFrame,
    by_loss: pd.DataFrame,
    numbered: bool,
    missing: list[str],
    duplicates: list[str],
    n_runs: int,
) -> list[Path]:
    lines = ["# Results", "", f"Top-1 accuracy as a fraction, from {n_runs} evaluate runs.", ""]
    if missing:
        lines += [f"**Missing cells ({len(missing)}), shown as {DASH}:** " + ", ".join(missing), ""]
    if duplicates:
        lines += [
            "**Duplicate runs (the latest finished one is used):** " + "; ".join(duplicates),
            "",
        ]
    header = "| Loss | " + " | ".join(COLUMN_TITLES[c] for c in COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    captions = _captions(tables, numbered)
    for key, table in tables.items():
        lines += [f"### {captions[key]}", "", header, rule]
        with_std = "n_seeds" in table
        for _, row in table.iterrows():
            cells = [
                _pm(row[c], row[f"{c}_seed_std"]) if with_std else _fmt(row[c]) for c in COLUMNS
            ]
            lines.append(f"| {loss_title(row['loss'])} | " + " | ".join(cells) + " |")
        if with_std:
            lines.append("")
            lines.append("Mean ± population std over seeds.")
        lines.append("")
    t9 = "Table 4.9: " if numbered else ""
    lines += [
        f"### {t9}Best balanced-test top-1 (balanced training) vs. published",
        "",
        "| Backbone | This study | Published | Source |",
        "|---|---:|---:|---|",
    ]
    for _, row in bench.iterrows():
        lines.append(
            f"| {model_title(row['model'])} | {_fmt(row['result'])} | "
            f"{_fmt(row['benchmark'])} | {row['benchmark_source']} |"
        )
    lines.append("")
    for frame, by, title, num in (
        (by_model, "model", "per backbone, over the losses", "4.10"),
        (by_loss, "loss", "per loss, over the backbones", "4.11"),
    ):
        name = model_title if by == "model" else loss_title
        prefix = f"Table {num}: " if numbered else ""
        lines += [
            f"### {prefix}Long-tailed training, mean ± std {title}",
            "",
            f"| {'Backbone' if by == 'model' else 'Loss'} | "
            + " | ".join(COLUMN_TITLES[c] for c in COLUMNS)
            + " |",
            rule,
        ]
        for _, row in frame.iterrows():
            lines.append(
                f"| {name(row[by])} | "
                + " | ".join(_pm(row[f"{c}_mean"], row[f"{c}_std"]) for c in COLUMNS)
                + " |"
            )
        lines += ["", "Standard deviation: population (ddof = 0).", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return [path]


def _tex_escape(text: str) -> str:
    return text.replace("&", r"\&").replace("%", r"\%").replace("_", r"\_").replace("#", r"\#")


def _write_latex(
    out: Path,
    tables: dict,
    bench: pd.DataFrame,
    by_model: pd.DataFrame,
    by_loss: pd.DataFrame,
    numbered: bool,
) -> list[Path]:
    def tex_pm(mean: float, std: float) -> str:
        return "--" if pd.isna(mean) else f"{mean:.4f} $\\pm$ {std:.4f}"

    def tex(value: float) -> str:
        return "--" if pd.isna(value) else f"{value:.4f}"

    head = " & ".join(COLUMN_TITLES[c] for c in COLUMNS)
    parts = ["% Generated by ltexp aggregate. Needs \\usepackage{booktabs}.", ""]
    captions = _captions(tables, numbered)

    def table(caption: str, first: str, rows: list[str], cols: int = len(COLUMNS)) -> None:
        parts.extend(
            [
                "\\begin{table}[t]",
                "\\centering",
                f"\\caption{{{_tex_escape(caption)}}}",
                f"\\begin{{tabular}}{{l{'r' * cols}}}",
                "\\toprule",
                f"{first} & {head} \\\\",
                "\\midrule",
                *rows,
                "\\bottomrule",
                "\\end{tabular}",
                "\\end{table}",
                "",
            ]
        )

    for key, t in tables.items():
        with_std = "n_seeds" in t
        rows = [
            f"{_tex_escape(loss_title(r['loss']))} & "
            + " & ".join(
                tex_pm(r[c], r[f"{c}_seed_std"]) if with_std else tex(r[c]) for c in COLUMNS
            )
            + " \\\\"
            for _, r in t.iterrows()
        ]
        table(captions[key].split(": ", 1)[-1], "Loss", rows)
    bench_rows = [
        f"{_tex_escape(model_title(r['model']))} & {tex(r['result'])} & {tex(r['benchmark'])} \\\\"
        for _, r in bench.iterrows()
    ]
    parts.extend(
        [
            "\\begin{table}[t]",
            "\\centering",
            "\\caption{Best balanced-test top-1 (balanced training) vs. published}",
            "\\begin{tabular}{lrr}",
            "\\toprule",
            "Backbone & This study & Published \\\\",
            "\\midrule",
            *bench_rows,
            "\\bottomrule",
            "\\end{tabular}",
            "\\end{table}",
            "",
        ]
    )
    for frame, by in ((by_model, "model"), (by_loss, "loss")):
        name = model_title if by == "model" else loss_title
        rows = [
            f"{_tex_escape(name(r[by]))} & "
            + " & ".join(tex_pm(r[f"{c}_mean"], r[f"{c}_std"]) for c in COLUMNS)
            + " \\\\"
            for _, r in frame.iterrows()
        ]
        table(
            f"Long-tailed training: mean $\\pm$ population std per {by}",
            "Backbone" if by == "model" else "Loss",
            rows,
        )
    path = out / "report.tex"
    path.write_text("\n".join(parts))
    return [path]


def _errorbar_figure(frame: pd.DataFrame, by: str, name, title: str, stem: Path) -> list[Path]:
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
    _style(ax, x, title)
    return _save(fig, stem)


def _style(ax, x: np.ndarray, title: str) -> None:
    ax.set_xticks(x)
    ax.set_xticklabels([COLUMN_TITLES[c] for c in COLUMNS])
    ax.set_ylabel("top-1 accuracy")
    ax.set_ylim(0, 1)
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


def _figures(
    out: Path, cells: pd.DataFrame, by_model: pd.DataFrame, by_loss: pd.DataFrame, grid: Grid
) -> list[Path]:
    files = _errorbar_figure(
        by_model,
        "model",
        model_title,
        "Long-tailed training: mean ± std over losses",
        out / "fig_summary_by_model",
    )
    files += _errorbar_figure(
        by_loss,
        "loss",
        loss_title,
        "Long-tailed training: mean ± std over backbones",
        out / "fig_summary_by_loss",
    )
    x = np.arange(len(COLUMNS))
    for model in grid.models:
        fig, ax = plt.subplots(figsize=(7, 4))
        part = cells[(cells["model"] == model) & (cells["train_split"] == "lt")]
        for loss in grid.losses:
            row = part[part["loss"] == loss]
            if len(row):
                ax.plot(x, [row.iloc[0][c] for c in COLUMNS], marker="o", label=loss_title(loss))
        _style(ax, x, f"{model_title(model)}, long-tailed training")
        files += _save(fig, out / f"fig_{model.replace(':', '_')}")
    return files
