"""Claims as code: a paper's conclusions, stated over the results, checked with their intervals.

A claims file is YAML: ``claims:``, a list of mappings, each a conclusion with its ``id``, the
``text`` it checks, its ``source`` (a section), a ``kind``, and what the kind needs::

    claims:
      - id: bs-beats-ce-balanced
        text: Balanced Softmax beats Softmax in balanced accuracy on long-tailed training
        source: README example
        kind: better            # a − b on metric is positive (direction: lower: negative)
        a: bs
        b: ce
        metric: balanced
        where: {train_split: lt}

Kinds (``a`` and ``b`` are both losses or both backbones; a loss's claim holds for each backbone
and training set in scope, a backbone's for each loss and training set):

- ``better``: ``a − b`` on ``metric`` is positive (``direction: lower``: negative);
- ``best`` / ``lowest`` (``worst``): ``a`` has the highest / lowest ``metric`` of every loss (or
  backbone) in scope: ``a − x`` for each other ``x``;
- ``tradeoff``: against ``b``, ``a`` raises ``metric`` and lowers ``metric_down``;
- ``steadier`` / ``steadiest``: the spread (population std) of ``a``'s ``metric`` over the
  ``over`` axis (``loss`` or ``model``) is smaller than ``b``'s / than every other's.

``where`` limits the scope: ``train_split``, ``model``, ``loss``, each a name, a list, or
``{except: [...]}``. A claim is checked per unit of its scope (each backbone, say): every
difference it needs is a paired difference on the same test images
(:func:`ltexp.statistics.paired_difference`; a spread's difference by a bootstrap over test images
and seeds), and all differences of all claims are one family under Holm's correction. A unit is
``reproduced`` when each of its differences excludes 0 in the claimed direction after the
correction, ``contradicted`` when one excludes 0 in the other direction, else ``inconclusive``;
the claim is ``reproduced`` when every unit is, ``contradicted`` when one is. With one seed a
difference cannot be told from training noise: the verdict is ``inconclusive``, with what the
point estimates say ("as published: yes/no").
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ltexp.errors import ConfigError, did_you_mean
from ltexp.losses import LOSSES
from ltexp.models import MODELS
from ltexp.report.correctness import Correctness
from ltexp.report.tables import COLUMNS, SPLIT_ORDER
from ltexp.statistics import ALPHA, Interval, holm, paired_difference
from ltexp.textfiles import read_small_text

VERDICTS = ("reproduced", "contradicted", "inconclusive")
KINDS = ("better", "best", "lowest", "worst", "tradeoff", "steadier", "steadiest")
AXES = ("model", "loss", "train_split")
KEYS = ("id", "text", "source", "kind", "a", "b", "metric", "metric_down", "direction")
KEYS += ("where", "over")
NEEDS = {
    "better": ("a", "b", "metric"),
    "best": ("a", "metric"),
    "lowest": ("a", "metric"),
    "tradeoff": ("a", "b", "metric", "metric_down"),
    "steadier": ("a", "b", "metric", "over"),
    "steadiest": ("a", "metric", "over"),
}
MAX_CLAIMS = 500  # a paper states tens; a file of thousands is a mistake, refused in one line
THESIS = "thesis"  # the name of the shipped file, in claims=<list>
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
BOOTSTRAP_SAMPLES = 1000  # of a spread's difference (images and seeds resampled)


@dataclass(frozen=True)
class Claim:
    """One conclusion of a paper, as its claims file states it."""

    id: str
    text: str
    source: str
    kind: str
    a: str
    metric: str
    b: str = ""
    metric_down: str = ""
    direction: int = 1  # +1: a − b positive; −1: negative
    where: Mapping[str, Any] = field(default_factory=dict)
    over: str = ""
    shipped: bool = False  # from ltexp's own file: a scope with no cell is skipped, not refused

    @property
    def subject(self) -> str:
        """The axis ``a`` (and ``b``) name values of: ``loss`` or ``model``."""
        return "loss" if self.a in LOSSES else "model"


@dataclass
class Difference:
    """One difference a claim needs, its interval and its claimed sign."""

    unit: str
    what: str
    sign: int
    interval: Interval
    p_holm: float = float("nan")

    @property
    def testable(self) -> bool:
        return self.interval.training_noise and not np.isnan(self.interval.p_value)

    def shown(self) -> str:
        i = self.interval
        held = f"; p_holm {self.p_holm:.3g}" if not np.isnan(self.p_holm) else ""
        return f"{self.what} {i.value:+.4f} [{i.ci_low:+.4f}, {i.ci_high:+.4f}]{held}"


@dataclass
class Verdict:
    """A claim's verdict and its evidence (``claims.csv``: one row each)."""

    claim: Claim
    verdict: str
    evidence: str
    differences: list[Difference] = field(default_factory=list)
    as_published: bool | None = None
    testable: bool = False
    missing: list[str] = field(default_factory=list)


# --- the file ----------------------------------------------------------------------------------


def shipped_claims() -> Path:
    """The thesis's claims, shipped with ltexp."""
    return Path(str(resources.files("ltexp.report.claims").joinpath("thesis.yaml")))


def claim_files(spec: str) -> list[tuple[Path, bool]]:
    """The files ``claims=<spec>`` names (comma-separated; ``thesis``: the shipped file), each
    with whether it is ltexp's own."""
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        out.append((shipped_claims(), True) if part == THESIS else (Path(part), False))
    return out


def load_claims(spec: str) -> list[Claim]:
    """Every claim of the files ``spec`` names, checked against the grammar.

    Raises:
        ConfigError: one line naming the file, the claim and what would be right.
    """
    claims: list[Claim] = []
    for path, shipped in claim_files(spec):
        claims += _read(path, shipped)
    ids = [c.id for c in claims]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ConfigError(f"claims: the id {twice[0]!r} is given twice; give each claim its own")
    return claims


def _read(path: Path, shipped: bool) -> list[Claim]:
    text = read_small_text(path, "claims file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"claims file {str(path)!r} is not valid YAML: {first}") from None
    except RecursionError:
        raise ConfigError(f"claims file {str(path)!r} is nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("claims"), list):
        raise ConfigError(
            f"claims file {str(path)!r} must be a mapping with a list under 'claims:' "
            f"(see ltexp/report/claims/thesis.yaml)"
        )
    entries = data["claims"]
    if len(entries) > MAX_CLAIMS:
        raise ConfigError(
            f"claims file {str(path)!r} holds {len(entries):,} claims, more than the "
            f"{MAX_CLAIMS} a report checks; keep the conclusions the paper states"
        )
    return [_claim(entry, n, path, shipped) for n, entry in enumerate(entries, start=1)]


def _claim(entry: Any, n: int, path: Path, shipped: bool) -> Claim:
    where = f"claims file {str(path)!r}, claim {n}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping (id, text, source, kind, …)")
    if "id" in entry:
        where = f"{where} ({str(entry['id'])[:64]!r})"
    unknown = [k for k in entry if k not in KEYS]
    if unknown:
        key = str(unknown[0])
        raise ConfigError(
            f"{where}: unknown key {key!r}{did_you_mean(key, KEYS)}; valid: {', '.join(KEYS)}"
        )
    for key in ("id", "text", "source", "kind"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise ConfigError(f"{where}: '{key}' is needed, as text")
    if not _ID.fullmatch(entry["id"]):
        raise ConfigError(
            f"{where}: id must be 1-64 letters, digits and . _ - (it names an MLflow tag)"
        )
    kind = "lowest" if entry["kind"] == "worst" else entry["kind"]
    if kind not in NEEDS:
        raise ConfigError(
            f"{where}: unknown kind {entry['kind']!r}{did_you_mean(entry['kind'], KINDS)}; "
            f"valid: {', '.join(KINDS)}"
        )
    for key in NEEDS[kind]:
        if entry.get(key) in (None, ""):
            raise ConfigError(f"{where}: a {kind} claim needs {', '.join(NEEDS[kind])}")
    for key in ("metric", "metric_down"):
        if key in entry and entry[key] not in COLUMNS:
            raise ConfigError(
                f"{where}: unknown {key} {entry[key]!r}{did_you_mean(str(entry[key]), COLUMNS)}; "
                f"valid: {', '.join(COLUMNS)}"
            )
    a, b = str(entry["a"]), str(entry.get("b") or "")
    axis = _axis_of(a, where, "a")
    if b and _axis_of(b, where, "b") != axis:
        raise ConfigError(f"{where}: a ({a}) and b ({b}) must both be losses or both backbones")
    direction = entry.get("direction", "higher")
    if direction not in ("higher", "lower"):
        raise ConfigError(f"{where}: direction must be higher or lower, got {direction!r}")
    over = str(entry.get("over") or "")
    if kind in ("steadier", "steadiest") and (over not in ("loss", "model") or over == axis):
        other = "model" if axis == "loss" else "loss"
        raise ConfigError(f"{where}: over must be {other} (the spread is over the other axis)")
    return Claim(
        entry["id"],
        entry["text"].strip(),
        entry["source"].strip(),
        kind,
        a,
        entry["metric"],
        b,
        entry.get("metric_down", ""),
        1 if direction == "higher" else -1,
        _scope(entry.get("where") or {}, where),
        over,
        shipped,
    )


def _axis_of(name: str, where: str, key: str) -> str:
    if name in LOSSES:
        return "loss"
    if name in MODELS or name.startswith("timm:"):
        return "model"
    valid = [*LOSSES, *MODELS]
    raise ConfigError(
        f"{where}: {key} {name!r} is neither a loss nor a backbone{did_you_mean(name, valid)}; "
        f"losses: {', '.join(LOSSES)}; backbones: {', '.join(MODELS)}"
    )


def _scope(where: Any, at: str) -> dict[str, Any]:
    """``where:`` as ``{axis: ("only", names) | ("except", names)}``, checked."""
    if not isinstance(where, dict):
        raise ConfigError(f"{at}: where must be a mapping of {', '.join(AXES)}")
    out = {}
    for axis, value in where.items():
        if axis not in AXES:
            raise ConfigError(
                f"{at}: unknown scope {axis!r}{did_you_mean(str(axis), AXES)}; valid: "
                f"{', '.join(AXES)}"
            )
        mode = "only"
        if isinstance(value, dict):
            if set(value) != {"except"}:
                raise ConfigError(f"{at}: where.{axis} takes a name, a list or {{except: [...]}}")
            mode, value = "except", value["except"]
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not all(isinstance(v, str) for v in names):
            raise ConfigError(f"{at}: where.{axis} takes a name, a list or {{except: [...]}}")
        for name in names:
            valid = {
                "loss": list(LOSSES),
                "model": list(MODELS),
                "train_split": list(SPLIT_ORDER),
            }[axis]
            if name not in valid and not (axis == "model" and name.startswith("timm:")):
                raise ConfigError(
                    f"{at}: unknown {axis} {name!r} in where{did_you_mean(name, valid)}; "
                    f"valid: {', '.join(valid)}"
                )
        out[axis] = (mode, tuple(names))
    return out


# --- the check ---------------------------------------------------------------------------------

Cells = Mapping[tuple[str, str, str], list[str]]  # (model, loss, split) -> run ids, seed order


def _in_scope(claim: Claim, axis: str, values: Iterable[str]) -> list[str]:
    mode, names = claim.where.get(axis, ("except", ()))
    return [v for v in values if (v in names) == (mode == "only")]


def _cell(claim_axis: str, subject: str, unit: dict[str, str]) -> tuple[str, str, str]:
    values = {**unit, claim_axis: subject}
    return values["model"], values["loss"], values["train_split"]


def check_claims(
    claims: list[Claim],
    cells: Cells,
    correctness: Correctness,
    grid_values: Mapping[str, list[str]],
) -> list[Verdict]:
    """Each claim's verdict on these cells (see the module docstring).

    Args:
        cells: run ids of each (model, loss, train_split) with readable predictions.
        grid_values: the study's models, losses and train_splits, in order.

    Raises:
        ConfigError: a user's claim whose scope matches no cell of the study.
    """
    verdicts = []
    for claim in claims:
        differences, missing = _differences(claim, cells, correctness, grid_values)
        if not differences:
            if claim.shipped:
                continue  # the thesis's claim about backbones this study did not train
            raise ConfigError(
                f"claim {claim.id!r}: its scope ({_scope_text(claim)}) matches no cell of this "
                f"study ({', '.join(f'{a}s ' + ','.join(v) for a, v in grid_values.items())}); "
                f"widen its where or train the cells"
            )
        verdicts.append(Verdict(claim, "", "", differences, missing=missing))
    family = [d for v in verdicts for d in v.differences]
    adjusted = holm([d.interval.p_value if d.testable else np.nan for d in family])
    for d, p in zip(family, adjusted, strict=True):
        d.p_holm = float(p)
    for v in verdicts:
        _decide(v)
    return verdicts


def family_size(verdicts: list[Verdict]) -> int:
    """How many differences the claims tested (Holm's family)."""
    return sum(d.testable for v in verdicts for d in v.differences)


def _scope_text(claim: Claim) -> str:
    parts = [f"{axis} {mode} {','.join(names)}" for axis, (mode, names) in claim.where.items()]
    return "; ".join(parts) or "everything"


def _differences(
    claim: Claim, cells: Cells, correctness: Correctness, grid: Mapping[str, list[str]]
) -> tuple[list[Difference], list[str]]:
    subject = claim.subject
    spread = claim.kind in ("steadier", "steadiest")
    unit_axes = [a for a in AXES if a != subject and (not spread or a != claim.over)]
    units = [
        dict(zip(unit_axes, values, strict=True))
        for values in itertools.product(*(_in_scope(claim, a, grid[a]) for a in unit_axes))
    ]
    rivals = [x for x in _in_scope(claim, subject, grid[subject]) if x != claim.a]
    if claim.kind in ("better", "steadier", "tradeoff"):
        rivals = [claim.b]
    sign = -1 if claim.kind in ("lowest", "steadier", "steadiest") else claim.direction
    out, missing = [], []
    for unit in units:
        name = "/".join(unit.values())
        for rival in rivals:
            metrics = [(claim.metric, sign)]
            if claim.kind == "tradeoff":
                metrics.append((claim.metric_down, -1))
            for metric, s in metrics:
                if spread:
                    over = _in_scope(claim, claim.over, grid[claim.over])
                    found = _spread_difference(
                        claim, subject, rival, unit, over, metric, cells, correctness
                    )
                    what = f"{name}: spread over {claim.over}s of {metric}, {claim.a} − {rival}"
                else:
                    a_cell, b_cell = _cell(subject, claim.a, unit), _cell(subject, rival, unit)
                    found = _paired(a_cell, b_cell, metric, cells, correctness)
                    what = f"{name}: {claim.a} − {rival} {metric}"
                if found is None:
                    missing.append(f"{name} ({claim.a} or {rival})")
                    continue
                out.append(Difference(name, what, s, found))
    return out, sorted(set(missing))


def _paired(
    a: tuple[str, str, str],
    b: tuple[str, str, str],
    metric: str,
    cells: Cells,
    correctness: Correctness,
) -> Interval | None:
    if not cells.get(a) or not cells.get(b):
        return None
    ma, mb = correctness.column(cells[a], metric), correctness.column(cells[b], metric)
    if ma is None or mb is None or ma.shape[1] != mb.shape[1] or not ma.shape[1]:
        return None
    return paired_difference(ma, mb)


def _spread_difference(
    claim: Claim,
    subject: str,
    rival: str,
    unit: dict[str, str],
    over: list[str],
    metric: str,
    cells: Cells,
    correctness: Correctness,
) -> Interval | None:
    """``std over `over` of a's metric − the same of rival's``, with a percentile interval and
    p-value from a bootstrap that resamples the test images (jointly: every cell saw the same)
    and each cell's seeds."""
    matrices = {}
    for who in (claim.a, rival):
        for value in over:
            key = _cell(claim.over, value, {**unit, subject: who})
            matrix = correctness.column(cells.get(key, []), metric) if cells.get(key) else None
            if matrix is None or not matrix.shape[1]:
                return None
            matrices[(who, value)] = matrix.astype(np.float32)
    n = {m.shape[1] for m in matrices.values()}
    if len(over) < 2 or len(n) != 1:
        return None
    (images,) = n
    rng = np.random.default_rng(0)
    weights = rng.multinomial(images, np.full(images, 1 / images), BOOTSTRAP_SAMPLES).T
    weights = weights.astype(np.float32) / images  # (images, samples)
    resampled: dict[tuple[str, str], np.ndarray] = {}
    seeds = min(len(m) for m in matrices.values())
    for key, matrix in matrices.items():
        per_seed = matrix @ weights  # (seeds, samples): each seed's accuracy per resample
        pick = rng.integers(0, len(matrix), (len(matrix), BOOTSTRAP_SAMPLES))
        resampled[key] = np.take_along_axis(per_seed, pick, axis=0).mean(axis=0)

    def spread(table: Callable[[str], Any]) -> Any:
        return np.std(np.stack([table(v) for v in over]), axis=0)

    value = float(
        spread(lambda v: matrices[(claim.a, v)].mean(axis=0).mean())
        - spread(lambda v: matrices[(rival, v)].mean(axis=0).mean())
    )
    boot = spread(lambda v: resampled[(claim.a, v)]) - spread(lambda v: resampled[(rival, v)])
    low, high = np.quantile(boot, [ALPHA / 2, 1 - ALPHA / 2])
    p = min(1.0, 2 * min(float(np.mean(boot <= 0)), float(np.mean(boot >= 0))))
    noise = seeds > 1
    return Interval(
        value, float(low), float(high), images, (seeds,), noise, p if noise else float("nan")
    )


def _decide(v: Verdict) -> None:
    diffs = v.differences
    v.as_published = all(np.sign(d.interval.value) == d.sign for d in diffs)
    v.testable = all(d.testable for d in diffs)
    held = [d.p_holm < ALPHA and np.sign(d.interval.value) == d.sign for d in diffs]
    against = [d.p_holm < ALPHA and np.sign(d.interval.value) == -d.sign for d in diffs]
    shown = "; ".join(d.shown() for d in diffs[:12]) + ("; …" if len(diffs) > 12 else "")
    gaps = f" Not in this study: {', '.join(v.missing)}." if v.missing else ""
    if not v.testable:
        v.verdict = "inconclusive"
        published = "yes" if v.as_published else "no"
        v.evidence = (
            f"as published: {published} on the point estimates; not testable with one seed "
            f"(train seeds=1,2,3). {shown}.{gaps}"
        )
        return
    if any(against):
        v.verdict = "contradicted"
    elif all(held):
        v.verdict = "reproduced"
    else:
        v.verdict = "inconclusive"
    v.evidence = f"{sum(held)} of {len(diffs)} differences as claimed after Holm: {shown}.{gaps}"


def claims_frame(verdicts: list[Verdict]) -> pd.DataFrame:
    """``claims.csv``: ``id, kind, verdict, text, source, evidence`` (a contract)."""
    rows = [
        {
            "id": v.claim.id,
            "kind": v.claim.kind,
            "verdict": v.verdict,
            "text": v.claim.text,
            "source": v.claim.source,
            "evidence": v.evidence,
        }
        for v in verdicts
    ]
    return pd.DataFrame(rows, columns=["id", "kind", "verdict", "text", "source", "evidence"])
