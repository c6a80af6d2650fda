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
import re
from pathlib import Path

import numpy as np

from ltexp.data.files import MAX_IMAGE_PIXELS, SETS, FileListing, source_from_files
from ltexp.data.sources import DatasetOption, SourceData, register_dataset
from ltexp.errors import DataError

OPTIONS = (
    DatasetOption("train", "", "train list file, relative to data_root (required)", str),
    DatasetOption("val", "", "validation list file (default: carved from train)", str),
    DatasetOption("test", "", "test list file (default: carved from train)", str),
    DatasetOption("names", "", "class names file, line i naming label i", str),
    DatasetOption("image_root", "", "folder the listed paths are relative to (data_root)", str),
)


# An integer label: ASCII digits only (int() would also take "²" or Arabic-Indic digits).
_INTEGER = re.compile(r"-?[0-9]+")


def preview(text: str, keep: int = 6) -> str:
    """A short, quoted form of text read from a file, for an error line: its first characters
    only (an error is stored in the run, and the file may be anything: /etc/shadow)."""
    shown = text[:keep] + ("…" if len(text) > keep else "")
    return repr(shown) + (f" ({len(text)} characters)" if len(text) > keep else "")


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of a list or names file; one line when it cannot be read."""
    if path.is_dir():
        raise DataError(f"{what} {str(path)!r} is a folder; give a text file")
    if not path.is_file():
        raise DataError(f"{what} {str(path)!r} does not exist")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{what} {str(path)!r} is not UTF-8 text (byte {e.start}); save it as UTF-8"
        ) from None
    except OSError as e:
        raise DataError(f"cannot read {what} {str(path)!r} ({e.strerror or e})") from None


def read_list(path: Path) -> list[tuple[int, str, str]]:
    """``(line, relative path, label)`` rows of a list file: ``path label`` lines or a CSV."""
    text = read_text(path, "list file")
    first = text.splitlines()[0].strip().lower() if text.strip() else ""
    rows: list[tuple[int, str, str]] = []
    if path.suffix.lower() == ".csv" or first.replace(" ", "") == "path,label":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise DataError(f"{str(path)!r} needs a header with the columns path,label")
        for row in reader:
            line = reader.line_num
            file, label = row.get("path"), row.get("label")
            if not file or not file.strip() or label is None or not label.strip():
                raise DataError(f"line {line} of {str(path)!r} needs a path and a label")
            rows.append((line, file.strip(), label.strip()))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            parts = line.strip().rsplit(maxsplit=1)
            if len(parts) != 2:
                raise DataError(
                    f"line {n} of {str(path)!r} is not 'path label' ({len(parts)} field); "
                    f"each line names an image and its label"
                )
            rows.append((n, parts[0], parts[1]))
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
    files = {s: f for s, f in (("train", train), ("val", val), ("test", test)) if f}
    rows = {s: read_list(root / f) for s, f in files.items()}
    class_names = (
        [n.strip() for n in read_text(root / names, "names file").splitlines() if n.strip()]
        if names
        else []
    )
    every = [(s, row) for s, r in rows.items() for row in r]
    integers = [_INTEGER.fullmatch(lab) is not None for _, (_, _, lab) in every]
    numeric = all(integers)
    if any(integers) and not numeric and not class_names:
        s, (line, _, lab) = every[integers.index(False)]
        raise DataError(
            f"label {preview(lab)} on line {line} of {files[s]!r} is not an integer, while "
            f"other labels are: labels are all integers 0..K-1, or all class names (give "
            f"filelist_names for names that look like numbers)"
        )
    if numeric:
        # refused before K class names are allocated: every class needs a training image
        n_train = len(rows["train"])
        line, _, top = max(rows["train"], key=lambda r: int(r[2]))
        k = len(class_names) or 1 + int(top)
        if not class_names and k > n_train:
            raise DataError(
                f"label {preview(top, 12)} on line {line} of {files['train']!r} implies {k:,} "
                f"classes, but the train list has {n_train:,} images; labels are 0..K-1"
            )
        class_names = class_names or [f"class_{i}" for i in range(k)]
        label_of = None
    else:
        class_names = class_names or sorted({lab for _, _, lab in rows["train"]})
        label_of = {c: i for i, c in enumerate(class_names)}
    paths: dict[str, list[Path]] = {}
    labels: dict[str, np.ndarray] = {}
    for s in SETS:
        if s not in rows:
            continue
        paths[s] = [images / p for _, p, _ in rows[s]]
        if label_of is None:
            values = [int(lab) for _, _, lab in rows[s]]
            bad = next((i for i, v in enumerate(values) if not 0 <= v < len(class_names)), None)
            if bad is not None:  # an int64 holds neither 1e20 nor a wrap-around
                line, _, lab = rows[s][bad]
                raise DataError(
                    f"label {preview(lab, 12)} on line {line} of {files[s]!r} is outside the "
                    f"{len(class_names)} classes (labels 0..{len(class_names) - 1}); fix the "
                    f"list or filelist_names"
                )
            labels[s] = np.asarray(values, dtype=np.int64)
        else:
            unknown = next((r for r in rows[s] if r[2] not in label_of), None)
            if unknown is not None:
                line, _, lab = unknown
                raise DataError(
                    f"label {preview(lab)} on line {line} of {files[s]!r} is not a class of "
                    f"train ({len(class_names)} classes); fix the list or filelist_names"
                )
            labels[s] = np.asarray([label_of[lab] for _, _, lab in rows[s]], dtype=np.int64)
    return FileListing(root, class_names, paths, labels)


@register_dataset(
    "filelist",
    "images named by list files (ImageNet-LT, Places-LT, iNaturalist 2018 splits, or a CSV)",
    options=OPTIONS,
    settings=("storage_size", "skip_bad_images", "max_image_pixels"),
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
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> SourceData:
    """Load the images the list files name through the decoded cache (no download)."""
    listing = list_files(root, train, val, test, names, image_root)
    return source_from_files("filelist", listing, storage_size, skip_bad_images, max_image_pixels)
