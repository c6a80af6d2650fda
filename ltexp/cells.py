"""Cells: what one experiment of the study is, and when two runs are the same.

A cell is a value for every axis of the grid (:mod:`ltexp.config.grid`: model, loss, training
set, seed, sampler, mixing, second stage) together with every other option that changes what is
trained (loss hyper-parameters, head, DRW, image size, epochs, optimiser, …, and tuned values).
Its *identity* (:func:`identity`) is the flat mapping of those options, with the data it trains on
and the kind of run (a cell, or a tuning trial). Two runs with the same identity are the same
experiment: one claim, one run to resume or reuse, one row of the report; two that differ in any
of it are never one. Everything that names or finds a cell derives from here:

- :func:`grid_cells`: the grid's cells; :class:`Cell`: one of them, and its config.
- :func:`identity`, :func:`stage2_identity`, :func:`identity_hash`: a train run's and a decouple
  run's identity (``ltexp.identity`` and ``ltexp.config_hash`` on the run).
- :func:`variant`, :func:`run_name`: the axes off their plain value and the method options off
  their default, named (``resnet50-ldam-lt-s42-class_balanced+drw_epoch=160``).
- :func:`cell_key`: the identity without the seed: a report row, a registered model's champion.
- :func:`data_key`: a prepared dataset's identity; :func:`study_hash`; :func:`code_version`.

Runtime-only options (``runtime=True`` in :mod:`ltexp.config`: device, threads, folders, …) are
left out, so runs that differ only in how they executed are the same. Nothing here touches the
tracking store.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from ltexp import schema
from ltexp.config import (
    Config,
    added_keys,
    all_fields,
    axes,
    axis,
    conditional_keys,
    convert,
    dataset_fields,
    registry_names,
    runtime_keys,
)
from ltexp.config.sections import STAGE2_EPOCHS
from ltexp.data import DATASETS, Protocol, SourceData
from ltexp.errors import ConfigError, unknown_name_error

# ltexp.models is imported where a model is named: it imports torch (3 s, measured), and the
# identities, names and hashes here serve commands that need no model (``ltexp plan``, the CLI)

_CODE_VERSION: str | None = None


class RunKind(StrEnum):
    """What a train run is for: a cell of the study, or a trial of a search (never a cell)."""

    CELL = "cell"
    TRIAL = "trial"


# the options of a cell's identity that are not config keys
KIND = "kind"
TRIAL = "trial"  # a trial's search and number: two trials are never one run
TUNED = "tuned"  # a cell trained with a search's best values (``main --tuned``)
DATA_DIGEST = "data_digest"


def config_hash(values: Mapping[str, Any]) -> str:
    """sha256 (first 16 hex) of a JSON-able mapping, key order ignored."""
    blob = json.dumps(dict(values), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def code_version() -> str:
    """sha256 (first 16 hex) of every ltexp source file: a cache key that changes with the code."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        root = Path(__file__).resolve().parent
        h = hashlib.sha256()
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
        _CODE_VERSION = h.hexdigest()[:16]
    return _CODE_VERSION


def _without_runtime(section: dict[str, Any]) -> dict[str, Any]:
    skip = runtime_keys()
    return {k: v for k, v in section.items() if k not in skip}


# --- cells of the grid -------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: a value for every axis, in declaration order."""

    values: tuple[tuple[str, Any], ...]

    def __getitem__(self, key: str) -> Any:
        return dict(self.values)[key]

    @property
    def stage(self) -> int:
        """2 when a stage-2 axis is off its plain value (the cell is a decoupled model)."""
        return max((a.stage for a in axes() if a.stage == 2 and self[a.key] != a.plain), default=1)

    def stage1(self) -> Cell:
        """The cell whose trained model this cell's second stage starts from (itself, if none)."""
        return Cell(tuple((k, axis(k).plain if axis(k).stage == 2 else v) for k, v in self.values))

    def config(self, base: Config, tuned: Mapping[str, Any] | None = None) -> Config:
        """``base`` with this cell's value of every axis (and a search's best values)."""
        return base.replace(**dict(self.values), **dict(tuned or {}))


def grid_cells(cfg: Config) -> list[Cell]:
    """Every cell of the configured grid (the product of every axis's values); every unknown
    value is reported at once."""
    problems = []
    for a in axes():
        for value in cfg.grid_values(a.key):
            if a.registry and not _known(a.registry, value):
                names = registry_names(a.registry)
                what = "study_stage2 method" if a.key == "stage2" else a.key
                problems.append(str(unknown_name_error(what, value, names)))
    if problems:
        raise ConfigError("; ".join(problems))
    values = [cfg.grid_values(a.key) for a in axes()]
    if not all(values):
        raise ConfigError(
            f"the grid is empty: {', '.join(a.grid_key for a in axes())} each need at least one "
            f"value"
        )
    keys = [a.key for a in axes()]
    return [Cell(tuple(zip(keys, combo, strict=True))) for combo in itertools.product(*values)]


def _known(registry: str, value: Any) -> bool:
    if registry == "finetunes":  # freeze:<k> is a family
        from ltexp.models.finetune import parse_finetune

        try:
            parse_finetune(value)
        except ConfigError:
            return False
        return True
    if registry == "models":  # timm:<name> is a family, resolved on demand
        from ltexp.models import model_spec

        try:
            model_spec(value)
        except ConfigError:
            return False
        return True
    return value in registry_names(registry)


# --- identities --------------------------------------------------------------------------------


def settings(cfg: Config) -> dict[str, Any]:
    """Every option of ``cfg`` that changes what a train run computes, by flat key: the train
    options, the arithmetic precision, the resolved image size, the loss's own
    hyper-parameters (``focal_gamma``). Runtime-only options are left out, and so are options
    added after runs were recorded while they are at their default (``added=`` in
    :mod:`ltexp.config`): a run recorded before ``finetune`` existed is the ``full`` cell; and
    options that matter only under another's value when it is another (``applies_when=``:
    ``lora_rank`` of a cell that is not LoRA)."""
    from ltexp.models import input_size

    nested = cfg.to_dict(("train", "runtime"))
    out = _without_runtime({**nested["train"], **nested["runtime"]})
    for key, (other, value) in conditional_keys().items():  # lora_rank without lora
        if key in out and out.get(other) != value:
            del out[key]
    for key, default in added_keys().items():
        if key in out and _same(out[key], default):
            del out[key]
    out["image_size"] = input_size(cfg.train.model, cfg.train.image_size)
    out.update(cfg.loss_settings())
    return out


def identity(
    cfg: Config,
    data_digest: str,
    kind: RunKind = RunKind.CELL,
    *,
    trial: str = "",
    tuned: bool = False,
) -> dict[str, Any]:
    """The identity of a train run: its :func:`settings`, the data, and the kind of run.

    Args:
        trial: a trial's ``<search>/<number>`` (kind TRIAL): two trials are never one run.
        tuned: the cell trains with a search's best values (``main --tuned``).
    """
    out = {KIND: kind.value, **settings(cfg), DATA_DIGEST: data_digest}
    if kind is RunKind.TRIAL:
        out[TRIAL] = trial
    if tuned:
        out[TUNED] = True
    return out


def stage2_identity(stage1: Mapping[str, Any], cfg: Config) -> dict[str, Any]:
    """The identity of a decouple run: its stage-1 run's, plus the stage-2 options asked for
    (``stage2_tau`` None: chosen on the validation set)."""
    return {**stage1, "stage2": cfg.decouple.stage2, **_stage2_settings(cfg)}


def _stage2_settings(cfg: Config) -> dict[str, Any]:
    d = cfg.decouple
    if d.stage2 == "tau_norm":  # no training: only τ and its form matter
        return {"stage2_tau": d.stage2_tau, "stage2_tau_form": d.stage2_tau_form}
    # the epochs it will train: a default and its explicit value are one cell
    return {"stage2_epochs": d.epochs(d.stage2), "stage2_lr": d.stage2_lr}


def identity_hash(ident: Mapping[str, Any]) -> str:
    """The ``ltexp.config_hash`` of a run with this identity."""
    return config_hash(ident)


def cell_key(ident: Mapping[str, Any]) -> str:
    """The identity without the seed (and the trial): the cell a run is a seed of. A report row,
    the versions a registered model's champion is chosen among."""
    return config_hash({k: v for k, v in ident.items() if k not in ("seed", TRIAL)})


def identity_from_params(params: Mapping[str, str]) -> dict[str, Any]:
    """An identity read back from a run's params (a run logged before ``ltexp.identity``
    existed): the known keys converted to their type, unknown ones as logged."""
    fields = all_fields()
    out: dict[str, Any] = {}
    for key, text in params.items():
        spec = fields.get(key)
        wanted = spec is not None and not spec.runtime
        if not wanted or spec.section not in ("train", "runtime", "losses", "decouple"):
            continue
        try:
            out[key] = None if text in ("None", "") else convert(spec, text)
        except ConfigError:
            out[key] = text
    return out


# --- names -------------------------------------------------------------------------------------


def method_keys(loss: str, fields: Mapping[str, Any] | None = None) -> list[str]:
    """The options a variant names when they are off their default: those declared
    ``method=True`` (head, DRW, the mixing's parameters, a second stage's) and the loss's own
    hyper-parameters."""
    fields = fields or all_fields()
    return [k for k, f in fields.items() if f.method or (f.section == "losses" and f.owner == loss)]


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ",".join(_shown(v) for v in value)
    return str(value)


def variant(ident: Mapping[str, Any]) -> str:
    """What makes a cell other than its plain thesis cell, joined by ``+`` (empty for a plain
    cell): each axis off its plain value (``class_balanced``, ``crt``), ``tuned``, then each
    method option off its default (``head=cosine``, ``drw_epoch=160``, ``focal_gamma=1``)."""
    parts = [a.named(ident[a.key]) for a in axes() if a.plain is not None and _off(a, ident)]
    if ident.get(TUNED):
        parts.append(TUNED)
    fields = all_fields()
    for key in method_keys(str(ident.get("loss", "")), fields):
        if key in ident and not _same(ident[key], _default(key, ident, fields)):
            parts.append(f"{key}={_shown(ident[key])}")
    return "+".join(parts)


def _default(key: str, ident: Mapping[str, Any], fields: Mapping[str, Any]) -> Any:
    """An option's default for this cell: a second stage's epochs default per method."""
    if key == "stage2_epochs":
        return STAGE2_EPOCHS.get(str(ident.get("stage2")), fields[key].default)
    return fields[key].default


def _off(a: Any, ident: Mapping[str, Any]) -> bool:
    return a.key in ident and ident[a.key] != a.plain


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    return a == b


def run_name(ident: Mapping[str, Any]) -> str:
    """What a run is, at a glance: ``resnet50-bs-lt-s42``, with its :func:`variant` after it
    (``resnet50-bs-lt-s42-class_balanced+crt``)."""
    return schema.run_name(
        ident["model"], ident["loss"], ident["train_split"], ident["seed"], variant(ident)
    )


def decouple_hash(stage1_run_id: str, identity: dict) -> str:
    """The ``ltexp.config_hash`` of a decouple run: its identity and its stage-1 run (a stage 1
    trained again is decoupled again)."""
    return identity_hash({**identity, "stage1_run": stage1_run_id})


# --- data and studies --------------------------------------------------------------------------


def data_key(cfg: Config) -> str:
    """Hash of the data settings that decide the prepared splits: the data options (other
    datasets' options left out) and, for a set whose files are its content (an image folder, a
    list of files), where those files are."""
    values = _without_runtime(cfg.to_dict(("data",))["data"])
    others = {f.key for f in dataset_fields() if f.owner != cfg.data.dataset}
    values = {k: v for k, v in values.items() if k not in others}
    added = added_keys()  # an option added later, at its default: the same data as before
    values = {k: v for k, v in values.items() if not (k in added and _same(v, added[k]))}
    spec = DATASETS.get(cfg.data.dataset)
    if spec is not None and spec.files_are_data:
        values["data_root"] = str(Path(cfg.data.data_root).expanduser().resolve())
    return config_hash(values)


def data_protocol(cfg: Config, source: SourceData) -> Protocol:
    """The split protocol: configured values, the dataset's defaults for the sizes left unset.

    ``split_mode=auto`` keeps a set that is long-tailed as given (``source.long_tailed``) as it
    is; there, a balanced training set exists only when ``n_max_train`` asks for one.
    """
    d = cfg.data
    mode = d.split_mode if d.split_mode != "auto" else "given" if source.long_tailed else "protocol"
    if mode == "protocol" and not len(source.test_labels):
        raise ConfigError(
            f"split_mode=protocol needs a source test set (it becomes the validation split) and "
            f"{source.name} has none under {d.data_root!r}; use split_mode=given"
        )
    given = mode == "given"
    return Protocol(
        profile=d.profile,
        imbalance_ratio=d.imbalance_ratio,
        pareto_alpha=d.pareto_alpha,
        n_train=(d.n_max_train or 0) if given else d.n_max_train or source.n_train_per_class,
        n_test=0 if given else d.n_max_test or source.n_test_per_class,
        seed=d.split_seed,
        class_order=d.class_order,
        mode=mode,
        holdout_fraction=d.holdout_fraction,
        max_per_class=d.max_per_class or 0,
    )


def study_hash(cfg: Config) -> str:
    """Identity of a study: its resolved config without runtime-only settings."""
    values = cfg.to_dict()
    for name, section in values.items():
        if isinstance(section, dict) and name != "losses":
            values[name] = _without_runtime(section)
    return config_hash(values)
