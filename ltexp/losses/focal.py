"""Softmax focal loss (Lin et al., Focal Loss for Dense Object Detection, ICCV 2017).

``ℓ = −(1 − p_y)^γ log p_y`` with ``p = softmax(z)``. γ down-weights well-classified samples;
γ = 0 is cross-entropy. ``p_y`` stays in the graph (it is not detached), so the modulating factor
is differentiated too, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ltexp.losses.base import ClassAwareLoss
from ltexp.losses.registry import HParam, register_loss


class FocalLoss(ClassAwareLoss):
    """Softmax focal loss; see the module docstring."""

    def __init__(
        self, class_counts: Sequence[int] | Tensor, gamma: float = 2.0, **drw: float
    ) -> None:
        super().__init__(class_counts, **drw)
        self.gamma = float(gamma)

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        log_p = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
        if self.gamma == 0.0:
            return -log_p
        # 1 − p computed as −expm1(log p): exact for p near 1, where 1 − exp(log p) cancels.
        return -torch.pow(-torch.expm1(log_p), self.gamma) * log_p


@register_loss(
    "focal",
    "Focal loss",
    hparams=[
        HParam("gamma", 2.0, "focusing parameter γ (Lin et al. 2017: 2)", low=0.0, high=100.0)
    ],
    paper="Lin et al., Focal Loss for Dense Object Detection, ICCV 2017",
)
def build_focal(
    class_counts: Sequence[int] | Tensor, gamma: float = 2.0, **drw: float
) -> FocalLoss:
    """Softmax focal loss with focusing parameter ``gamma``."""
    return FocalLoss(class_counts, gamma=gamma, **drw)
