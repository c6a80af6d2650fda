"""Procedural class-conditional images: any number of classes, images and size, seeded.

Each class has a prototype (a smooth random colour pattern, upsampled from 4×4); an image is its
class prototype shifted by up to 2 pixels, with random contrast and Gaussian noise. A small CNN
learns it in a few epochs, so it stands in for CIFAR at any scale in tests and benchmarks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ltexp.data.sources import DatasetOption, SourceData, register_dataset, sha256_arrays
from ltexp.resources import check_fits


def _prototypes(rng: np.random.Generator, num_classes: int, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    coarse = torch.from_numpy(rng.uniform(0, 255, (num_classes, 3, 4, 4)).astype(np.float32))
    fine = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return fine.permute(0, 2, 3, 1).numpy()


def _sample(
    rng: np.random.Generator, protos: np.ndarray, per_class: int
) -> tuple[np.ndarray, np.ndarray]:
    num_classes, size = protos.shape[0], protos.shape[1]
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    images = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    shifts = rng.integers(-2, 3, size=(len(labels), 2))
    contrast = rng.uniform(0.7, 1.3, size=(len(labels), 1, 1, 1)).astype(np.float32)
    for start in range(0, len(labels), 4096):  # chunks keep memory flat at CIFAR scale
        sl = slice(start, start + 4096)
        x = protos[labels[sl]] * contrast[sl]
        for i, (dy, dx) in enumerate(shifts[sl]):
            x[i] = np.roll(x[i], (dy, dx), axis=(0, 1))
        x += rng.normal(0, 24, size=x.shape).astype(np.float32)
        images[sl] = np.clip(x, 0, 255).astype(np.uint8)
    return images, labels


@register_dataset(
    "synthetic",
    "procedural class-conditional images, seeded, any size",
    options=(
        DatasetOption(
            "num_classes", 10, "number of classes", key="synthetic_classes", low=2, high=100_000
        ),
        DatasetOption("train_per_class", 200, "source train images per class", low=2, high=100_000),
        DatasetOption(
            "test_per_class", 40, "source test (validation) images per class", low=1, high=100_000
        ),
        DatasetOption("image_size", 32, "image side in pixels", low=8, high=1024),
        DatasetOption("seed", 0, "seed of the generated images", low=0, high=2**32 - 1),
    ),
)
def load_synthetic(
    root: Path,
    download: bool = True,
    num_classes: int = 10,
    train_per_class: int = 200,
    test_per_class: int = 40,
    image_size: int = 32,
    seed: int = 0,
) -> SourceData:
    """Generate the synthetic dataset; the protocol keeps 90% / 10% of train for balanced splits."""
    images = num_classes * (train_per_class + test_per_class)
    check_fits(
        images * image_size * image_size * 3 + 4096 * image_size * image_size * 3 * 4 * 2,
        f"the synthetic dataset ({images:,} images of {image_size}×{image_size})",
        "lower synthetic_image_size or the images per class",
    )
    rng = np.random.default_rng(seed)
    protos = _prototypes(rng, num_classes, image_size)
    train_images, train_labels = _sample(rng, protos, train_per_class)
    test_images, test_labels = _sample(rng, protos, test_per_class)
    n_train = max(1, int(0.9 * train_per_class))
    checksums = {
        "generated": {"sha256": sha256_arrays(train_images, train_labels, test_images, test_labels)}
    }
    return SourceData(
        "synthetic",
        train_images,
        train_labels,
        test_images,
        test_labels,
        [f"class_{i}" for i in range(num_classes)],
        checksums,
        n_train_per_class=n_train,
        n_test_per_class=max(1, train_per_class - n_train),
    )
