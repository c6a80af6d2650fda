"""scikit-learn's handwritten digits, brought to CIFAR's shape: the embedded, offline dataset.

1,797 grey 8×8 images of 10 digits ship inside scikit-learn. They are scaled to 0..255, resized
to 32×32 (bilinear) and repeated to RGB. Digits has no test set of its own: the last 30 images of
each class (in the file's order, no randomness) form the source test set (validation, 300 images),
the rest (144–153 per class) the source train set. The protocol then takes 120 per class for
train_balanced and 24 for test_balanced (the 5:1 ratio that fits the smallest class, 144), and the
long-tailed splits with the same profile and ratio as CIFAR-100.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ltexp.data.sources import SourceData, register_dataset, sha256_file

TEST_PER_CLASS = 30


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images.astype(np.float32))[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


@register_dataset("digits", "scikit-learn's 8×8 handwritten digits at 32×32 RGB (no download)")
def load_digits(root: Path, download: bool = True) -> SourceData:
    """Load the digits shipped with scikit-learn (``root`` and ``download`` are not needed)."""
    import sklearn.datasets
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    grey = np.clip(bunch.images * (255.0 / 16.0), 0, 255)
    images = np.repeat(_resize(grey, 32)[..., None], 3, axis=3)
    labels = bunch.target.astype(np.int64)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        is_test[np.flatnonzero(labels == c)[-TEST_PER_CLASS:]] = True
    data_file = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    checksums = {"sklearn/datasets/data/digits.csv.gz": {"sha256": sha256_file(data_file)}}
    return SourceData(
        "digits",
        np.ascontiguousarray(images[~is_test]),
        labels[~is_test],
        np.ascontiguousarray(images[is_test]),
        labels[is_test],
        [str(c) for c in range(10)],
        checksums,
        n_train_per_class=120,
        n_test_per_class=24,
    )
