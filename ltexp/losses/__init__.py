"""Class-sensitive losses for long-tailed classification, behind one registry.

``build_loss(name, class_counts, **hparams)`` returns an ``nn.Module`` whose
``forward(logits[B, K], target[B])`` is the mean loss over the batch. ``LOSSES`` maps every name
to its :class:`LossSpec` (builder, display name, documented hyper-parameters). Adding a loss is one
module with a ``@register_loss`` builder, imported below.
"""

from ltexp.losses.base import ClassAwareLoss, class_balanced_weights, validate_class_counts
from ltexp.losses.registry import LOSSES, HParam, LossSpec, build_loss, list_losses, register_loss

# Registration happens on import; the order here is SPEC's table order.
from ltexp.losses import cross_entropy as _cross_entropy  # noqa: F401  isort: skip
from ltexp.losses import focal as _focal  # noqa: F401  isort: skip
from ltexp.losses import logit_adjusted as _logit_adjusted  # noqa: F401  isort: skip
from ltexp.losses import seql as _seql  # noqa: F401  isort: skip
from ltexp.losses import ldam as _ldam  # noqa: F401  isort: skip
from ltexp.losses.logit_adjusted import adjust_logits

__all__ = [
    "LOSSES",
    "ClassAwareLoss",
    "HParam",
    "LossSpec",
    "adjust_logits",
    "build_loss",
    "class_balanced_weights",
    "list_losses",
    "register_loss",
    "validate_class_counts",
]
