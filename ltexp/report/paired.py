"""Paired comparisons: is a loss better than the Softmax loss on the same test images?

Two models tested on the same images are compared image by image: the difference of their
top-1 accuracies, with a 95 % paired-bootstrap interval that resamples the test images jointly
for both models (Efron & Tibshirani 1993, ch. 13). Resampling them jointly keeps the correlation
between the two models' errors, so the interval is much tighter than two separate intervals
would suggest, and honest: where it excludes 0, the difference is not an accident of which
images the test set happens to hold. With several seeds, each image's difference is first
averaged over the seeds (the images are the same for every seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedDifference:
    """``acc(a) − acc(b)`` on ``n`` images, its interval, and whether the interval excludes 0."""

    diff: float
    ci_low: float
    ci_high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.n > 0 and (self.ci_low > 0 or self.ci_high < 0)


def paired_bootstrap(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> PairedDifference:
    """Difference of top-1 accuracy of model a and model b on the same images.

    Args:
        correct_a, correct_b: 0/1 per image, ``(N,)``, or ``(S, N)`` for S seeds; image i of a
            and of b is the same image.
        samples: bootstrap resamples.
        seed: seed of the resampling.
        level: the interval's coverage.

    Returns:
        The mean difference and its percentile interval (NaN when there are no images).
    """
    a = np.atleast_2d(np.asarray(correct_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(correct_b, dtype=np.float64))
    if a.shape != b.shape:
        raise ValueError(f"paired predictions differ in shape: {a.shape} vs {b.shape}")
    per_image = (a - b).mean(axis=0)  # over seeds
    n = per_image.size
    if n == 0:
        return PairedDifference(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    # in chunks, so a large test set never holds samples × N indices at once
    means = np.concatenate(
        [
            per_image[rng.integers(0, n, size=(min(256, samples - start), n))].mean(axis=1)
            for start in range(0, samples, 256)
        ]
    )
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return PairedDifference(float(per_image.mean()), float(low), float(high), n)
