"""Which results are which cell: every result keeps its identity, and the thesis tables hold one
variant of each cell, named.

Each evaluate result carries the identity of the model it tested (``ltexp.identity`` on its train
or decouple run; :mod:`ltexp.cells`). Results with the same identity are one result (the latest is
kept, the others named in a note); results whose identities differ are never merged: they are
different rows, labelled with what differs. The label of a result is its :func:`ltexp.cells.variant`
(the axes off their plain value, ``tuned``, the method options off their default: ``crt``,
``head=cosine``, ``focal_gamma=1``), then every other option in which it differs from the thesis
tables' runs (``epochs=30``).

The thesis tables (4.1-4.11) hold, per (model, loss, training set), the runs of one cell with
every axis plain: the cells a study ran (when the study builds the report), else the variant asked
for (``variant=…``), else the plain one, taken with the most common settings. Every other result
is listed in a table of its own (``variants.csv``), so no result is dropped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ltexp import cells
from ltexp.config import axes, variant_axes
from ltexp.schema import CELL_PARAMS

POSITION = ["model", "loss", "train_split"]  # a row of Tables 4.1-4.8
# identity entries that say what kind of run it was, not what it trained
_NOT_SETTINGS = (cells.KIND, cells.TRIAL, cells.TUNED, "seed")


def with_identities(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``identity`` (a mapping per row), ``cell_key``, ``result_key`` and
    ``variant``; a result logged without an identity (another tool) is known by its params."""
    out = frame.copy()
    if "identity" not in out:
        out["identity"] = None
    known = {a.key: a.plain for a in axes()}
    idents = []
    for row in out.to_dict("records"):
        ident = row.get("identity")
        if not isinstance(ident, Mapping):
            ident = {k: row[k] for k in [*CELL_PARAMS, *known] if k in row and pd.notna(row[k])}
            ident.pop("dataset", None)
        else:
            ident = dict(ident)
        # an axis off its plain value that the identity lacks (it predates the axis) is named
        for k, plain in known.items():
            if k not in ident and k in row and pd.notna(row[k]) and row[k] != plain:
                ident[k] = row[k]
        ident["seed"] = str(ident.get("seed", row.get("seed", "")))
        idents.append(ident)
    out["identity"] = idents
    dataset = out["dataset"].astype(str) if "dataset" in out else ""
    out["cell_key"] = [cells.cell_key(i) for i in idents]
    out["cell_key"] = dataset + "/" + out["cell_key"]
    out["result_key"] = out["cell_key"] + "/" + out["seed"].astype(str)
    out["variant"] = [cells.variant(i) for i in idents]
    return out


@dataclass
class Choice:
    """The results split into the thesis tables' rows and the others, every one labelled."""

    results: pd.DataFrame  # every result, with ``label`` and ``thesis``
    notes: list[str] = field(default_factory=list)

    @property
    def thesis(self) -> pd.DataFrame:
        return self.results[self.results["thesis"]].reset_index(drop=True)

    @property
    def others(self) -> pd.DataFrame:
        return self.results[~self.results["thesis"]].reset_index(drop=True)


def _settings(ident: Mapping[str, Any]) -> dict[str, Any]:
    """The options of an identity beyond its axes and method (``epochs``, ``lr``, the data)."""
    loss = str(ident.get("loss", ""))
    skip = {*(a.key for a in axes()), *cells.method_keys(loss), *_NOT_SETTINGS}
    return {k: v for k, v in ident.items() if k not in skip}


def _frozen(values: Mapping[str, Any]) -> str:
    return json.dumps(dict(values), sort_keys=True, default=str)


def _matches(variant: str, wanted: str) -> bool:
    """``variant`` is the one asked for: equal, or it holds every ``+`` part asked for
    (``tuned`` matches ``tuned+focal_gamma=1.7``)."""
    if not wanted or wanted == "plain":
        return variant == ""
    parts = set(variant.split("+")) if variant else set()
    return variant == wanted or set(wanted.split("+")) <= parts


def choose(frame: pd.DataFrame, cell_keys: set[str] | None = None, wanted: str = "") -> Choice:
    """Label every result and mark the thesis tables' rows (see the module docstring).

    Args:
        frame: results after :func:`with_identities` and de-duplication.
        cell_keys: the cells a study ran (``ltexp.cells.cell_key``, without the dataset).
        wanted: ``variant=…``: the variant the thesis tables hold where a cell has it.
    """
    out = frame.copy()
    notes: list[str] = []
    plain_axes = pd.Series(True, index=out.index)
    for a in variant_axes():
        plain_axes &= out["identity"].map(lambda i, a=a: i.get(a.key, a.plain) == a.plain)
    own_keys = out["cell_key"].str.split("/", n=1).str[1]
    if cell_keys is not None:
        thesis = plain_axes & own_keys.isin(cell_keys)
    else:
        thesis = _chosen(out, plain_axes, wanted, notes)
    out["thesis"] = thesis
    out["label"] = _labels(out)
    # results that are not the grid's axes at work: other settings of a cell, searches, …
    axis_only = out.apply(lambda r: bool(axes_of(r["label"], r["identity"])), axis=1)
    beyond = out[~out["thesis"] & ~axis_only]
    if len(beyond):
        shown = sorted(set(beyond["label"]))
        asked = f"variant {wanted}" if wanted else "the plain variant"
        if cell_keys is not None:
            asked = "the cells this study ran"
        notes.append(
            f"the thesis tables hold {asked}; {len(beyond)} other result(s) of the same cells "
            f"are in the variants table ({', '.join(shown[:8])}{', …' if len(shown) > 8 else ''}"
            f"); choose another with variant=<label>"
        )
    return Choice(out.reset_index(drop=True), notes)


def _chosen(out: pd.DataFrame, plain_axes: pd.Series, wanted: str, notes: list[str]) -> pd.Series:
    """Per (model, loss, training set), the rows the thesis tables hold: the variant asked for
    where the cell has it, else the plain one, else the cell's only variant; the plain rows
    with the settings most of them share."""
    asked = plain_axes & out["variant"].map(lambda v: _matches(v, wanted))
    plain = plain_axes & (out["variant"] == "")
    base = _most_common_settings(out[plain])
    if base is not None:
        same = out["identity"].map(lambda i: _frozen(_settings(i)) == base)
        asked &= same | ~plain  # a search's values may differ in any setting
        plain &= same
    thesis = pd.Series(False, index=out.index)
    for position, rows in out[plain_axes].groupby(POSITION):
        where = "/".join(position)
        if asked[rows.index].any():
            thesis[rows.index] = asked[rows.index]
        elif wanted and plain[rows.index].any():
            thesis[rows.index] = plain[rows.index]
            notes.append(f"{where} has no {wanted} run: the thesis tables show its plain run")
        elif rows["cell_key"].nunique() == 1:
            thesis[rows.index] = True
            only = rows["variant"].iloc[0] or "plain, with other settings"
            notes.append(
                f"{where} has no {wanted or 'plain'} run: the thesis tables show its only "
                f"variant, {only}"
            )
    return thesis


def axes_of(label: str, ident: Mapping[str, Any]) -> list[str]:
    """The axes a result differs in from its thesis cell, when its label names nothing else
    (each part an axis's value, or an option of that axis); else ``[]``."""
    off = [a for a in variant_axes() if ident.get(a.key, a.plain) != a.plain]
    parts = [p for p in label.split("+") if p]
    if not off or not parts:
        return []
    mine = {str(ident[a.key]) for a in off}
    options = {o for a in off for o in a.options}
    if all(p in mine or p.split("=")[0] in options for p in parts):
        return [a.key for a in off]
    return []


def _most_common_settings(rows: pd.DataFrame) -> str | None:
    """The settings most of ``rows`` share (ties: the latest run's)."""
    if rows.empty:
        return None
    frozen = rows["identity"].map(lambda i: _frozen(_settings(i)))
    counts = Counter(frozen)
    latest = rows.sort_values("end_time")["identity"].map(lambda i: _frozen(_settings(i)))
    top = max(counts.values())
    return next(v for v in reversed(latest.tolist()) if counts[v] == top)


def _labels(frame: pd.DataFrame) -> list[str]:
    """Each result's variant, then each setting in which it differs from the thesis rows of its
    (model, loss, training set), or from the most common thesis settings."""
    thesis = frame[frame["thesis"]]
    by_position = {
        position: _settings(rows["identity"].iloc[0]) for position, rows in thesis.groupby(POSITION)
    }
    common = _most_common_settings(thesis)
    fallback = json.loads(common) if common else {}
    labels = []
    for _, row in frame.iterrows():
        ref = by_position.get(tuple(row[k] for k in POSITION), fallback)
        mine = _settings(row["identity"])
        extra = [
            _shown_setting(k, mine.get(k))
            for k in sorted(set(mine) | set(ref))
            if str(mine.get(k)) != str(ref.get(k)) and ref
        ]
        labels.append("+".join(p for p in [row["variant"], *extra] if p))
    return labels


def _shown_setting(key: str, value: Any) -> str:
    if key == cells.DATA_DIGEST:
        return f"data={str(value)[:8]}"
    if isinstance(value, float):
        return f"{key}={value:.4g}"
    return f"{key}={value}"
