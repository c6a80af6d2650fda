"""Write the report: CSV tables, figures, and ``report.md`` / ``report.tex`` (and the body to
include in a thesis, ``report_body.tex``) that show them all.

The report is a list of blocks (:mod:`ltexp.report.model`) that the section builders
(:mod:`ltexp.report.sections`) produce in the thesis's order, from the results of one variant of
each cell (:mod:`ltexp.report.variants`); Markdown and LaTeX are two renderings of the same blocks
(:mod:`ltexp.report.render`), so they cannot disagree. Numbers are fractions in the CSVs and, by
default, in the text; ``percent`` prints percentages with two decimals, as the thesis text does.
"""

from __future__ import annotations

import datetime
import itertools
import logging
from importlib.metadata import version
from pathlib import Path

import pandas as pd

from ltexp.cells import code_version
from ltexp.report.correctness import Correctness, with_seed_intervals
from ltexp.report.model import (
    Block,
    Fmt,
    Grid,
    Report,
    ReportInputs,
    ReportOptions,
    results_frame,
)
from ltexp.report.published import read_references
from ltexp.report.render import write_html, write_latex, write_markdown
from ltexp.report.sections import SECTIONS, Context
from ltexp.report.tables import (
    LOSS_ORDER,
    MODEL_ORDER,
    SPLIT_ORDER,
    cell_means,
    ordered,
    select_latest,
)
from ltexp.report.variants import choose

__all__ = ["Grid", "Report", "ReportInputs", "ReportOptions", "build_report", "results_frame"]
log = logging.getLogger(__name__)


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
    # ensembles are results of their own (a table of them beside their members), never a cell
    frame = inputs.results
    is_ensemble = (
        frame["ensemble"].notna() if "ensemble" in frame else pd.Series(False, index=frame.index)
    )
    ensembles = frame[is_ensemble].reset_index(drop=True)
    selection = select_latest(frame[~is_ensemble].reset_index(drop=True))
    # the thesis's tables hold one variant of each cell; every other result is in tables of its
    # own, labelled with what differs
    choice = choose(selection.results, grid.cell_keys if grid else None, options.variant)
    results = choice.thesis
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
    references, published, published_given, problems = read_references(options.references)
    correctness = Correctness(inputs.predictions, inputs.manifest) if inputs.predictions else None
    if correctness is not None:  # every result the report compares, read concurrently once
        correctness.prefetch(choice.results["run_id"])
    cells = with_seed_intervals(cell_means(results), results, correctness)
    ctx = Context(
        output_dir,
        Fmt(options.percent),
        grid,
        options,
        inputs.manifest,
        inputs.predictions,
        correctness,
        results,
        choice.results,
        cells,
        references,
        published,
        published_given,
        numbered=_is_full_thesis_grid(grid, cells),
        notes=[*_rehearsal(inputs.manifest), *inputs.notes, *choice.notes, *problems],
        ensembles=ensembles,
    )
    blocks: list[Block] = [block for section in SECTIONS for block in section(ctx)]
    n_runs = len(choice.results)
    files = ctx.files
    title = f"Results of {options.experiment}" if options.experiment else "Results"
    byline = (
        f"Built {datetime.date.today().isoformat()} by ltexp {version('ltexp')} (code "
        f"{code_version()}) from {n_runs} evaluate runs; {ctx.fmt.unit}."
    )
    files += write_markdown(
        output_dir, blocks, ctx.fmt, ctx.notes, missing, selection.duplicates, title, byline
    )
    files += write_latex(output_dir, blocks, ctx.fmt, ctx.notes, missing, title, byline)
    files += write_html(
        output_dir, blocks, ctx.fmt, ctx.notes, missing, selection.duplicates, title, byline
    )
    return Report(output_dir, files, missing, selection.duplicates, n_runs, ctx.notes, ctx.verdicts)


def _rehearsal(manifest: dict | None) -> list[str]:
    """The report's first line when its data were cut for a rehearsal (``max_per_class``)."""
    n = ((manifest or {}).get("protocol") or {}).get("max_per_class") or 0
    if not n:
        return []
    return [
        f"a rehearsal: every split holds at most {n} images per class (max_per_class={n}), so "
        f"these numbers say that the pipeline runs, not what the protocol measures"
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
