"""Images named by list files: the published split files of ImageNet-LT, Places-LT and
iNaturalist 2018 (``ImageNet_LT_train.txt``: ``relative/path label`` lines), or a CSV with a
``path,label`` header.

``filelist_train`` (required), ``filelist_val`` and ``filelist_test`` name the list files, relative
to ``data_root``; the listed paths are relative to ``filelist_image_root`` (default: data_root).
Labels are integers ``0..K-1`` (class names from ``filelist_names``, one per line, else
``class_<i>``), or class names (then the classes are the train list's names, sorted, unless
``filelist_names`` gives them). Sets the lists do not give are carved from train.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ltexp.data.files import SETS, FileListing, source_from_files
from ltexp.data.sources import DatasetOption, SourceData, register_dataset
from ltexp.errors import DataError

OPTIONS = (
    DatasetOption("train", "", "train list file, relative to data_root (required)", str),
    DatasetOption("val", "", "validation list file (default: carved from train)", str),
    DatasetOption("test", "", "test list file (default: carved from train)", str),
    DatasetOption("names", "", "class names file, line i naming label i", str),
    DatasetOption("image_root", "", "folder the listed paths are relative to (data_root)", str),
)


def read_list(path: Path) -> list[tuple[str, str]]:
    """``(relative path, label)`` rows of a list file: ``path label`` lines or a CSV."""
    if not path.is_file():
        raise DataError(f"list file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8-sig")
    first = text.splitlines()[0].strip().lower() if text.strip() else ""
    rows: list[tuple[str, str]] = []
    if path.suffix.lower() == ".csv" or first.replace(" ", "") == "path,label":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise DataError(f"{str(path)!r} needs a header with the columns path,label")
        rows = [(r["path"].strip(), r["label"].strip()) for r in reader]
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            parts = line.strip().rsplit(maxsplit=1)
            if len(parts) != 2:
                raise DataError(f"line {n} of {str(path)!r} is not 'path label': {line.strip()!r}")
            rows.append((parts[0], parts[1]))
    if not rows:
        raise DataError(f"list file {str(path)!r} lists no image")
    return rows


def list_files(
    root: Path, train: str, val: str = "", test: str = "", names: str = "", image_root: str = ""
) -> FileListing:
    """The listing the list files give (see the module docstring)."""
    if not train:
        raise DataError(
            "filelist needs filelist_train=<list file> (relative to data_root), e.g. "
            "ImageNet_LT_train.txt"
        )
    images = root / image_root if image_root else root
    rows = {
        s: read_list(root / f) for s, f in (("train", train), ("val", val), ("test", test)) if f
    }
    class_names = (
        [n.strip() for n in (root / names).read_text().splitlines() if n.strip()] if names else []
    )
    numeric = all(lab.lstrip("-").isdigit() for r in rows.values() for _, lab in r)
    if numeric:
        k = len(class_names) or 1 + max(int(lab) for _, lab in rows["train"])
        class_names = class_names or [f"class_{i}" for i in range(k)]
        label_of = None
    else:
        class_names = class_names or sorted({lab for _, lab in rows["train"]})
        label_of = {c: i for i, c in enumerate(class_names)}
    paths: dict[str, list[Path]] = {}
    labels: dict[str, np.ndarray] = {}
    for s in SETS:
        if s not in rows:
            continue
        paths[s] = [images / p for p, _ in rows[s]]
        if label_of is None:
            labels[s] = np.asarray([int(lab) for _, lab in rows[s]], dtype=np.int64)
        else:
            unknown = next((lab for _, lab in rows[s] if lab not in label_of), None)
            if unknown is not None:
                raise DataError(
                    f"label {unknown!r} of the {s} list is not a class of train ("
                    f"{len(class_names)} classes); fix the list or filelist_names"
                )
            labels[s] = np.asarray([label_of[lab] for _, lab in rows[s]], dtype=np.int64)
    return FileListing(root, class_names, paths, labels)


@register_dataset(
    "filelist",
    "images named by list files (ImageNet-LT, Places-LT, iNaturalist 2018 splits, or a CSV)",
    options=OPTIONS,
    settings=("storage_size", "skip_bad_images"),
    files_are_data=True,
)
def load_filelist(
    root: Path,
    download: bool = True,
    train: str = "",
    val: str = "",
    test: str = "",
    names: str = "",
    image_root: str = "",
    storage_size: int = 256,
    skip_bad_images: bool = False,
) -> SourceData:
    """Load the images the list files name through the decoded cache (no download)."""
    listing = list_files(root, train, val, test, names, image_root)
    return source_from_files("filelist", listing, storage_size, skip_bad_images)
