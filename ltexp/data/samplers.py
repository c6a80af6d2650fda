"""Which training images an epoch visits: instance, class-balanced, square-root, progressive.

Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition", ICLR 2020,
write every sampler as a class distribution: class j is drawn with probability

    p_j(q) = n_j^q / Σ_i n_i^q,

then an image uniformly among that class's n_j images. q = 1 is instance-balanced (every image
equally likely: ltexp draws a permutation, as plain training does), q = 0 class-balanced, q = ½
square-root. Progressive-balanced moves from the first to the second over training:

    p_j(t) = (1 − t/T) · p_j(1) + (t/T) · p_j(0),  t = epoch − 1, T = epochs − 1.

An epoch draws as many images as the training set holds (with replacement, except for instance
sampling). Draws come from the epoch's seeded generator, so a resumed run replays an epoch exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ltexp.errors import unknown_name_error


def _power(q: float) -> Callable[[np.ndarray, int, int], np.ndarray]:
    def probabilities(counts: np.ndarray, epoch: int, epochs: int) -> np.ndarray:
        weights = counts.astype(np.float64) ** q
        return weights / weights.sum()

    return probabilities


def _progressive(counts: np.ndarray, epoch: int, epochs: int) -> np.ndarray:
    t = (epoch - 1) / max(epochs - 1, 1)
    return (1.0 - t) * _power(1.0)(counts, epoch, epochs) + t * _power(0.0)(counts, epoch, epochs)


# name → class probabilities of an epoch (None: a permutation of the training set)
SAMPLERS: dict[str, Callable[[np.ndarray, int, int], np.ndarray] | None] = {
    "instance": None,
    "class_balanced": _power(0.0),
    "sqrt": _power(0.5),
    "progressive": _progressive,
}


def class_probabilities(name: str, counts: np.ndarray, epoch: int, epochs: int) -> np.ndarray:
    """``p_j`` of sampler ``name`` at ``epoch`` (1-based) of ``epochs``."""
    if name not in SAMPLERS:
        raise unknown_name_error("sampler", name, list(SAMPLERS))
    rule = SAMPLERS[name]
    counts = np.asarray(counts, dtype=np.float64)
    return counts / counts.sum() if rule is None else rule(counts, epoch, epochs)


def sample_order(
    labels: Tensor, name: str, epoch: int, epochs: int, generator: torch.Generator
) -> Tensor:
    """Indices of the images epoch ``epoch`` visits, in order (CPU, int64)."""
    n = len(labels)
    if SAMPLERS.get(name, "?") is None:
        return torch.randperm(n, generator=generator)
    counts = torch.bincount(labels).numpy()
    present = counts > 0
    p = np.zeros(len(counts))
    p[present] = class_probabilities(name, counts[present], epoch, epochs)
    classes = torch.multinomial(torch.as_tensor(p), n, replacement=True, generator=generator)
    by_class = torch.argsort(labels, stable=True)  # each class's images, contiguous
    start = torch.cumsum(torch.as_tensor(counts), 0) - torch.as_tensor(counts)
    within = (torch.rand(n, generator=generator) * torch.as_tensor(counts)[classes]).long()
    return by_class[start[classes] + within]
