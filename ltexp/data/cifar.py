"""CIFAR-100 (Krizhevsky 2009): 60,000 32×32 RGB images, 100 classes, 500 train + 100 test each.

Files are fetched by ``torchvision.datasets.CIFAR100(root, download=True)`` into
``root/cifar-100-python/``. They are then read here with a restricted unpickler that only admits
the NumPy types the format uses, so a tampered file cannot run code; the md5 sums torchvision
publishes for the official release are checked and recorded with each file's sha256.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ltexp.data.sources import SourceData, register_dataset, sha256_file
from ltexp.errors import OFFLINE_ALTERNATIVE, DataError

FOLDER = "cifar-100-python"
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
# md5 of the official release's files, as published by torchvision.datasets.CIFAR100.
OFFICIAL_MD5 = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
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


def _images_labels(batch: dict[str, Any], path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["fine_labels"], dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    except (KeyError, ValueError) as e:
        raise DataError(f"{str(path)!r} is not a CIFAR-100 file ({e})") from None
    if len(images) != len(labels):
        raise DataError(f"{str(path)!r} is corrupt: {len(images)} images, {len(labels)} labels")
    return np.ascontiguousarray(images), labels


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(root: Path, missing: list[str]) -> None:
    import torchvision

    try:
        torchvision.datasets.CIFAR100(str(root), train=True, download=True)
    except Exception as e:  # noqa: BLE001 - offline: turned into one clear line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"CIFAR-100 is not in {str(root / FOLDER)!r} (missing: {', '.join(missing)}) and the "
            f"download failed ({first}). On a networked machine run `ltexp prepare-data "
            f"--dataset cifar100 --data-root DIR`, or download {URL} and extract it into "
            f"{str(root)!r}; {OFFLINE_ALTERNATIVE}"
        ) from None


@register_dataset("cifar100", "CIFAR-100, 100 classes, read from torchvision's on-disk format")
def load_cifar100(root: Path, download: bool = True) -> SourceData:
    """Load CIFAR-100 from ``root/cifar-100-python``, downloading it first if allowed."""
    folder = root / FOLDER
    missing = [n for n in OFFICIAL_MD5 if not (folder / n).is_file()]
    if missing:
        if not download:
            raise DataError(
                f"CIFAR-100 files {missing} are missing in {str(folder)!r}; set "
                f"download=true, or download {URL} and extract it into {str(root)!r}"
            )
        _download(root, missing)
    checksums = {}
    for name in OFFICIAL_MD5:
        path = folder / name
        checksums[f"{FOLDER}/{name}"] = {
            "sha256": sha256_file(path),
            "official": _md5(path) == OFFICIAL_MD5[name],
        }
    train_images, train_labels = _images_labels(read_batch(folder / "train"), folder / "train")
    test_images, test_labels = _images_labels(read_batch(folder / "test"), folder / "test")
    meta = read_batch(folder / "meta")
    names = [
        n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("fine_label_names", [])
    ]
    k = int(max(train_labels.max(), test_labels.max())) + 1
    if len(names) != k:
        names = [f"class_{i}" for i in range(k)]
    return SourceData(
        "cifar100",
        train_images,
        train_labels,
        test_images,
        test_labels,
        names,
        checksums,
        n_train_per_class=450,
        n_test_per_class=50,
    )
