"""The report's data model: what it is built from, what it is made of (tables and figures, in
order), how its numbers are printed. The builders (:mod:`ltexp.report.sections`) fill it, the
renderers (:mod:`ltexp.report.render`) write it as Markdown and LaTeX."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ltexp.report.tables import CI_SUFFIXES, COLUMNS, with_axes
from ltexp.schema import CELL_PARAMS

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
        intervals: each single-seed cell of Tables 4.1-4.8 with its 95 % Clopper-Pearson interval in
            report.md.
        references: a CSV of published results: Table 4.9's references
            (``model,benchmark,benchmark_source``) or a paper's per-cell results
            (:mod:`ltexp.report.published`); default: the thesis's, shipped with ltexp.
        claims: the claims files to check (:mod:`ltexp.report.claims`; ``thesis`` is the shipped
            one); default: the thesis's for a CIFAR-100 protocol study, none otherwise.
        variant: the variant of each cell the thesis tables hold (default: the plain one;
            :mod:`ltexp.report.variants`).
        experiment: the experiment reported, named in the report's title.
    """

    percent: bool = False
    intervals: bool = True
    references: str = ""
    claims: str = ""
    experiment: str = ""  # the experiment reported, for the title
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
    claims: list[Any] = field(default_factory=list)  # ltexp.report.claims.Verdict, in order


@dataclass
class Table:
    """A table of the report: a numbered caption, a header, rows of rendered cells, notes."""

    number: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    align: str = ""  # l/r/p per column (p: a paragraph that wraps; default: l then r)

    def alignment(self) -> str:
        return self.align or "l" + "r" * (len(self.header) - 1)


@dataclass
class Figure:
    """A figure of the report (PNG for Markdown, PDF for LaTeX)."""

    number: str
    caption: str
    stem: str


Block = Table | Figure


def results_frame(records: list[dict]) -> pd.DataFrame:
    """Frame of evaluate results: run_id, end_time, the cell params, the five columns, their
    interval bounds and calibration errors (NaN where not logged)."""
    frame = pd.DataFrame.from_records(records)
    bounds = [f"{c}{s}" for c in COLUMNS for s in (*CI_SUFFIXES, "_ece")]
    for col in ("run_id", "end_time", *CELL_PARAMS, *COLUMNS, *bounds):
        if col not in frame:
            frame[col] = np.nan
    frame = with_axes(frame)
    for col in (*COLUMNS, *bounds):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame["seed"] = frame["seed"].astype(str)
    return frame


class Fmt:
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
