"""Your own images in class folders (torchvision's ImageFolder layout), long-tailed as given.

``data_root/train/<class>/<image>``, and optionally ``val/`` and ``test/`` in the same layout.
Class names are the train folder names, sorted (label i = the i-th name). Images are found
recursively by extension (JPEG, PNG, WebP, BMP, any case); hidden files and folders are ignored. A
set without ``val/`` or ``test/`` has them carved from train (``ltexp.data.splits``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ltexp.data.files import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    SETS,
    FileListing,
    source_from_files,
)
from ltexp.data.sources import SourceData, register_dataset
from ltexp.errors import DataError


def list_folder_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted), hidden ones left out."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def list_imagefolder(root: Path) -> FileListing:
    """The listing of an ImageFolder tree (see the module docstring)."""
    train = root / "train"
    if not train.is_dir():
        raise DataError(
            f"{str(root)!r} has no train/ folder; imagefolder reads "
            f"data_root/train/<class>/<image> (and optional val/ and test/ alike)"
        )
    classes = sorted(d.name for d in train.iterdir() if d.is_dir() and not d.name.startswith("."))
    label_of = {c: i for i, c in enumerate(classes)}
    paths: dict[str, list[Path]] = {}
    labels: dict[str, np.ndarray] = {}
    for name in SETS:
        folder = root / name
        if not folder.is_dir():
            continue
        files, targets = [], []
        for class_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
            if class_dir.name.startswith("."):
                continue
            if class_dir.name not in label_of:
                raise DataError(
                    f"class {class_dir.name!r} in {name}/ is not in train/; every class of "
                    f"{name}/ needs a train/ folder of the same name"
                )
            found = list_folder_images(class_dir)
            if not found:
                raise DataError(
                    f"class folder {str(class_dir)!r} holds no image "
                    f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder"
                )
            files += found
            targets += [label_of[class_dir.name]] * len(found)
        paths[name] = files
        labels[name] = np.asarray(targets, dtype=np.int64)
    return FileListing(root, classes, paths, labels)


@register_dataset(
    "imagefolder",
    "your own images: data_root/train/<class>/* (val/, test/ optional), long-tailed as given",
    settings=("storage_size", "skip_bad_images", "max_image_pixels"),
    files_are_data=True,
)
def load_imagefolder(
    root: Path,
    download: bool = True,
    storage_size: int = 256,
    skip_bad_images: bool = False,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> SourceData:
    """Load an ImageFolder tree through the decoded cache (``download`` does not apply)."""
    listing = list_imagefolder(root)
    return source_from_files(
        "imagefolder", listing, storage_size, skip_bad_images, max_image_pixels
    )
