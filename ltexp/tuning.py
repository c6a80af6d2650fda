"""Hyper-parameter search on the validation set: the space, the objective, the Optuna study.

A search space is a list of ``key=distribution:arguments`` over config keys (the loss's own
hyper-parameters, ``lr``, ``weight_decay``, ``drw_epoch``, …):

- ``uniform:LOW:HIGH`` and ``loguniform:LOW:HIGH`` (floats; log-uniform needs LOW > 0);
- ``int:LOW:HIGH`` and ``logint:LOW:HIGH`` (integers);
- ``choice:A|B|C`` (any values the key accepts).

Every bound and choice is checked with the key's own converter and range (``lr`` must stay
> 0), before any run exists. The objective is a validation metric of the train run (``val_acc1``
by default; ``val_tail_acc1``, ``val_balanced_acc1``, …), the best over its epochs, as model
selection uses it: the test splits are never read. Nothing here touches MLflow.
"""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from ltexp import schema
from ltexp.cells import config_hash, settings
from ltexp.config import Config, FieldSpec, all_fields, convert
from ltexp.errors import ConfigError, did_you_mean

DISTRIBUTIONS = ("uniform", "loguniform", "int", "logint", "choice")
# config sections a search may change: what training does, never the data or where it runs
TUNABLE_SECTIONS = ("train", "losses", "runtime")
# the cell being tuned, fixed for the whole search
CELL_KEYS = ("model", "loss", "train_split", "seed", "pretrained", "data_run", "resume")


@dataclass(frozen=True)
class Dimension:
    """One axis of the search: a config key and its distribution."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The trial's value (an ``optuna.Trial``)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        log = self.kind in ("loguniform", "logint")
        if self.kind in ("int", "logint"):
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=log)
        return trial.suggest_float(self.key, self.low, self.high, log=log)


def parse_space(entries: list[str] | dict[str, str]) -> list[Dimension]:
    """The dimensions of ``--space`` entries (or a YAML mapping ``key: distribution``).

    Raises:
        ConfigError: an unknown or untunable key, a bad distribution, bounds out of order or
            outside the key's range; one line naming the entry and what would be right.
    """
    items = list(entries.items()) if isinstance(entries, dict) else [_split(e) for e in entries]
    if not items:
        raise ConfigError("the search space is empty: give --space key=distribution:arguments")
    fields = all_fields()
    seen, dims = set(), []
    for key, text in items:
        spec = fields.get(key)
        if spec is None:
            raise ConfigError(f"search space: unknown key {key!r}{did_you_mean(key, list(fields))}")
        if key in CELL_KEYS:
            raise ConfigError(
                f"search space: {key} is the cell being tuned, fixed for the whole search; tune "
                f"each cell with its own `ltexp tune --{key.replace('_', '-')} …`"
            )
        if spec.section not in TUNABLE_SECTIONS or spec.runtime:
            what = (
                "only changes how a run executes"
                if spec.runtime
                else f"is a {spec.section} setting"
            )
            raise ConfigError(
                f"search space: {key} {what}; a search tunes training and loss "
                f"hyper-parameters (lr, weight_decay, focal_gamma, …)"
            )
        if key in seen:
            raise ConfigError(f"search space: {key} is given twice")
        seen.add(key)
        dims.append(_dimension(spec, str(text)))
    return dims


def _split(entry: str) -> tuple[str, str]:
    key, sep, text = entry.partition("=")
    if not sep or not key.strip() or not text.strip():
        raise ConfigError(
            f"search space entry {entry!r} must be key=distribution:arguments "
            f"(e.g. lr=loguniform:1e-5:1e-2)"
        )
    return key.strip(), text.strip()


def _dimension(spec: FieldSpec, text: str) -> Dimension:
    kind, _, args = text.partition(":")
    kind = kind.strip()
    where = f"search space: {spec.key}={text}"
    if kind not in DISTRIBUTIONS:
        raise ConfigError(
            f"{where}: unknown distribution {kind!r}{did_you_mean(kind, DISTRIBUTIONS)}; "
            f"valid: {', '.join(DISTRIBUTIONS)}"
        )
    if kind == "choice":
        values = [v.strip() for v in args.split("|") if v.strip()]
        if len(values) < 2:
            raise ConfigError(f"{where}: choice needs at least two values, as choice:A|B")
        return Dimension(spec.key, kind, choices=tuple(convert(spec, v) for v in values))
    parts = args.split(":")
    if len(parts) != 2:
        raise ConfigError(f"{where}: {kind} needs two bounds, as {kind}:LOW:HIGH")
    numeric = _base_type(spec.type)
    if numeric not in (int, float) or (kind in ("int", "logint") and numeric is not int):
        need = "an integer" if kind in ("int", "logint") else "a number"
        raise ConfigError(f"{where}: {kind} needs {need} key; {spec.key} is not one")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"{where}: the bounds must be numbers") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ConfigError(f"{where}: low must be <= high, got {low:g} > {high:g}")
    if kind in ("loguniform", "logint") and low <= 0:
        raise ConfigError(f"{where}: {kind} needs low > 0")
    for bound in (low, high):  # the key's own range: lr stays > 0, betas < 1, …
        convert(spec, int(bound) if numeric is int else bound)
    return Dimension(spec.key, kind, low, high)


def _base_type(tp: Any) -> Any:

    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def check_objective(objective: str) -> str:
    """A validation metric name: ``val_acc1``, ``val_balanced_acc1`` or ``val_<group>_acc1``."""
    groups = [schema.val_metric(g) for g in schema.GROUPS]
    valid = [schema.VAL_ACC1, schema.VAL_BALANCED_ACC1, *groups]
    if objective not in valid:
        raise ConfigError(
            f"objective {objective!r} is not a validation metric{did_you_mean(objective, valid)}; "
            f"valid: {', '.join(valid)} (a search never reads the test splits)"
        )
    return objective


def check_study_name(name: str) -> str:
    """A study name: letters, digits and ``. _ - :`` (it is a tag value that searches compare)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}", name):
        raise ConfigError(
            f"study_name {name[:40]!r} may hold letters, digits and . _ - : only (at most 200)"
        )
    return name


def study_name(cfg: Config, dims: list[Dimension], objective: str) -> str:
    """A stable name for the search of this config, space and objective (a re-run resumes it)."""
    identity = {
        "base": settings(cfg),
        "data": cfg.data.dataset,
        "space": [vars(d) for d in dims],
        "objective": objective,
    }
    t = cfg.train
    return f"ltexp-{t.model}-{t.loss}-{t.train_split}-{config_hash(identity)[:8]}"
