"""Published results as data, and how this study's cells reproduce them.

A published table is a CSV with one row per cell and its five columns (fractions)::

    table,model,loss,train_split,balanced,long_tailed,head,middle,tail,source
    4.2,resnet50,bs,lt,0.5120,0.6010,0.7000,0.4100,0.2000,"thesis, Table 4.2"

Lines starting with ``#`` are comments; an empty value is a number the paper does not give.
``published_results.csv`` ships with ltexp for the thesis's Tables 4.1-4.8; ``references=<csv>``
replaces it with another paper's (a CSV with ``model,benchmark,benchmark_source`` replaces
Table 4.9's references instead, as before). The reproduction table sets each cell's result beside
the published value and says whether the published value lies inside the cell's 95 % interval
(one seed: Clopper-Pearson; several: over seeds and test images, :mod:`ltexp.statistics`).
"""

from __future__ import annotations

import csv
import io
import math
from importlib import resources

import pandas as pd

from ltexp.report.tables import COLUMNS, reference_results
from ltexp.textfiles import read_small_text

PUBLISHED_FILE = "published_results.csv"
PUBLISHED_COLUMNS = ("table", "model", "loss", "train_split", *COLUMNS, "source")
# reproduction.csv's columns (a contract: other tools read them)
REPRODUCTION_COLUMNS = (
    "model",
    "loss",
    "train_split",
    "column",
    "published",
    "result",
    "difference",
    "ci_low",
    "ci_high",
    "within_interval",
)


def _rows(text: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and ``(line, row)`` of a CSV whose ``#`` lines are comments."""
    lines = text.splitlines()
    kept = [(n, line) for n, line in enumerate(lines, start=1) if not line.lstrip().startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(line for _, line in kept)))
    header = [h.strip() for h in reader.fieldnames or []]
    rows = []
    for index, row in enumerate(reader, start=1):
        line = kept[index][0] if index < len(kept) else len(lines)
        rows.append((line, {(k or "").strip(): (v or "").strip() for k, v in row.items()}))
    return header, rows


def _fraction(text: str) -> float | None:
    """A published value: a fraction in [0, 1], NaN for an empty cell, None when malformed."""
    if text == "":
        return float("nan")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None


def parse_published(text: str, name: str) -> tuple[pd.DataFrame, list[str]]:
    """Published per-cell results from a CSV's text, and one line per row left out."""
    header, rows = _rows(text)
    missing = [c for c in PUBLISHED_COLUMNS if c not in header and c != "table"]
    if missing:
        return empty_published(), [
            f"published results {name!r} need the columns {','.join(PUBLISHED_COLUMNS)} "
            f"(missing: {', '.join(missing)}); no reproduction table"
        ]
    out, problems = [], []
    for line, row in rows:
        values = {c: _fraction(row.get(c, "")) for c in COLUMNS}
        keys = [row.get(k, "") for k in ("model", "loss", "train_split")]
        bad = [c for c, v in values.items() if v is None]
        if not all(keys) or bad:
            problems.append(
                f"published results {name!r} line {line} is malformed (a model, a loss, a "
                f"training set and fractions in [0, 1] are needed"
                + (f"; not fractions: {', '.join(bad)}" if bad else "")
                + "); it is left out"
            )
            continue
        out.append({**row, **values, "table": row.get("table", "")})
    frame = pd.DataFrame(out, columns=list(PUBLISHED_COLUMNS))
    return frame.drop_duplicates(["model", "loss", "train_split"], keep="last"), problems


def empty_published() -> pd.DataFrame:
    return pd.DataFrame(columns=list(PUBLISHED_COLUMNS))


def shipped_published() -> pd.DataFrame:
    """The thesis's published results shipped with ltexp (:data:`PUBLISHED_FILE`)."""
    text = resources.files("ltexp.report").joinpath(PUBLISHED_FILE).read_text()
    return parse_published(text, PUBLISHED_FILE)[0]


def read_references(path: str) -> tuple[pd.DataFrame, pd.DataFrame, bool, list[str]]:
    """Table 4.9's references and the published per-cell results, from ``references=<path>``
    (either kind, told apart by its columns) and what ships with ltexp.

    Returns:
        ``(benchmarks, published, published_given, problems)``: ``published_given`` is true
        when the published results are the user's.
    """
    if not path:
        benchmarks, problems = reference_results(None)
        return benchmarks, shipped_published(), False, problems
    text = read_small_text(path, "references file")
    header, _ = _rows(text)
    if "loss" in header or "train_split" in header:
        published, problems = parse_published(text, str(path))
        benchmarks, more = reference_results(None)
        return benchmarks, published, True, [*problems, *more]
    benchmarks, problems = reference_results(path, text)
    return benchmarks, shipped_published(), False, problems


def reproduction_frame(cells: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """One row per cell and column with a published value: this study's result (the mean over
    seeds), the difference, the cell's 95 % interval and whether the published value is in it."""
    rows = []
    index = cells.set_index(["model", "loss", "train_split"])
    for _, pub in published.iterrows():
        key = (pub["model"], pub["loss"], pub["train_split"])
        if key not in index.index:
            continue
        cell = index.loc[key]
        for column in COLUMNS:
            value, result = pub[column], cell[column]
            if pd.isna(value) or pd.isna(result):
                continue
            low, high = cell.get(f"{column}_ci_low"), cell.get(f"{column}_ci_high")
            within = bool(pd.notna(low) and pd.notna(high) and low <= value <= high)
            rows.append(
                dict(
                    zip(
                        REPRODUCTION_COLUMNS,
                        (*key, column, value, result, result - value, low, high, within),
                        strict=True,
                    )
                )
            )
    return pd.DataFrame(rows, columns=list(REPRODUCTION_COLUMNS))


def reproduction_summary(frame: pd.DataFrame, largest: int = 3) -> str:
    """``41 of 56 published results lie within this study's interval …; the largest gaps: …``."""
    if not len(frame):
        return "no cell of this study has a published value"
    within = int(frame["within_interval"].sum())
    cells = frame.groupby(["model", "loss", "train_split"])["within_interval"].all()
    gaps = frame.reindex(frame["difference"].abs().sort_values(ascending=False).index)
    shown = [
        f"{r.model}/{r.loss}/{r.train_split} {r.column} {r.difference:+.4f}"
        for r in gaps.head(largest).itertuples()
        if not math.isnan(r.difference)
    ]
    return (
        f"{within} of {len(frame)} published results lie within this study's 95 % interval "
        f"({int(cells.sum())} of {len(cells)} cells with every column within); the largest "
        f"gaps: {', '.join(shown)}"
    )
