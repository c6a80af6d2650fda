"""Softmax equalization loss (Tan et al., Equalization Loss for Long-Tailed Object Recognition,
CVPR 2020, softmax form for image classification).

``ℓ = −log( e^{z_y} / Σ_k w_k e^{z_k} )`` with ``w_k = 1 − β·T_λ(π_k)·(1 − y_k)``, where
``T_λ(π) = 1`` for a rare class (prior ``π < λ``) and ``β ~ Bernoulli(γ)`` is drawn per sample and
class. A rare class is thus, with probability γ, left out of the denominator of other classes'
samples: it is spared their discouraging gradients. γ = 0 or λ = 0 gives cross-entropy.

Since ``w_k ∈ {0, 1}`` the loss is a masked log-sum-exp: no exponential of raw logits, so it
stays finite for logits of any size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ltexp.losses.base import ClassAwareLoss
from ltexp.losses.registry import HParam, register_loss


class SoftmaxEqualizationLoss(ClassAwareLoss):
    """SEQL; see the module docstring. Draws its Bernoulli masks from torch's global RNG."""

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        gamma: float = 0.9,
        threshold: float = 0.005,
        **drw: float,
    ) -> None:
        super().__init__(class_counts, **drw)
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"seql gamma is a probability in [0, 1], got {gamma}")
        self.gamma = float(gamma)
        self.threshold = float(threshold)
        self.register_buffer("rare", self.log_prior.exp() < threshold)

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        drop = self.rare[None, :].expand_as(logits)
        if self.gamma < 1.0:
            drop = drop & (torch.rand(logits.shape, device=logits.device) < self.gamma)
        # the true class is never dropped (1 − y_k = 0)
        drop = drop.scatter(1, target[:, None], False)
        masked = logits.masked_fill(drop, float("-inf"))
        return torch.logsumexp(masked, dim=1) - logits.gather(1, target[:, None]).squeeze(1)


@register_loss(
    "seql",
    "Equalization loss",
    hparams=[
        HParam(
            "gamma",
            0.9,
            "probability γ that a rare class is dropped from a negative's "
            "denominator (Tan et al. 2020, image classification: 0.9)",
            low=0.0,
            high=1.0,
        ),
        HParam(
            "threshold",
            0.005,
            "frequency threshold λ on the class prior π_k (5e-3 as in "
            "the CIFAR-100-LT setting of Zhang et al., Bag of Tricks for Long-Tailed "
            "Visual Recognition, AAAI 2021)",
            low=0.0,
            high=1.0,
        ),
    ],
    paper="Tan et al., Equalization Loss for Long-Tailed Object Recognition, CVPR 2020",
)
def build_seql(
    class_counts: Sequence[int] | Tensor, gamma: float = 0.9, threshold: float = 0.005, **drw: float
) -> SoftmaxEqualizationLoss:
    """Softmax equalization loss with drop probability ``gamma`` and threshold ``threshold``."""
    return SoftmaxEqualizationLoss(class_counts, gamma=gamma, threshold=threshold, **drw)
