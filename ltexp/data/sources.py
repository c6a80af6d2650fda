"""Source datasets behind one registry: each gives a source train and a source test set.

A source is held as one uint8 array ``(N, H, W, 3)`` and int64 labels per set: no per-image files.
The split protocol (``ltexp.data.splits``) builds every split as index arrays into these two sets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ltexp.errors import DataError, unknown_name_error

# the longest class name a registered model keeps (ltexp.tracking.registered_models refuses
# longer ones when it loads a version, so a set with one is refused when it is read)
MAX_CLASS_NAME = 200


def check_class_names(names: list[str]) -> None:
    """Refuse class names a registered model could not keep, or that would write terminal
    control bytes into a CSV: each 1-200 printable characters.

    Raises:
        DataError: naming the class, what is wrong and what would be right.
    """
    for index, name in enumerate(names):
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_CLASS_NAME:
            length = len(name) if isinstance(name, str) else 0
            raise DataError(
                f"class {index} is named {str(name)[:40]!r}{'…' if length > 40 else ''} "
                f"({length} characters): a class name must have 1 to {MAX_CLASS_NAME} "
                f"characters; rename it (its folder, or its line in the names file)"
            )
        if not name.isprintable():
            raise DataError(
                f"class {index}'s name {name[:40]!r} holds control characters (a terminal "
                f"escape, a newline); rename it with printable characters"
            )


@dataclass
class SourceData:
    """A dataset as loaded from disk (or generated): source train and test sets.

    Attributes:
        name: registry name.
        train_images, test_images: uint8 ``(N, H, W, 3)``.
        train_labels, test_labels: int64 ``(N,)``, labels ``0..K-1``.
        class_names: one name per label.
        checksums: per source file: ``sha256``, and ``official`` (matches the published release)
            where the dataset publishes checksums.
        n_train_per_class, n_test_per_class: the protocol's default sizes of train_balanced and
            test_balanced for this dataset (CIFAR-100: 450 and 50).
        options: the options it was loaded with (recorded, so it can be loaded again).
        val_images, val_labels: the set's own validation set, where it has one.
        long_tailed: the train set is long-tailed as given (``split_mode=auto`` keeps it:
            ``ltexp.data.splits.build_given_splits``), rather than a balanced source the
            protocol draws long-tailed splits from.
        skipped: images that could not be read and were skipped (``skip_bad_images``).
        cache: where an image-file set's decoded cache is (not recorded: a host's folder).
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    checksums: dict[str, dict[str, Any]]
    n_train_per_class: int
    n_test_per_class: int
    options: dict[str, Any] = field(default_factory=dict)
    val_images: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    long_tailed: bool = False
    skipped: list[str] = field(default_factory=list)
    cache: Path | None = None

    def __post_init__(self) -> None:
        check_class_names(self.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def sets(self) -> tuple[str, ...]:
        """The source sets it has: ``train``, then ``val`` and ``test`` where present."""
        has_val = self.val_labels is not None and len(self.val_labels) > 0
        return (
            "train",
            *(("val",) if has_val else ()),
            *(("test",) if len(self.test_labels) else ()),
        )

    def images(self, source: str) -> np.ndarray:
        """``train``, ``val`` or ``test`` images."""
        return {"train": self.train_images, "test": self.test_images, "val": self.val_images}[
            source
        ]

    def labels(self, source: str) -> np.ndarray:
        """``train``, ``val`` or ``test`` labels."""
        return {"train": self.train_labels, "test": self.test_labels, "val": self.val_labels}[
            source
        ]


@dataclass(frozen=True)
class DatasetOption:
    """An option of a dataset's loader, declared once: it becomes a config key and CLI option.

    Attributes:
        name: the loader's keyword (recorded in the manifest as given).
        default: the loader's default.
        help: one line for ``--help``.
        type: ``int``, ``float``, ``str`` or ``bool``.
        key: the config key (default ``<dataset>_<name>``).
        low, high: the allowed range (inclusive).
    """

    name: str
    default: Any
    help: str
    type: type = int
    key: str = ""
    low: float | None = None
    high: float | None = None

    def config_key(self, dataset: str) -> str:
        """The flat config key of this option of ``dataset``."""
        return self.key or f"{dataset}_{self.name}"


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: ``load(root, download, **options) -> SourceData``.

    ``settings`` names the ``data`` config keys shared by a kind of dataset (the image-file sets
    take ``storage_size`` and ``skip_bad_images``) that reach the loader beside its own options.
    ``files_are_data``: the files under ``data_root`` are the dataset (your own images), so two
    roots are two datasets; for a published set the root is only where its files are kept.
    """

    name: str
    load: Callable[..., SourceData]
    description: str
    options: tuple[DatasetOption, ...] = ()
    settings: tuple[str, ...] = ()
    files_are_data: bool = False

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options) + self.settings


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(
    name: str,
    description: str,
    options: tuple[DatasetOption, ...] = (),
    settings: tuple[str, ...] = (),
    files_are_data: bool = False,
):
    """Decorator registering a loader ``load(root: Path, download: bool, **options)``.

    Each option in ``options`` becomes a config key (``<name>_<option>`` unless it names its own)
    that reaches the loader as a keyword argument, as does each ``data`` key in ``settings``.
    ``files_are_data``: see :class:`DatasetSpec`.
    """

    def decorate(load: Callable[..., SourceData]) -> Callable[..., SourceData]:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        DATASETS[name] = DatasetSpec(
            name, load, description, tuple(options), tuple(settings), files_are_data
        )
        return load

    return decorate


def list_datasets() -> list[str]:
    """Registered dataset names."""
    return list(DATASETS)


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of ``name``; unknown names list the valid ones."""
    if name not in DATASETS:
        raise unknown_name_error("dataset", name, list(DATASETS))
    return DATASETS[name]


def load_source(
    name: str, root: str | Path = "~/.cache/ltexp", download: bool = True, **options: Any
) -> SourceData:
    """Load the source sets of dataset ``name``.

    Args:
        name: a registered dataset.
        root: folder holding (or receiving) its files; must not be a file.
        download: fetch missing files where the dataset can be downloaded.
        **options: dataset options (only those the dataset declares are passed on).

    Raises:
        DataError: files missing (offline), corrupt, or the root is not a folder.
    """
    spec = dataset_spec(name)
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"data_root {str(root)!r} is a file; give a folder")
    own = {k: v for k, v in options.items() if k in spec.option_names}
    source = spec.load(root, download, **own)
    source.options = own
    return source


def sha256_file(path: Path) -> str:
    """sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_arrays(*arrays: np.ndarray) -> str:
    """sha256 over the shapes, dtypes and bytes of arrays (C order, little-endian)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        if a.size:  # an empty split (a set long-tailed as given lacks some) adds only its shape
            h.update(memoryview(a).cast("B"))
    return h.hexdigest()
