"""Mixing two images of a batch, and their labels: mixup, CutMix and Remix, as batch ops.

A batch is mixed with a permutation of itself, with a factor λ ~ Beta(α, α) per batch:

- **mixup** (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018):
  x̃ = λ·x_a + (1 − λ)·x_b; the loss is λ·ℓ(y_a) + (1 − λ)·ℓ(y_b). α = 1 (their CIFAR setting).
- **CutMix** (Yun et al., ICCV 2019): a box of x_b, of area (1 − λ) of the image at a uniform
  centre, is pasted into x_a; λ becomes the area left of x_a exactly. α = 1, and a batch is cut
  with probability 0.5 (their CIFAR training, ``--cutmix_prob 0.5``).
- **Remix** (Chou et al., "Remix: Rebalanced Mixup", ECCV 2020 workshops): images mixed as
  mixup, but the label factor favours the rarer class: λ_y = 0 when n_{y_a} / n_{y_b} ≥ κ and
  λ < τ; λ_y = 1 when n_{y_a} / n_{y_b} ≤ 1/κ and 1 − λ < τ; else λ_y = λ. κ = 3, τ = 0.5, α = 1
  (their CIFAR-LT settings).

λ and the permutation of a batch come from the epoch's seeded generator, so a resumed run mixes
an epoch exactly as the uninterrupted run did. λ = 1 leaves the batch as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ltexp.errors import unknown_name_error

MIXINGS = ("none", "mixup", "cutmix", "remix")
# the probability a batch is mixed, as each paper trained CIFAR (``mixing_prob`` overrides it)
PAPER_PROB = {"none": 0.0, "mixup": 1.0, "cutmix": 0.5, "remix": 1.0}


@dataclass
class Mixed:
    """A mixed batch: images, the two label sets, and each sample's weight of ``y_a``."""

    images: Tensor
    y_a: Tensor
    y_b: Tensor
    weight_a: Tensor  # [B]: the loss is w·ℓ(y_a) + (1 − w)·ℓ(y_b)


def mixup(x: Tensor, y: Tensor, lam: float, perm: Tensor) -> Mixed:
    """mixup with factor ``lam`` and partner permutation ``perm``."""
    images = lam * x + (1.0 - lam) * x[perm]
    return Mixed(images, y, y[perm], torch.full(y.shape, lam, device=y.device))


def cutmix(x: Tensor, y: Tensor, lam: float, perm: Tensor, centre: tuple[float, float]) -> Mixed:
    """CutMix: a box of area ``1 − lam`` centred at ``centre`` (fractions of H, W) from the
    partner; the weight of ``y`` is the area left to ``x``."""
    h, w = x.shape[-2:]
    cut = float(np.sqrt(1.0 - lam))
    ch, cw = round(h * cut), round(w * cut)
    cy, cx = int(centre[0] * h), int(centre[1] * w)
    top, bottom = max(cy - ch // 2, 0), min(cy + (ch + 1) // 2, h)
    left, right = max(cx - cw // 2, 0), min(cx + (cw + 1) // 2, w)
    images = x.clone()
    images[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
    kept = 1.0 - (bottom - top) * (right - left) / (h * w)
    return Mixed(images, y, y[perm], torch.full(y.shape, kept, device=y.device))


def remix_weights(
    lam: float, counts_a: Tensor, counts_b: Tensor, kappa: float, tau: float
) -> Tensor:
    """Remix's label factor per sample from the two classes' training counts."""
    ratio = counts_a / counts_b
    weight = torch.full(ratio.shape, lam, dtype=torch.float32, device=ratio.device)
    weight = torch.where((ratio >= kappa) & (lam < tau), torch.zeros_like(weight), weight)
    return torch.where((ratio <= 1.0 / kappa) & (1.0 - lam < tau), torch.ones_like(weight), weight)


class Mixer:
    """Mixes the batches of one epoch (see the module docstring).

    Args:
        kind: none, mixup, cutmix or remix.
        alpha: the Beta(α, α) of λ.
        class_counts: training images per class (Remix).
        kappa, tau: Remix's κ and τ.
        prob: the probability a batch is mixed (default: the paper's, :data:`PAPER_PROB`).
    """

    def __init__(
        self,
        kind: str,
        alpha: float = 1.0,
        class_counts: list[int] | None = None,
        kappa: float = 3.0,
        tau: float = 0.5,
        prob: float | None = None,
    ) -> None:
        if kind not in MIXINGS:
            raise unknown_name_error("mixing", kind, MIXINGS)
        self.kind, self.alpha, self.kappa, self.tau = kind, alpha, kappa, tau
        self.prob = PAPER_PROB[kind] if prob is None else prob
        self.counts = torch.as_tensor(class_counts or [1], dtype=torch.float32)
        self.rng: np.random.Generator | None = None

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def start_epoch(self, seed: int, epoch: int) -> None:
        """The epoch's randomness, from the run's seed (a resumed epoch draws the same)."""
        self.rng = np.random.default_rng([seed, epoch, 0x4D4958])

    def __call__(self, x: Tensor, y: Tensor) -> Mixed:
        """Mix one batch."""
        assert self.rng is not None, "start_epoch() first"
        if self.rng.random() >= self.prob:  # this batch is left as it is
            return Mixed(x, y, y, torch.ones(y.shape, device=y.device))
        lam = float(self.rng.beta(self.alpha, self.alpha))
        perm = torch.as_tensor(self.rng.permutation(len(y)), device=y.device)
        if self.kind == "cutmix":
            return cutmix(x, y, lam, perm, (float(self.rng.random()), float(self.rng.random())))
        mixed = mixup(x, y, lam, perm)
        if self.kind == "remix":
            counts = self.counts.to(y.device)
            mixed.weight_a = remix_weights(lam, counts[y], counts[y[perm]], self.kappa, self.tau)
        return mixed
