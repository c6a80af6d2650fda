"""Label-distribution-aware margin loss (Cao et al., Learning Imbalanced Datasets with
Label-Distribution-Aware Margin Loss, NeurIPS 2019).

``ℓ = CE(s·(z − Δ_y e_y), y)`` with ``Δ_j = C / n_j^{1/4}``, C chosen so that the largest margin
(the rarest class) is ``max_margin``. The margin is subtracted from the true class only.
``max_margin = 0`` and ``scale = 1`` give cross-entropy.

Classifier: the original pairs LDAM with a cosine classifier (``NormedLinear``: logits are cosines
in [−1, 1], which ``s = 30`` scales). The protocol ltexp reproduces replaces every backbone's
classifier by a plain linear layer for every loss, LDAM included, so that is ltexp's default;
``head=cosine`` gives the original pairing. With a linear head the logits are not bounded, and
``s`` multiplies them as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from ltexp.losses.base import ClassAwareLoss
from ltexp.losses.registry import HParam, register_loss


class LDAMLoss(ClassAwareLoss):
    """LDAM; see the module docstring."""

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        max_margin: float = 0.5,
        scale: float = 30.0,
        **drw: float,
    ) -> None:
        super().__init__(class_counts, **drw)
        margins = self.class_counts.double() ** -0.25
        self.register_buffer("margins", (margins * (max_margin / margins.max())).float())
        self.scale = float(scale)

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        shifted = logits.scatter_add(1, target[:, None], -self.margins[target][:, None])
        return F.cross_entropy(self.scale * shifted, target, reduction="none")


@register_loss(
    "ldam",
    "LDAM loss",
    hparams=[
        HParam(
            "max_margin",
            0.5,
            "margin of the rarest class (Cao et al. 2019: 0.5)",
            low=0.0,
            high=10.0,
        ),
        HParam(
            "scale",
            30.0,
            "logit scale s (Cao et al. 2019: 30)",
            low=0.0,
            low_open=True,
            high=1000.0,
        ),
    ],
    paper="Cao et al., Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss, "
    "NeurIPS 2019",
)
def build_ldam(
    class_counts: Sequence[int] | Tensor, max_margin: float = 0.5, scale: float = 30.0, **drw: float
) -> LDAMLoss:
    """LDAM loss with largest margin ``max_margin`` and logit scale ``scale``."""
    return LDAMLoss(class_counts, max_margin=max_margin, scale=scale, **drw)
