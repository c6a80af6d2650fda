"""Softmax cross-entropy and its class re-weighted variants (wce, cb).

All three are ``ℓ_i = −log softmax(z_i)_{y_i}``; they differ only in the class weights the base
class applies (normalised to mean 1 over classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from ltexp.losses.base import ClassAwareLoss, class_balanced_weights, normalise_weights
from ltexp.losses.base import validate_class_counts as _counts
from ltexp.losses.registry import HParam, register_loss


class CrossEntropyLoss(ClassAwareLoss):
    """``−log softmax(z)_y``, optionally class-weighted (see :class:`ClassAwareLoss`) and with
    label smoothing (the target ``(1 − ε)·onehot(y) + ε/K``)."""

    smoothable = True

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(
            logits, target, reduction="none", label_smoothing=self.label_smoothing
        )


@register_loss("ce", "Softmax loss", paper="softmax cross-entropy")
def build_ce(class_counts: Sequence[int] | Tensor, **drw: float) -> CrossEntropyLoss:
    """Plain softmax cross-entropy."""
    return CrossEntropyLoss(class_counts, **drw)


@register_loss(
    "wce", "Weighted Softmax loss", paper="inverse class frequency weighting, w_k ∝ 1/π_k"
)
def build_wce(class_counts: Sequence[int] | Tensor, **drw: float) -> CrossEntropyLoss:
    """Cross-entropy weighted by ``1/π_y`` (inverse class frequency), weights of mean 1."""
    counts = _counts(class_counts)
    return CrossEntropyLoss(counts, class_weights=normalise_weights(1.0 / counts), **drw)


CB_BETA = HParam(
    "beta",
    0.9999,
    "β of the effective number (1 − β^n)/(1 − β) (Cui et al. 2019 use 0.9999 on CIFAR-100-LT "
    "with softmax)",
    low=0.0,
    high=0.999999999,
)


@register_loss(
    "cb",
    "Class-balanced loss",
    hparams=[CB_BETA],
    paper="Cui et al., Class-Balanced Loss Based on Effective Number of Samples, CVPR 2019",
)
def build_cb(
    class_counts: Sequence[int] | Tensor, beta: float = 0.9999, **drw: float
) -> CrossEntropyLoss:
    """Cross-entropy weighted by ``(1 − β)/(1 − β^{n_y})``, weights of mean 1."""
    counts = _counts(class_counts)
    return CrossEntropyLoss(counts, class_weights=class_balanced_weights(counts, beta), **drw)


@register_loss(
    "cb_raw",
    "Class-balanced loss (unnormalised)",
    hparams=[CB_BETA],
    paper="the thesis's form of Cui et al. 2019: the weights (1 − β)/(1 − β^n) not normalised "
    "to mean 1, which scales the loss down (on balanced CIFAR-100 by about 0.0023)",
)
def build_cb_raw(
    class_counts: Sequence[int] | Tensor, beta: float = 0.9999, **drw: float
) -> CrossEntropyLoss:
    """Cross-entropy weighted by ``(1 − β)/(1 − β^{n_y})`` as the formula gives them."""
    counts = _counts(class_counts)
    weights = class_balanced_weights(counts, beta, normalise=False)
    return CrossEntropyLoss(counts, class_weights=weights, **drw)
