"""A prepared dataset: the splits of a protocol materialised, described and verifiable.

``manifest.json`` holds, per split, its size ``n``, ``per_class`` counts (indexed by label) and the
sha256 ``digest`` of its images and labels; the class groups; the protocol; the source checksums.
``splits.npz`` holds the index arrays into the source sets, from which anyone can rebuild each split
bit for bit. A later step rebuilds the splits from the source files and refuses to go on unless
every digest matches.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ltexp.data.files import verify_cache
from ltexp.data.sources import SourceData, sha256_arrays
from ltexp.data.splits import (
    LOADED_SPLITS,
    SPLIT_SOURCE,
    SPLITS,
    TRAINING_SETS,
    Protocol,
    SplitPlan,
    build_given_splits,
    build_splits,
    cut_per_class,
)
from ltexp.errors import ConfigError, DataError

MANIFEST_VERSION = 1


@dataclass
class Split:
    """One split in memory: uint8 images ``(N, H, W, 3)`` and int64 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def digest(self) -> str:
        """sha256 of the split's images and labels."""
        return sha256_arrays(self.images, self.labels)


@dataclass
class PreparedData:
    """Every split of a prepared dataset, with its manifest."""

    manifest: dict[str, Any]
    splits: dict[str, Split]
    indices: dict[str, np.ndarray] | None = None  # into the source sets, when known

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def dataset(self) -> str:
        return str(self.manifest["dataset"])

    @property
    def class_names(self) -> list[str]:
        """The name of each label (the label itself where the source names none)."""
        names = self.manifest.get("class_names") or []
        return (
            [str(n) for n in names]
            if len(names) == self.num_classes
            else [str(c) for c in range(self.num_classes)]
        )

    def class_counts(self, split: str) -> list[int]:
        """Images per class of ``split``, indexed by label."""
        return list(self.manifest["splits"][split]["per_class"])

    def has(self, split: str) -> bool:
        """Whether the set has images in ``split`` (a set long-tailed as given lacks some)."""
        return int(self.manifest["splits"][split]["n"]) > 0

    def training_split(self, train_split: str) -> str:
        """The split ``train_split`` (lt, balanced) trains on; refused when the set lacks it."""
        split = TRAINING_SETS[train_split]
        if not self.has(split):
            raise ConfigError(
                f"{self.dataset} is long-tailed as given and has no {split}: use train_split=lt, "
                f"or prepare it with n_max_train=N to draw N images of every class for one"
            )
        return split

    @property
    def group_split(self) -> str:
        """The test split the class-group metrics are computed on."""
        return str(self.manifest.get("group_split", "test_lt"))

    def groups(self) -> dict[str, list[int]]:
        """Class groups (head, middle, tail, many, medium, few) → labels."""
        return {k: list(v) for k, v in self.manifest["groups"].items()}

    def digest(self) -> str:
        """One digest for the whole prepared dataset (the digests of its splits)."""
        return sha256_arrays(
            np.frombuffer(
                "".join(self.manifest["splits"][s]["digest"] for s in SPLITS).encode(), np.uint8
            )
        )


def materialise(source: SourceData, plan: SplitPlan) -> dict[str, Split]:
    """The split arrays selected by ``plan`` from ``source``."""
    return {
        s: Split(
            np.ascontiguousarray(source.images(plan.sources[s])[plan.indices[s]]),
            source.labels(plan.sources[s])[plan.indices[s]],
        )
        for s in SPLITS
    }


def build_manifest(source: SourceData, plan: SplitPlan, splits: dict[str, Split]) -> dict[str, Any]:
    """The manifest of a prepared dataset (see the module docstring)."""
    return {
        "version": MANIFEST_VERSION,
        "dataset": source.name,
        "dataset_options": source.options,
        "num_classes": plan.num_classes,
        "class_names": source.class_names,
        "image_shape": list(source.train_images.shape[1:]),
        "protocol": dataclasses.asdict(plan.protocol),
        "class_rank": [int(c) for c in plan.class_rank],
        "groups": plan.groups,
        "group_split": plan.group_split,
        "splits": {
            s: {
                "source": plan.sources[s],
                "n": len(splits[s]),
                "per_class": plan.per_class(s, source.labels(plan.sources[s])),
                "digest": splits[s].digest(),
            }
            for s in SPLITS
        },
        "source_checksums": source.checksums,
    }


def save_indices(plan: SplitPlan, path: Path) -> None:
    """Write the index arrays (and the class ranking) as a compressed ``.npz``."""
    np.savez_compressed(path, class_rank=plan.class_rank, **plan.indices)


def load_indices(path: Path) -> dict[str, np.ndarray]:
    """Read index arrays written by :func:`save_indices` (no pickles are loaded)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            out = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"split index file {str(path)!r} is corrupt ({e})") from None
    missing = [s for s in SPLITS if s not in out]
    if missing:
        raise DataError(f"split index file {str(path)!r} lacks splits {missing}")
    return out


def rebuild(
    source: SourceData, manifest: dict[str, Any], indices: dict[str, np.ndarray]
) -> PreparedData:
    """Rebuild the splits a step reads from the source and index arrays; refuse any digest
    mismatch. The group splits are not materialised: they are test_lt restricted by class."""
    splits = {}
    for s in LOADED_SPLITS:
        src = manifest["splits"][s].get("source", SPLIT_SOURCE[s])
        idx = indices[s]
        n_src = len(source.labels(src))
        if idx.dtype.kind not in "iu" or (len(idx) and (idx.min() < 0 or idx.max() >= n_src)):
            raise DataError(
                f"split {s}: index array does not fit the source {src} set of "
                f"{n_src} images; the data under data_root is not what was prepared"
            )
        split = Split(np.ascontiguousarray(source.images(src)[idx]), source.labels(src)[idx])
        want = manifest["splits"][s]["digest"]
        if split.digest() != want:
            raise DataError(
                f"split {s} does not match its manifest (sha256 {split.digest()[:12]}"
                f"… ≠ {want[:12]}…): the source files differ from those prepared; "
                f"prepare the data again or restore the original files"
            )
        splits[s] = split
    return PreparedData(manifest, splits, indices)


def prepare(source: SourceData, protocol: Protocol) -> tuple[PreparedData, SplitPlan]:
    """Build, materialise and describe every split of ``protocol`` on ``source`` (an image
    cache it reads is verified first: what the manifest records is what the cache holds)."""
    verify_cache(source)
    if protocol.mode == "given":
        plan = build_given_splits(
            {s: source.labels(s) for s in source.sets}, source.num_classes, protocol
        )
    else:
        plan = build_splits(source.train_labels, source.test_labels, protocol)
    if protocol.max_per_class:
        plan = cut_per_class(
            plan, {s: source.labels(s) for s in source.sets}, protocol.max_per_class
        )
    splits = materialise(source, plan)
    return PreparedData(build_manifest(source, plan, splits), splits, plan.indices), plan


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """Canonical JSON of a manifest (sorted keys), as stored."""
    buf = io.StringIO()
    json.dump(manifest, buf, indent=2, sort_keys=True)
    return buf.getvalue().encode()
