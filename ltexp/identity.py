"""What makes two runs the same: pure functions of the config, the data digest and the code.

- :func:`data_key`: the settings that decide a prepared dataset (which prepare_data run to reuse).
- :func:`train_identity` / :func:`train_hash`: a train cell (which run to resume or reuse).
- :func:`study_hash`: a study (which unfinished study run to continue).
- :func:`code_version`: the ltexp sources that ran (finished cells are reused only by the same
  code).

Runtime-only fields (``runtime=True`` in :mod:`ltexp.config`: device, threads, folders, …) are
left out of every hash, so runs that differ only in how they executed count as the same. Nothing
here touches the tracking store.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ltexp.config import Config, runtime_keys

_CODE_VERSION: str | None = None


def config_hash(values: dict[str, Any]) -> str:
    """sha256 (first 16 hex) of a JSON-able mapping, key order ignored."""
    blob = json.dumps(values, sort_keys=True, default=str).encode()
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


def data_key(cfg: Config) -> str:
    """Hash of the data settings that decide the prepared splits (not where files live)."""
    values = _without_runtime(cfg.to_dict(("data",))["data"])
    # the options of other datasets do not change this one's splits
    from ltexp.config import dataset_fields

    others = {f.key for f in dataset_fields() if f.owner != cfg.data.dataset}
    return config_hash({k: v for k, v in values.items() if k not in others})


def train_identity(cfg: Config, data_digest: str) -> dict[str, Any]:
    """Everything that decides what a train run computes: its config (runtime fields left
    out), the resolved image size, the loss's hyper-parameters, the data."""
    from ltexp.training.setup import resolve_image_size

    nested = cfg.to_dict(("train", "runtime"))
    return {
        "train": _without_runtime({**nested["train"], **nested["runtime"]}),
        "image_size": resolve_image_size(cfg),
        "loss_hparams": cfg.loss_hparams(),
        "data_digest": data_digest,
    }


def train_hash(cfg: Config, data_digest: str) -> str:
    """The ``ltexp.config_hash`` of a train run (see :func:`train_identity`)."""
    return config_hash(train_identity(cfg, data_digest))


def study_hash(cfg: Config) -> str:
    """Identity of a study: its resolved config without runtime-only settings."""
    values = cfg.to_dict()
    for name, section in values.items():
        if isinstance(section, dict) and name != "losses":
            values[name] = _without_runtime(section)
    return config_hash(values)
