"""Logit adjustment by the class prior: Balanced Softmax, the logit-adjusted loss, post-hoc.

- Balanced Softmax (Ren et al., Balanced Meta-Softmax for Long-Tailed Visual Recognition,
  NeurIPS 2020): cross-entropy on ``z + log π``.
- Logit-adjusted loss (Menon et al., Long-Tail Learning via Logit Adjustment, ICLR 2021):
  cross-entropy on ``z + τ·log π``; τ = 1 is Balanced Softmax.
- Post-hoc logit adjustment (Menon et al. 2021): predict with ``z − τ·log π``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ltexp.losses.base import ClassAwareLoss, validate_class_counts
from ltexp.losses.registry import HParam, register_loss


class LogitAdjustedLoss(ClassAwareLoss):
    """Cross-entropy on ``z + τ·log π`` (π: the training set's class prior)."""

    def __init__(
        self, class_counts: Sequence[int] | Tensor, tau: float = 1.0, **drw: float
    ) -> None:
        super().__init__(class_counts, **drw)
        self.tau = float(tau)

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits + self.tau * self.log_prior, target, reduction="none")


@register_loss(
    "bs",
    "Balanced Softmax loss",
    paper="Ren et al., Balanced Meta-Softmax for Long-Tailed Visual Recognition, NeurIPS 2020",
)
def build_bs(class_counts: Sequence[int] | Tensor, **drw: float) -> LogitAdjustedLoss:
    """Balanced Softmax: the logit-adjusted loss with τ = 1."""
    return LogitAdjustedLoss(class_counts, tau=1.0, **drw)


@register_loss(
    "la",
    "Logit-adjusted loss",
    hparams=[
        HParam("tau", 1.0, "scale τ of the log prior (Menon et al. 2021: 1)", low=0.0, high=100.0)
    ],
    paper="Menon et al., Long-Tail Learning via Logit Adjustment, ICLR 2021",
)
def build_la(
    class_counts: Sequence[int] | Tensor, tau: float = 1.0, **drw: float
) -> LogitAdjustedLoss:
    """Logit-adjusted loss with scale ``tau``."""
    return LogitAdjustedLoss(class_counts, tau=tau, **drw)


def adjust_logits(logits: Tensor, class_counts: Sequence[int] | Tensor, tau: float) -> Tensor:
    """Post-hoc logit adjustment: ``logits − τ·log π`` (Menon et al. 2021)."""
    counts = validate_class_counts(class_counts)
    log_prior = torch.log(counts / counts.sum()).to(logits.device, torch.float32)
    return logits.float() - tau * log_prior
