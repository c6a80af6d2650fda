"""CIFAR-100 and CIFAR-10 (Krizhevsky 2009): 60,000 32×32 RGB images each, 100 classes (500 train
+ 100 test per class) or 10 classes (5,000 + 1,000).

Files are fetched by torchvision (``datasets.CIFAR100`` / ``CIFAR10``, ``download=True``) into
``root/cifar-100-python/`` or ``root/cifar-10-batches-py/``. They are then read here with a
restricted unpickler that only admits the NumPy types the format uses, so a tampered file cannot
run code; the md5 sums torchvision publishes for the official releases are checked and recorded
with each file's sha256. Both releases share this reader: a :class:`Release` says where each
one keeps its batches, labels and names.

CIFAR-10-LT (Cao et al. 2019) is CIFAR-10 with the protocol's long-tailed splits: the exp profile
with ``imbalance_ratio`` 10, 50 or 100 (the three ratios the literature reports).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ltexp.data.sources import SourceData, register_dataset, sha256_file
from ltexp.errors import OFFLINE_ALTERNATIVE, DataError


@dataclass(frozen=True)
class Release:
    """Where a CIFAR release keeps its data, and the protocol's sizes for it."""

    name: str  # the registry name
    title: str
    folder: str
    url: str
    train_files: dict[str, str]  # file name → official md5 (torchvision's)
    test_files: dict[str, str]
    meta_file: tuple[str, str]
    label_key: str
    names_key: str
    torchvision_class: str
    n_train_per_class: int  # train_balanced per class (the rest of a class's 500/5,000 is
    n_test_per_class: int  # test_balanced); the official test set is the validation set

    @property
    def files(self) -> dict[str, str]:
        """Every file of the release → its official md5."""
        return {**self.train_files, **self.test_files, self.meta_file[0]: self.meta_file[1]}


CIFAR100 = Release(
    "cifar100",
    "CIFAR-100",
    "cifar-100-python",
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    {"train": "16019d7e3df5f24257cddd939b257f8d"},
    {"test": "f0ef6b0ae62326f3e7ffdfab6717acfc"},
    ("meta", "7973b15100ade9c7d40fb424638fde48"),
    label_key="fine_labels",
    names_key="fine_label_names",
    torchvision_class="CIFAR100",
    n_train_per_class=450,
    n_test_per_class=50,
)
CIFAR10 = Release(
    "cifar10",
    "CIFAR-10",
    "cifar-10-batches-py",
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    },
    {"test_batch": "40351d587109b95175f43aff81a1287e"},
    ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
    label_key="labels",
    names_key="label_names",
    torchvision_class="CIFAR10",
    n_train_per_class=4500,
    n_test_per_class=500,
)
# numpy's pickled-array reconstruction (old and new module names), and the codec that
# protocol-2 pickles use for bytes: data constructors only, nothing that runs code.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_batch(path: Path) -> dict[str, Any]:
    """Read one file of the CIFAR python format (a pickled dict) without running code."""
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
    ) as e:
        raise DataError(
            f"{str(path)!r} is corrupt or not a CIFAR file ({e or type(e).__name__});"
            f" delete {str(path.parent)!r} and download again"
        ) from None
    if not isinstance(data, dict):
        raise DataError(f"{str(path)!r} is not a CIFAR file (no dict inside)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def _images_labels(
    batch: dict[str, Any], path: Path, label_key: str
) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    except (KeyError, ValueError) as e:
        raise DataError(f"{str(path)!r} is not a CIFAR file of this release ({e})") from None
    if len(images) != len(labels):
        raise DataError(f"{str(path)!r} is corrupt: {len(images)} images, {len(labels)} labels")
    return np.ascontiguousarray(images), labels


def _check_labels(labels: np.ndarray, path: Path, classes: int) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(
            f"{str(path)!r} holds labels from {labels.min()} to {labels.max()}, outside 0-"
            f"{classes - 1} of this release; delete it and download again"
        )


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(release: Release, root: Path, missing: list[str]) -> None:
    import torchvision

    try:
        getattr(torchvision.datasets, release.torchvision_class)(str(root), download=True)
    except Exception as e:  # noqa: BLE001 - offline: turned into one clear line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"{release.title} is not in {str(root / release.folder)!r} (missing: "
            f"{', '.join(missing)}) and the download failed ({first}). On a networked machine "
            f"run `ltexp prepare-data --dataset {release.name} --data-root DIR`, or download "
            f"{release.url} and extract it into {str(root)!r}; {OFFLINE_ALTERNATIVE}"
        ) from None


def _read_set(release: Release, folder: Path, files: dict[str, str]) -> tuple[np.ndarray, ...]:
    classes = 100 if release.name == "cifar100" else 10
    parts = []
    for name in files:
        images, labels = _images_labels(read_batch(folder / name), folder / name, release.label_key)
        _check_labels(labels, folder / name, classes)
        parts.append((images, labels))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _extract(release: Release, archive: Path, root: Path) -> None:
    """Extract the release's archive, as the download does, refusing what is not its files:
    members outside its folder, links and devices (``tarfile``'s ``data`` filter)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            wanted = {f"{release.folder}/{name}" for name in release.files}
            found = {m.name.removeprefix("./") for m in members}
            if not wanted <= found:
                raise DataError(
                    f"{str(archive)!r} holds no {', '.join(sorted(wanted - found))}: it is not "
                    f"the {release.title} archive; delete it and download {release.url} again"
                )
            tar.extractall(
                root,
                members=[m for m in members if m.name.removeprefix("./") in wanted],
                filter="data",
            )
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(
            f"{str(archive)!r} is truncated or not a gzip tar ({e or type(e).__name__}); "
            f"delete it and download {release.url} again"
        ) from None


def load_release(release: Release, root: Path, download: bool = True) -> SourceData:
    """Load a CIFAR release from ``root/<its folder>``, downloading it first if allowed."""
    folder = root / release.folder
    missing = [n for n in release.files if not (folder / n).is_file()]
    archive = root / Path(release.url).name
    if missing and archive.is_file():  # the archive the download left, not yet extracted
        _extract(release, archive, root)
        missing = [n for n in release.files if not (folder / n).is_file()]
    if missing:
        if not download:
            raise DataError(
                f"{release.title} files {missing} are missing in {str(folder)!r}; set "
                f"download=true, or download {release.url} and extract it into {str(root)!r}"
            )
        _download(release, root, missing)
    checksums = {
        f"{release.folder}/{name}": {
            "sha256": sha256_file(folder / name),
            "official": _md5(folder / name) == md5,
        }
        for name, md5 in release.files.items()
    }
    train_images, train_labels = _read_set(release, folder, release.train_files)
    test_images, test_labels = _read_set(release, folder, release.test_files)
    meta = read_batch(folder / release.meta_file[0])
    names = [
        n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(release.names_key, [])
    ]
    k = int(max(train_labels.max(), test_labels.max())) + 1
    if len(names) != k:
        names = [f"class_{i}" for i in range(k)]
    return SourceData(
        release.name,
        train_images,
        train_labels,
        test_images,
        test_labels,
        names,
        checksums,
        n_train_per_class=release.n_train_per_class,
        n_test_per_class=release.n_test_per_class,
    )


@register_dataset("cifar100", "CIFAR-100, 100 classes, read from torchvision's on-disk format")
def load_cifar100(root: Path, download: bool = True) -> SourceData:
    """Load CIFAR-100 from ``root/cifar-100-python``, downloading it first if allowed."""
    return load_release(CIFAR100, root, download)


@register_dataset(
    "cifar10", "CIFAR-10 (CIFAR-10-LT with the protocol's splits), read like CIFAR-100"
)
def load_cifar10(root: Path, download: bool = True) -> SourceData:
    """Load CIFAR-10 from ``root/cifar-10-batches-py``, downloading it first if allowed."""
    return load_release(CIFAR10, root, download)
